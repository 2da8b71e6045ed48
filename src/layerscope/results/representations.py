"""Pooled representations per layer, saved by a run (``save_representations=true``) for ``layerscope-compare``.

Layout (names in ``results.layout``)::

    <run>/representations/<kind>_layer_<i>.npy   float32 (n_images, D), rows in the order of images.txt
    <run>/representations/images.txt             one image id per line
    <run>/representations/parts/part_<n>.npz     the per-batch chunks the run appends (ids + arrays + hashes)
    <run>/representations/checksums.json         each row's image hash, checksums of images.txt and the arrays
    <run>/representations/thumbnails.npy         uint8 (n_images, 16, 16, 3): each row's input, block-averaged

``kind`` is ``mean`` (mean over patch tokens of a ViT block's output; a CNN stage's global average
pool), ``cls`` (a ViT's CLS token), ``patches`` (the patch tokens / feature-map cells average-pooled to
at most ``representation_grid`` a side, float32 (n_images, h, w, D)), ``defect`` / ``background`` (the
mean of the layer's cells inside / outside the mask, NaN rows for images without one; ``results.cells``).

Why it survives a cut at any image: a batch's chunk is written
(temporary name, then renamed) by the run's background writer *before* the ``done.txt`` line of any
of its images, so every image listed as done has a row in some chunk; an image redone after a cut
appears in two chunks with the same values, and the later one counts. At the end of the run
``consolidate`` rebuilds the arrays from the chunks in ``done.txt`` order (the run's order, the
same for a resumed run as for a clean one), each file written atomically, ``images.txt`` last; the
chunks are kept, so a consolidation cut half-way is redone from them by the next run. A reader
trusts the arrays once ``run_summary.json`` exists and rebuilds from the chunks before that.

Which image a row is: besides its id, each row carries ``image_hash`` of the preprocessed input the
model saw (the map cache's key) and ``image_thumb``, that input block-averaged to 16 x 16, so that
``layerscope-compare`` matches images by id *and* content (two runs may give one id to two images:
another seed, another ``data.per_combination``): by hash between runs of one input size, by thumbnail
between sizes (a ViT at 448 px, a CNN at 224 px: the hashes differ, the thumbnails agree). The arrays
are checked when read: float values, all finite, and, where ``checksums.json`` exists (runs since it
was added), ``images.txt`` and every array as the run wrote them (an edited, reordered or truncated
``images.txt`` would silently pair rows with the wrong images).

numpy only (no torch): the comparison tools and the report page read these without a model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .layout import (PART_GLOB, REPRESENTATION_CHECKSUMS, REPRESENTATION_IDS, REPRESENTATION_PARTS,
                     REPRESENTATION_THUMBS, REPRESENTATIONS, is_complete, part_file, read_done, representation_file,
                     representation_key)

log = logging.getLogger(__name__)

# what a run can save: pooled (mean, cls: a CNN has none), a layer's cells (patches, (n, h, w, D)), and the
# mean of its cells inside / outside the mask (defect, background; NaN rows where there is none): results.cells
KINDS = ("mean", "cls", "patches", "defect", "background")
UNDEFINED_ROW_KINDS = ("defect", "background")  # a whole NaN row: an image without such cells
_KEY = re.compile("^" + representation_key("(?P<kind>[a-z]+)", r"(?P<layer>\d+)") + "$")
HASHES, THUMBS, SIZE = "image_hash", "image_thumb", "input_size"  # in a chunk: per row hash and thumbnail; input side
THUMB = 16  # thumbnail side: coarse enough that resizing to another input size changes it by ~1/255


def image_hash(x) -> str:
    """The content hash of one preprocessed input, as the map cache keys it (``results.cache.image_key``).

    Args:
        x: (3, S, S) floats in [0, 1] (a CPU tensor or an array), the input before the model's normalisation.

    Returns:
        32 hex digits of the SHA-256 of its (S, S, 3) uint8 pixels and their shape.
    """
    if hasattr(x, "detach"):  # a tensor, wherever it lives (no torch import here)
        x = x.detach().float().cpu().numpy()
    u8 = (np.asarray(x, dtype=np.float32).transpose(1, 2, 0) * 255).round().astype(np.uint8)
    h = hashlib.sha256(np.ascontiguousarray(u8).tobytes())
    h.update(str(u8.shape).encode())
    return h.hexdigest()[:32]


def image_thumb(x) -> np.ndarray:
    """One preprocessed input block-averaged to ``THUMB`` x ``THUMB`` (blocks of ``S / THUMB`` pixels, rounded).

    Args:
        x: (3, S, S) floats in [0, 1] (a CPU tensor or an array), S >= ``THUMB``.

    Returns:
        (THUMB, THUMB, 3) uint8.
    """
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    edges = (np.arange(THUMB) * x.shape[-1]) // THUMB
    sizes = np.diff(np.append(edges, x.shape[-1]))
    blocks = np.add.reduceat(np.add.reduceat(x, edges, axis=1), edges, axis=2) / np.outer(sizes, sizes)
    return (blocks.transpose(1, 2, 0) * 255).round().clip(0, 255).astype(np.uint8)


def _checksum(array: np.ndarray) -> str:
    """SHA-256 of an array's values, dtype and shape (what ``np.load`` gives back)."""
    h = hashlib.sha256(np.ascontiguousarray(array).tobytes())
    h.update(f"{array.dtype.str}{array.shape}".encode())
    return h.hexdigest()


