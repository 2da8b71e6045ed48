"""Saved maps: one ``.npz`` per image, enough to redraw figures or rescore without a model."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def save_maps(path: Path, image: np.ndarray, mask: np.ndarray | None, maps: Mapping[int, np.ndarray],
              names: Mapping[int, Sequence[str]], meta: Mapping[str, object], valid: np.ndarray | None = None,
              columns: Mapping[int, Mapping[str, np.ndarray]] | None = None) -> None:
    """Write one image's maps.

    Args:
        path: the ``.npz`` file.
        image: (S, S, 3) uint8, the model's input before normalisation.
        mask: (S, S) bool or None.
        maps: layer -> (K, h, w) float32, every map of that layer (all heads / reductions).
        names: layer -> K map names (``"0"``, ``"1"``, ... or ``"l2"``).
        meta: JSON-serialisable facts (model, method, image id, ...), the non-metric columns of its rows.
        valid: (S, S) bool, False on ignored pixels, or None.
        columns: per-map result columns that come from the model, not from the maps (layer -> column ->
            (K,) values, e.g. ``attention_distance``), so that rescoring keeps them.
    """
    arrays = {f"layer_{layer}": np.asarray(m, dtype=np.float32) for layer, m in maps.items()}
    for layer, values in (columns or {}).items():
        arrays.update({f"column_{name}_layer_{layer}": np.asarray(v, dtype=np.float32) for name, v in values.items()})
    arrays["image"] = image
    if mask is not None:
        arrays["mask"] = mask.astype(bool)
    if valid is not None:
        arrays["valid"] = valid.astype(bool)
    info = dict(meta, names={str(k): list(v) for k, v in names.items()})
    arrays["meta"] = np.frombuffer(json.dumps(info).encode(), dtype=np.uint8)
    tmp = path.with_suffix(".tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_npz(tmp, arrays)
        tmp.replace(path)
    except OSError as e:  # a full disk: no half file is left, and the message names the file
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An ``.npz`` that ``np.load`` reads like ``np.savez_compressed``'s, written several times faster.

    Float maps barely compress (about 10 %), so they are stored; the image and masks are deflated by ISA-L's
    fastest level where ``isal`` is installed (a dependency; 1.2 ms for a 448 px image against zlib's 4.5 ms at
    level 1, for a file about 15 % larger), else by zlib at level 1. The zip is written here, entry by entry
    (what ``zipfile`` writes, without its compressor, which is zlib's alone): a local header, the data, and the
    central directory at the end. A file past the plain zip format's 4 GiB is written by ``zipfile`` (ZIP64).
    """
    import io

    entries, offset = [], 0
    for name, value in arrays.items():
        value = np.ascontiguousarray(value)
        if value.dtype.hasobject:
            raise ValueError(f"write_npz: array {name!r} holds Python objects; expected numbers")
        # the .npy file ``np.save`` writes: its header, then the array's bytes, read in place (no copy)
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(value))
        parts = [head.getvalue(), value.reshape(-1).view(np.uint8).data]
        crc = zlib.crc32(parts[1], zlib.crc32(parts[0]))
        stored = value.dtype.kind == "f"
        packed = parts if stored else [_deflate(parts)]
        size, packed_size = sum(memoryview(p).nbytes for p in parts), sum(memoryview(p).nbytes for p in packed)
        entries.append(((name + ".npy").encode(), 0 if stored else 8, crc, packed, packed_size, size, offset))
        offset += _LOCAL.size + len(entries[-1][0]) + packed_size
    if offset + sum(_CENTRAL.size + len(e[0]) for e in entries) >= _ZIP32:
        return _write_npz_zip64(path, arrays)
    with open(path, "wb") as f:
        for fname, method, crc, packed, packed_size, size, _ in entries:
            f.write(_LOCAL.pack(0x04034B50, 20, 0, method, 0, _DOS_DATE, crc, packed_size, size, len(fname), 0))
            f.write(fname)
            for part in packed:
                f.write(part)
        start = f.tell()
        for fname, method, crc, _, packed_size, size, at in entries:
            f.write(_CENTRAL.pack(0x02014B50, 20, 20, 0, method, 0, _DOS_DATE, crc, packed_size, size, len(fname),
                                  0, 0, 0, 0, 0o600 << 16, at))
            f.write(fname)
        end = f.tell()
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), end - start, start, 0))


_LOCAL = struct.Struct("<IHHHHHIIIHH")  # a zip entry's local header (before its name)
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # its central directory record
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the zip format's first day: the same bytes for the same arrays
_ZIP32 = 2 ** 32 - 1


def _deflate(parts: Sequence[bytes | memoryview]) -> bytes:
    """The parts deflated as one stream (what a zip entry holds, raw): by ISA-L's fastest level where installed,
    else by zlib's level 1."""
    try:
        from isal import isal_zlib as codec
    except ImportError:  # isal has wheels for the usual platforms; elsewhere zlib, slower, the same format
        codec = zlib
    packer = codec.compressobj(1, codec.DEFLATED, -15)
    return b"".join([*(packer.compress(part) for part in parts), packer.flush()])


