"""Pooled representations per layer, saved by a run (``save_representations=true``) for ``layerscope-compare``.

Layout (names in ``results.layout``)::

    <run>/representations/<kind>_layer_<i>.npy   float32 (n_images, D), rows in the order of images.txt
    <run>/representations/images.txt             one image id per line
    <run>/representations/parts/part_<n>.npz     the per-batch chunks the run appends (ids + arrays)

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

numpy only (no torch): the comparison tools and the report page read these without a model.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .layout import (PART_GLOB, REPRESENTATION_IDS, REPRESENTATION_PARTS, REPRESENTATIONS, is_complete,
                     part_file, read_done, representation_file, representation_key)

log = logging.getLogger(__name__)

# what a run can save: pooled (mean, cls: a CNN has none), a layer's cells (patches, (n, h, w, D)), and the
# mean of its cells inside / outside the mask (defect, background; NaN rows where there is none): results.cells
KINDS = ("mean", "cls", "patches", "defect", "background")
_KEY = re.compile("^" + representation_key("(?P<kind>[a-z]+)", r"(?P<layer>\d+)") + "$")


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

    def task(self, ids: Sequence[str], reps: Sequence[Mapping[str, Mapping[int, object]]]
             ) -> tuple[Path, Callable[[], None]]:
        """A ``(file, write)`` task for ``results.writer.BackgroundWriter`` holding one batch's rows.

        Args:
            ids: the batch's image ids.
            reps: per image, ``rep_<kind>`` -> layer -> (D,) tensor or array (other keys are ignored).
        """
        arrays: dict[str, np.ndarray] = {"ids": np.array(list(ids), dtype=str)}
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
    for key, array in arrays.items():
        m = _KEY.match(key)
        _save_npy(representation_file(run_dir, m["kind"], int(m["layer"])), array)
    ids = folder / REPRESENTATION_IDS
    tmp = ids.with_name(f"{ids.name}.tmp")
    tmp.write_text("".join(f"{image}\n" for image in order))
    tmp.replace(ids)  # last: arrays and ids agree once this is there
    return len(order)


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
        ids = ids_file.read_text().splitlines()
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
            arrays[int(_KEY.match(path.stem)["layer"])] = array
    else:
        ids = list(read_done(run_dir))
        rows = _rows_from_parts(run_dir, ids)
        arrays = {int(_KEY.match(k)["layer"]): v for k, v in rows.items() if _KEY.match(k)["kind"] == kind}
    if not arrays and ids:
        kinds = ", ".join(available(run_dir)) or "none"
        raise ValueError(f"{folder}: no {kind} representations (saved: {kinds}; a CNN has no cls token; runs of "
                         "earlier versions saved no patches, defect or background)")
    return ids, dict(sorted(arrays.items()))