def _parts_dir(run_dir: Path) -> Path:
    return Path(run_dir) / REPRESENTATIONS / REPRESENTATION_PARTS


def _part_files(run_dir: Path) -> list[Path]:
    """Finished chunks in the order they were written (temporary files of a cut write left out)."""
    folder = _parts_dir(run_dir)
    files = [p for p in folder.glob(PART_GLOB) if ".tmp" not in p.name] if folder.is_dir() else []
    return sorted(files, key=lambda p: int(p.stem.split("_")[1]))


class PartWriter:
    """Writes one chunk per batch into ``<run>/representations/parts/``, numbered after any chunk there.

    Args:
        run_dir: the run folder.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        files = _part_files(self.run_dir)
        self.next = int(files[-1].stem.split("_")[1]) + 1 if files else 0

    def task(self, ids: Sequence[str], reps: Sequence[Mapping[str, Mapping[int, object]]],
             images: Sequence[object] | None = None) -> tuple[Path, Callable[[], None]]:
        """A ``(file, write)`` task for ``results.writer.BackgroundWriter`` holding one batch's rows.

        Args:
            ids: the batch's image ids.
            reps: per image, ``rep_<kind>`` -> layer -> (D,) tensor or array (other keys are ignored).
            images: per image, the (3, S, S) input the model saw, in [0, 1]: its ``image_hash`` is saved
                with the row (hashed here, not in the writer: the input's memory may be reused).
        """
        arrays: dict[str, np.ndarray] = {"ids": np.array(list(ids), dtype=str)}
        if images is not None:
            arrays[HASHES] = np.array([image_hash(x) for x in images], dtype=str)
            size = int(np.shape(images[0])[-1]) if len(images) else 0
            if size >= THUMB:  # a smaller input (no model takes one) has no thumbnail: matched by hash alone
                arrays[THUMBS] = np.stack([image_thumb(x) for x in images])
            arrays[SIZE] = np.array(size)
        names = sorted(name for name in reps[0] if name.startswith("rep_")) if reps else []
        for name in names:
            for layer in sorted(reps[0][name]):
                arrays[representation_key(name[len("rep_"):], layer)] = np.stack(
                    [np.asarray(r[name][layer], dtype=np.float32) for r in reps])
        path = part_file(self.run_dir, self.next)
        self.next += 1
        return path, lambda: _save_npz(path, arrays)


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    tmp = path.with_name(f"{path.stem}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f"{path.stem}.tmp.npy")
    try:
        np.save(tmp, array)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None


def _rows_from_parts(run_dir: Path, order: Sequence[str]) -> dict[str, np.ndarray]:
    """``kind_layer_i`` -> (len(order), D) float32, each image's latest chunk row, rows in ``order``.

    Raises:
        ValueError: an image of ``order`` has no row in any chunk (the chunks were deleted or damaged).
    """
    latest: dict[str, dict[str, np.ndarray]] = {}
    for path in _part_files(run_dir):
        try:
            with np.load(path, allow_pickle=False) as z:
                ids = [str(i) for i in z["ids"]]
                keys = [k for k in z.files if _KEY.match(k)]
                block = {k: z[k] for k in keys}
        except Exception as e:  # noqa: BLE001 - truncated, bad CRC, not a zip: the images it held are checked below
            log.warning("%s is unreadable (%s: %s); left out", path, type(e).__name__, e)
            continue
        if bad := [k for k, v in block.items() if v.dtype.kind != "f"]:
            raise ValueError(f"{path}: {bad[0]} holds {block[bad[0]].dtype} values; expected floats (float32 as a run "
                             "writes them)")
        for j, image in enumerate(ids):
            latest[image] = {k: v[j] for k, v in block.items()}
    if lost := [image for image in order if image not in latest]:
        raise ValueError(f"{_parts_dir(run_dir)}: no saved representation of {len(lost)} finished images "
                         f"(e.g. {lost[0]!r}); the chunks were removed or damaged: rerun into a new folder")
    keys = sorted({k for image in order for k in latest[image]}, key=_sort_key)
    return {k: np.stack([latest[image][k] for image in order]).astype(np.float32) for k in keys} if order else {}


def _sort_key(key: str) -> tuple[str, int]:
    m = _KEY.match(key)
    return m["kind"], int(m["layer"])


def consolidate(run_dir: Path, order: Sequence[str] | None = None) -> int:
    """Write ``<kind>_layer_<i>.npy`` and ``images.txt`` from the chunks; returns the number of images.

    Args:
        run_dir: the run folder.
        order: image ids, the arrays' rows; default the run's ``done.txt`` order.
    """
    run_dir = Path(run_dir)
    order = list(read_done(run_dir)) if order is None else list(order)
    arrays = _rows_from_parts(run_dir, order)
    folder = run_dir / REPRESENTATIONS
    folder.mkdir(parents=True, exist_ok=True)
    sums = {}
    for key, array in arrays.items():
        m = _KEY.match(key)
        path = representation_file(run_dir, m["kind"], int(m["layer"]))
        _save_npy(path, array)
        sums[path.name] = _checksum(array)
    text = "".join(f"{image}\n" for image in order)
    hashes, thumbs, size = _part_hashes(run_dir)
    if order and all(image in thumbs for image in order):
        thumb_array = np.stack([thumbs[image] for image in order])
        _save_npy(folder / REPRESENTATION_THUMBS, thumb_array)
        sums[REPRESENTATION_THUMBS] = _checksum(thumb_array)
    checks = {"images": len(order), "images_txt_sha256": hashlib.sha256(text.encode()).hexdigest(),
              "input_size": size, "image_hash": [hashes.get(image) for image in order], "arrays": sums}
    _save_text(folder / REPRESENTATION_CHECKSUMS, json.dumps(checks, indent=1) + "\n")
    _save_text(folder / REPRESENTATION_IDS, text)  # last: arrays, checksums and ids agree once this is there
    return len(order)


def _save_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None


def _part_hashes(run_dir: Path) -> tuple[dict[str, str], dict[str, np.ndarray], int | None]:
    """image id -> its hash and its thumbnail (its latest chunk's), and the input size, from the chunks that
    hold them (chunks written before they were saved, or unreadable ones, add nothing)."""
    hashes: dict[str, str] = {}
    thumbs: dict[str, np.ndarray] = {}
    size = None
    for path in _part_files(run_dir):
        try:
            with np.load(path, allow_pickle=False) as z:
                if HASHES not in z.files:
                    continue
                ids, values, size = [str(i) for i in z["ids"]], [str(h) for h in z[HASHES]], int(z[SIZE])
                small = z[THUMBS] if THUMBS in z.files else None
        except Exception:  # noqa: BLE001 - an unreadable chunk is reported by _rows_from_parts
            continue
        hashes.update(zip(ids, values))
        if small is not None:
            thumbs.update(zip(ids, small))
    return hashes, thumbs, size


def _read_checksums(run_dir: Path) -> dict | None:
    """``checksums.json`` of a finished run, or None (a run written before it existed).

    Raises:
        ValueError: a file that does not read as the run's checksums (named).
    """
    path = Path(run_dir) / REPRESENTATIONS / REPRESENTATION_CHECKSUMS
    if not path.exists():
        return None
    try:
        checks = json.loads(path.read_text())
        if not isinstance(checks, dict) or not isinstance(checks.get("arrays"), dict) or \
                not isinstance(checks.get("image_hash"), list):
            raise ValueError("not the expected fields")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not readable as the run's checksums ({e}); restore it or rerun") from None
    return checks


def image_contents(run_dir: Path | str) -> tuple[dict[str, str], dict[str, np.ndarray], int | None]:
    """What each saved row's image was: image id -> ``image_hash`` of its preprocessed input, image id ->
    its (16, 16, 3) uint8 thumbnail, and the input side in pixels (hashes of two sizes never match,
    whatever the images; thumbnails do).

    Returns:
        ({}, {}, None) for a run written before they were saved (its images can be matched by id only).

    Raises:
        ValueError: an unreadable ``checksums.json`` or ``thumbnails.npy``, or one that is not what the run
            wrote (named).
    """
    run_dir = Path(run_dir)
    folder = run_dir / REPRESENTATIONS
    if not (is_complete(run_dir) and (folder / REPRESENTATION_IDS).exists()):
        return _part_hashes(run_dir)
    checks = _read_checksums(run_dir)
    if checks is None:
        return {}, {}, None
    ids = (folder / REPRESENTATION_IDS).read_text().splitlines()
    hashes = {image: h for image, h in zip(ids, checks["image_hash"]) if isinstance(h, str)}
    size = checks.get("input_size")
    thumbs: dict[str, np.ndarray] = {}
    path = folder / REPRESENTATION_THUMBS
    if REPRESENTATION_THUMBS in checks["arrays"]:
        try:
            small = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"{path}: not readable ({type(e).__name__}: {e}); restore it or rerun") from None
        if _checksum(small) != checks["arrays"][REPRESENTATION_THUMBS] or len(small) != len(ids):
            raise ValueError(f"{path}: not the array the run wrote (its checksum in {REPRESENTATION_CHECKSUMS} "
                             "differs); restore it or rerun")
        thumbs = dict(zip(ids, small))
    return hashes, thumbs, int(size) if isinstance(size, int) else None


def _check_values(path: Path, array: np.ndarray, ids: Sequence[str], undefined_rows: bool = False) -> None:
    """Refuse, naming ``path``, an array of non-float values or with NaN/inf (one NaN would silently empty
    every CKA of its layer and change the probe). With ``undefined_rows`` (``defect``/``background``), a row
    that is NaN as a whole is allowed: the image has no such cells (no mask, or no defect pixel)."""
    if array.dtype.kind != "f":
        raise ValueError(f"{path}: {array.dtype} values; expected floats (float32, as a run writes them)")
    finite = np.isfinite(array)
    if undefined_rows:
        rows = array.reshape(len(array), -1)
        finite = finite | np.isnan(rows).all(1).reshape((-1,) + (1,) * (array.ndim - 1))
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=tuple(range(1, array.ndim))))[0])
        image = f", image {ids[row]!r}" if row < len(ids) else ""
        raise ValueError(f"{path}: {int((~finite).sum())} NaN/inf values (first in row {row}{image}); expected "
                         "finite representations (a model with non-finite weights or outputs?)")


def available(run_dir: Path) -> dict[str, list[int]]:
    """Representation kinds a run saved -> their layers (from the arrays, or the chunks of an unfinished run)."""
    run_dir = Path(run_dir)
    found: dict[str, set[int]] = {}
    folder = run_dir / REPRESENTATIONS
    if is_complete(run_dir) and (folder / REPRESENTATION_IDS).exists():
        keys = [p.stem for p in folder.glob(f"{representation_key('*', '*')}.npy") if ".tmp" not in p.name]
    else:
        files = _part_files(run_dir)
        keys = []
        if files:
            with np.load(files[0], allow_pickle=False) as z:
                keys = list(z.files)
    for key in keys:
        if m := _KEY.match(key):
            found.setdefault(m["kind"], set()).add(int(m["layer"]))
    return {kind: sorted(layers) for kind, layers in sorted(found.items())}


def has_representations(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds saved representations (finished arrays or chunks)."""
    folder = Path(run_dir) / REPRESENTATIONS
    return (folder / REPRESENTATION_IDS).exists() or bool(_part_files(run_dir))


def load_representations(run_dir: Path | str, kind: str = "mean") -> tuple[list[str], dict[int, np.ndarray]]:
    """Each image's pooled representation per layer, as a run saved them (``save_representations=true``).

    A finished run's arrays are read as they are; an unfinished run's are assembled from its chunks,
    for the images ``done.txt`` lists.

    Args:
        run_dir: a run folder.
        kind: one of ``KINDS``.

    Returns:
        (ids, arrays): n image ids, and layer -> (n, D) float32 ((n, h, w, D) for ``patches``) with rows
        in the order of ``ids``.

    Raises:
        FileNotFoundError: the run saved no representations.
        ValueError: an unknown or absent kind, or arrays whose rows disagree with ``images.txt``;
            the message names the file.
    """
    run_dir = Path(run_dir)
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {', '.join(KINDS)}")
    folder = run_dir / REPRESENTATIONS
    if not has_representations(run_dir):
        raise FileNotFoundError(f"{folder}: no saved representations (run with save_representations=true)")
    ids_file = folder / REPRESENTATION_IDS
    if is_complete(run_dir) and ids_file.exists():
        text = ids_file.read_bytes()
        ids = text.decode(errors="replace").splitlines()
        first: dict[str, int] = {}
        for line, image in enumerate(ids, 1):
            if image in first:
                raise ValueError(f"{ids_file}: image {image!r} on lines {first[image]} and {line}; each line names one "
                                 "row (an edited file?): restore it or rerun")
            first[image] = line
        checks = _read_checksums(run_dir)
        if checks is not None and checks.get("images_txt_sha256") != hashlib.sha256(text).hexdigest():
            raise ValueError(f"{ids_file}: not the file the run wrote (its checksum in {REPRESENTATION_CHECKSUMS} "
                             "differs): its lines would name the wrong rows; restore it or rerun")
        arrays = {}
        for path in sorted(folder.glob(f"{representation_key(kind, '*')}.npy")):
            if ".tmp" in path.name or not _KEY.match(path.stem):
                continue
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise ValueError(f"{path}: not a readable representation array ({type(e).__name__}: {e})") from None
            if array.ndim != (4 if kind == "patches" else 2) or array.shape[0] != len(ids):
                shape = f"({len(ids)}, h, w, D)" if kind == "patches" else f"({len(ids)}, D)"
                raise ValueError(f"{path}: expected {shape} rows for the ids of {ids_file}, got {array.shape}")
            _check_values(path, array, ids, undefined_rows=kind in UNDEFINED_ROW_KINDS)
            want = (checks or {}).get("arrays", {}).get(path.name)
            if want is not None and want != _checksum(array):
                raise ValueError(f"{path}: not the array the run wrote (its checksum in {REPRESENTATION_CHECKSUMS} "
                                 "differs); restore it or rerun")
            arrays[int(_KEY.match(path.stem)["layer"])] = array
        for name in (checks or {}).get("arrays", {}):  # a layer's file removed: not silently one layer fewer
            m = _KEY.match(Path(name).stem)
            if m and m["kind"] == kind and int(m["layer"]) not in arrays:
                raise ValueError(f"{folder / name}: missing, though the run wrote it (listed in "
                                 f"{REPRESENTATION_CHECKSUMS}); restore it or rerun")
    else:
        ids = list(read_done(run_dir))
        rows = _rows_from_parts(run_dir, ids)
        arrays = {int(_KEY.match(k)["layer"]): v for k, v in rows.items() if _KEY.match(k)["kind"] == kind}
        for layer, array in arrays.items():
            _check_values(_parts_dir(run_dir) / f"{PART_GLOB} ({representation_key(kind, layer)})", array, ids,
                          undefined_rows=kind in UNDEFINED_ROW_KINDS)
    if not arrays and ids:
        kinds = ", ".join(available(run_dir)) or "none"
        raise ValueError(f"{folder}: no {kind} representations (saved: {kinds}; a CNN has no cls token; runs of "
                         "earlier versions saved no patches, defect or background)")
    return ids, dict(sorted(arrays.items()))