def _write_npz_zip64(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``write_npz`` through ``zipfile`` (ZIP64 past 4 GiB; zlib at level 1)."""
    import io
    import zipfile

    with zipfile.ZipFile(path, mode="w", allowZip64=True) as z:
        for name, value in arrays.items():
            value = np.asanyarray(value)
            data = io.BytesIO()
            np.lib.format.write_array(data, value, allow_pickle=False)
            kind = zipfile.ZIP_STORED if value.dtype.kind == "f" else zipfile.ZIP_DEFLATED
            z.writestr(name + ".npy", data.getbuffer(), compress_type=kind, compresslevel=1)


ADVICE = "delete it and rerun the run that wrote it to redo that image"


class _Invalid(ValueError):
    """A readable file that is not what ``save_maps`` writes (edited, or from elsewhere)."""


def load_maps(path: Path) -> dict:
    """Read and check a file written by ``save_maps``.

    Checked: an ``(S, S, 3)`` image; ``mask`` and ``valid`` bool and ``(S, S)`` like the image;
    at least one ``layer_<int>`` map, each ``(K, h, w)`` and floating; ``K`` names per layer and names
    for exactly the saved layers. A map may hold NaN or infinite values, as the model made it (a NaN
    weight): what scores it leaves its metrics empty (``scoring.finite_maps``).

    Returns:
        dict with ``image``, ``mask`` and ``valid`` (or None), ``maps`` (layer -> (K, h, w)), ``names``, ``meta``,
        ``columns`` (layer -> column -> (K,); empty when none were saved).

    Raises:
        ValueError: not a saved-maps file (truncated, edited, or another file); one line naming it and
            what was expected.
    """
    try:
        return _load(path)
    except _Invalid as e:
        raise ValueError(f"{path}: {e}; {ADVICE}") from None
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise ValueError(f"{path}: not a readable saved-maps file ({type(e).__name__}: {e}); {ADVICE}") from None
    except Exception as e:  # noqa: BLE001 - zipfile.BadZipFile, zlib.error: a damaged file all the same
        raise ValueError(f"{path}: damaged saved-maps file ({type(e).__name__}); {ADVICE}") from None


def _load(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        for key in ("meta", "image"):
            if key not in z.files:
                raise _Invalid(f"no {key!r} array (expected the arrays save_maps writes)")
        meta = json.loads(bytes(z["meta"]).decode())
        if not isinstance(meta, dict) or not isinstance(meta.get("names"), dict):
            raise _Invalid("meta holds no 'names' of the maps (expected a JSON object with names per layer)")
        image = z["image"]
        if image.ndim != 3 or image.shape[2] != 3:
            raise _Invalid(f"image of shape {image.shape}, expected (S, S, 3)")
        extra = {key: z[key] if key in z.files else None for key in ("mask", "valid")}
        for key, a in extra.items():
            if a is not None and (a.dtype != bool or a.shape != image.shape[:2]):
                raise _Invalid(f"{key} is {a.dtype} {a.shape}, expected bool {image.shape[:2]} like the image")
        maps = {}
        for key in (k for k in z.files if k.startswith("layer_")):
            try:
                layer = int(key[len("layer_"):])
            except ValueError:
                raise _Invalid(f"array {key!r}, expected layer_<int>") from None
            m = z[key]
            if m.ndim != 3 or not np.issubdtype(m.dtype, np.floating):
                raise _Invalid(f"{key} is {m.dtype} {m.shape}, expected float maps (K, h, w)")
            maps[layer] = m
        if not maps:
            raise _Invalid("no maps (expected layer_<int> arrays)")
        try:
            names = {int(k): [str(n) for n in v] for k, v in meta.pop("names").items()}
        except (TypeError, ValueError):
            raise _Invalid("names in meta, expected a list of map names per layer number") from None
        if set(names) != set(maps):
            raise _Invalid(f"maps of layers {sorted(maps)} but names for layers {sorted(names)}, expected the same "
                           "layers")
        for layer, m in maps.items():
            if len(names[layer]) != m.shape[0]:
                raise _Invalid(f"layer_{layer} holds {m.shape[0]} maps but {len(names[layer])} names, expected one "
                               "name per map")
        columns: dict[int, dict[str, np.ndarray]] = {}  # per-map columns saved beside the maps (K,) per layer
        for key in (k for k in z.files if k.startswith("column_")):
            name, _, layer = key[len("column_"):].rpartition("_layer_")
            try:
                layer_i = int(layer)
            except ValueError:
                raise _Invalid(f"array {key!r}, expected column_<name>_layer_<int>") from None
            if layer_i not in maps or z[key].shape != (maps[layer_i].shape[0],):
                raise _Invalid(f"{key} of shape {z[key].shape}, expected one value per map of a saved layer")
            columns.setdefault(layer_i, {})[name] = z[key]
        return {"image": image, **extra, "maps": dict(sorted(maps.items())), "names": dict(sorted(names.items())),
                "meta": meta, "columns": columns}


def check_same_layout(saved: dict, reference: dict, path: Path, reference_path: Path) -> None:
    """Refuse a file whose maps differ in layout from another file of the same run.

    Every image of a run is read at one input size and yields the same layers, maps and grids;
    a file that differs was edited (or comes from another run) and would bend pooled metrics.

    Args:
        saved: ``load_maps(path)``.
        reference: ``load_maps(reference_path)``, another image of the same run.

    Raises:
        ValueError: naming ``path`` and what was expected.
    """
    def differ(what: str, got, expected) -> ValueError:
        return ValueError(f"{path}: {what} {got}, expected {expected} as in {Path(reference_path).name} (every "
                          f"image of a run holds the same maps); {ADVICE}")

    if saved["image"].shape != reference["image"].shape:
        raise differ("image", saved["image"].shape, reference["image"].shape)
    if list(saved["maps"]) != list(reference["maps"]):
        raise differ("layers", list(saved["maps"]), list(reference["maps"]))
    for layer, m in saved["maps"].items():
        if m.shape != reference["maps"][layer].shape:
            raise differ(f"layer_{layer} of shape", m.shape, reference["maps"][layer].shape)
        if saved["names"][layer] != reference["names"][layer]:
            raise differ(f"layer {layer} names", saved["names"][layer], reference["names"][layer])
