"""The models a comparison reads: the representations runs saved, grouped into models and merged.

Runs of the same model config merge into one ``Model`` (a sweep that split the images or the layers over
jobs); their images are matched by id *and* content (the hash or thumbnail of the input each run saved with
its rows, ``results.representations``: two runs can give one id to two images). ``comparison`` compares
what ``load_models`` returns.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .layout import CONFIG, REPRESENTATIONS, RESULTS, run_dirs
from .representations import KINDS, available, has_representations, image_contents, load_representations

log = logging.getLogger(__name__)

MIN_SHARED = 10  # fewer shared images than this: no CKA, no probe
# Two thumbnails (16 x 16, uint8) show the same image when no value differs by more than this: the same
# synthetic image preprocessed at 64, 224, 448 and 518 px differs by at most 3, two different ones (48 pairs
# of another seed) by at least 37.
THUMB_TOLERANCE = 8
# Two rows of one image from runs of one model config are the same when their relative L2 difference is
# below this (float32 vs float16 precision differ by ~1e-3; other weights by far more).
ROW_TOLERANCE = 1e-2


@dataclass
class Model:
    """One model's saved representations, merged over the runs that hold them.

    Attributes:
        label: how tables and figures name it (the model config's name, made unique).
        runs: its run folders.
        ids: image ids, the arrays' row order.
        arrays: layer -> (n, D) float32.
        num_layers: the model's layer count (for relative depth), when a run recorded it.
        sources: per row, the run it came from.
        hashes: image id -> hash of the input the model saw (images of runs that saved one).
        thumbs: image id -> (16, 16, 3) uint8 thumbnail of that input (same).
        input_size: the input side in pixels, when its runs recorded it.
        unchecked: its runs saved without image hashes and checksums (older ones): matched by id only.
    """

    label: str
    runs: list[Path]
    ids: list[str] = field(default_factory=list)
    arrays: dict[int, np.ndarray] = field(default_factory=dict)
    num_layers: int | None = None
    sources: list[Path] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)
    thumbs: dict[str, np.ndarray] = field(default_factory=dict)
    input_size: int | None = None
    unchecked: list[Path] = field(default_factory=list)


def find_runs(folders: Sequence[Path | str]) -> list[Path]:
    """Run folders at or below each of ``folders`` that saved representations, in order, each once.

    Raises:
        FileNotFoundError: a folder that does not exist, or none holding saved representations.
    """
    runs: list[Path] = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
        # found by their representations folder: a run whose results.csv is gone still compares (not probes)
        found = sorted({d for d in run_dirs(folder, REPRESENTATIONS) if has_representations(d)})
        if not found:
            raise FileNotFoundError(f"{folder}: no run with saved representations below it (run with "
                                    "save_representations=true)")
        runs += [d for d in found if d.resolve() not in {r.resolve() for r in runs}]
    return runs


def _model_config(run: Path) -> dict:
    path = run / CONFIG
    if not path.exists():
        return {"name": run.name}
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    model = OmegaConf.to_container(cfg.model, resolve=False) if "model" in cfg else {}
    return model if isinstance(model, dict) else {"name": str(model)}


def _flat(cfg: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value, default=str)
    return out


def _difference(key: str, value: str) -> str:
    """How a label names one model option that tells two configs of one name apart."""
    if key == "pretrained":
        return "random init" if value == "false" else "pretrained"
    if key == "img_size":
        return f"{value} px"
    return f"{key}={value.strip(chr(34))}"


def group_runs(runs: Sequence[Path]) -> dict[str, list[Path]]:
    """Runs grouped by model config, labelled by the config's name; where two configs share a name, the
    options that differ are added (``· random init``, ``· 448 px``, ``· key=value``; at most 3), and the
    first run's folder name where that is not enough."""
    groups: dict[str, list[Path]] = {}
    configs: dict[str, dict] = {}
    for run in runs:
        cfg = _model_config(run)
        key = json.dumps(cfg, sort_keys=True, default=str)
        groups.setdefault(key, []).append(run)
        configs[key] = cfg
    names = {k: str(configs[k].get("name") or groups[k][0].name) for k in groups}
    flat = {k: _flat(configs[k]) for k in groups}
    labels = {}
    for key, name in names.items():
        same = [k for k in groups if names[k] == name]
        label = name
        if len(same) > 1:
            absent = object()  # an option one config sets and another lacks differs, even when set to null
            differ = sorted(o for o in set().union(*(flat[k] for k in same)) - {"name"}
                            if len({flat[k].get(o, absent) for k in same}) > 1)
            parts = [_difference(o, flat[key][o]) for o in differ if o in flat[key]][:3]
            label = " · ".join([name, *parts])
        labels[key] = label
    shared = {label for label in labels.values() if list(labels.values()).count(label) > 1}
    for key in groups:  # still shared (more than 3 options differ, or none recorded): each run's folder added
        if labels[key] in shared:
            labels[key] = f"{labels[key]} · {groups[key][0].name}"
    return {labels[k]: v for k, v in groups.items()}


def _num_layers(runs: Sequence[Path]) -> int | None:
    for run in runs:
        path = run / RESULTS
        if path.exists() and path.stat().st_size:
            try:
                first = pd.read_csv(path, nrows=1, usecols=["num_layers"])
            except (ValueError, pd.errors.ParserError):
                continue
            if len(first) and pd.notna(first["num_layers"].iloc[0]):
                return int(first["num_layers"].iloc[0])
    return None


def _check_available(run: Path) -> None:
    """Refuse a run whose representation arrays can be neither trusted nor rebuilt.

    Raises:
        ValueError: arrays without ``run_summary.json`` (an unfinished run, or a removed summary) and without
            the ``parts/`` chunks a reader rebuilds them from.
    """
    if has_representations(run) and not available(run):
        raise ValueError(f"{Path(run) / REPRESENTATIONS}: arrays without run_summary.json (the run did not finish, or "
                         "the file was removed) and without the parts/ chunks to rebuild them from; they cannot be "
                         "trusted: rerun into a new folder")


def _same_rows(first: dict[int, np.ndarray], second: dict[int, np.ndarray]) -> bool:
    """Whether two runs' rows of one image agree at every layer both saved (``ROW_TOLERANCE``)."""
    for layer in first.keys() & second.keys():
        a, b = first[layer].astype(np.float64), second[layer].astype(np.float64)
        if a.shape != b.shape or np.linalg.norm(a - b) > ROW_TOLERANCE * max(np.linalg.norm(a), np.linalg.norm(b)):
            return False
    return True


def _same_content(hash_a: str | None, hash_b: str | None, thumb_a: np.ndarray | None, thumb_b: np.ndarray | None,
                  same_size: bool) -> bool | None:
    """Whether two saved rows show the same image: by hash at one input size, by thumbnail across sizes;
    None where neither was saved (runs written before they were)."""
    if same_size and hash_a is not None and hash_b is not None:
        return hash_a == hash_b
    if thumb_a is not None and thumb_b is not None:
        return int(np.abs(thumb_a.astype(np.int16) - thumb_b.astype(np.int16)).max()) <= THUMB_TOLERANCE
    return None


def same_image(a: Model, b: Model, image: str) -> bool | None:
    """Whether ``a``'s and ``b``'s rows of the id ``image`` show the same image (None: cannot tell)."""
    return _same_content(a.hashes.get(image), b.hashes.get(image), a.thumbs.get(image), b.thumbs.get(image),
                         a.input_size is not None and a.input_size == b.input_size)


def load_model(label: str, runs: Sequence[Path], kind: str = "mean") -> Model:
    """The representations of one model's runs: ids in run order, layers that every one of those images has.

    An id held by two runs is one row when both hold the same image (hash, or the rows themselves for runs
    that saved no hash) with the same representation; otherwise the runs cannot be merged.

    Raises:
        ValueError: no run of this model saved ``kind``; images without a common layer; two runs holding
            different images, or different representations of one image, under one id (both named).
    """
    rows: dict[int, dict[str, np.ndarray]] = {}
    order: list[str] = []
    where: dict[str, Path] = {}
    hashes: dict[str, str] = {}
    thumbs: dict[str, np.ndarray] = {}
    sizes: set[int] = set()
    unchecked: list[Path] = []
    for run in runs:
        _check_available(run)
        if kind not in available(run):
            continue
        ids, arrays = load_representations(run, kind)
        run_hashes, run_thumbs, size = image_contents(run)
        if size is not None:
            sizes.add(size)
        if ids and not run_hashes:
            unchecked.append(run)
        other, changed = {}, {}  # earlier run -> ids holding another image / another representation here
        for i, image in enumerate(ids):
            if image not in where:
                continue
            earlier = {layer: rows[layer][image] for layer in rows if image in rows[layer]}
            same = _same_content(hashes.get(image), run_hashes.get(image), thumbs.get(image), run_thumbs.get(image),
                                 True)
            mine = {layer: array[i] for layer, array in arrays.items()}
            if same is False or (same is None and not _same_rows(earlier, mine)):
                other.setdefault(where[image], []).append(image)
            elif not _same_rows(earlier, mine):
                changed.setdefault(where[image], []).append(image)
        shared = sum(image in where for image in ids)
        for first, images in other.items():
            raise ValueError(f"model {label}: runs {first} and {run} hold different images under {len(images)} of "
                             f"their {shared} shared ids (e.g. {images[0]!r}; other data options: seed, "
                             "data.per_combination?); runs of one model config merge by image, so compare each "
                             "of them with the others on its own")
        for first, images in changed.items():
            raise ValueError(f"model {label}: runs {first} and {run} hold different representations of {len(images)} "
                             f"of the same images (e.g. {images[0]!r}; other weights, precision or version?); runs "
                             "of one model config merge by image, so compare each of them with the others on its own")
        for layer, array in arrays.items():
            per = rows.setdefault(layer, {})
            for i, image in enumerate(ids):
                per.setdefault(image, array[i])
        for image in ids:
            if image not in where:
                where[image] = run
                order.append(image)
                if image in run_hashes:
                    hashes[image] = run_hashes[image]
                if image in run_thumbs:
                    thumbs[image] = run_thumbs[image]
    if not rows:
        raise ValueError(f"model {label}: no {kind} representations in {', '.join(map(str, runs))} "
                         f"(a CNN saves mean only)")
    layers = sorted(layer for layer, per in rows.items() if all(image in per for image in order))
    if not layers:
        raise ValueError(f"model {label}: no layer holds every image of its runs; compare the runs separately")
    dropped = sorted(set(rows) - set(layers))
    if dropped:
        log.warning("model %s: layers %s left out (not saved for every image)", label, dropped)
    arrays = {layer: np.stack([rows[layer][image] for image in order]).astype(np.float32) for layer in layers}
    return Model(label, list(runs), order, arrays, _num_layers(runs), [where[image] for image in order], hashes,
                 thumbs, sizes.pop() if len(sizes) == 1 else None, unchecked)


def load_models(folders: Sequence[Path | str], kind: str = "mean") -> tuple[list[Model], list[str]]:
    """Every model below ``folders`` with ``kind`` representations, and warnings for those left out.

    Raises:
        FileNotFoundError: no run with representations.
        ValueError: an unknown kind, or no model with it.
    """
    if kind not in KINDS:
        raise ValueError(f"--kind {kind}: expected one of {', '.join(KINDS)}")
    models, warnings = [], []
    for label, runs in group_runs(find_runs(folders)).items():
        for run in runs:
            _check_available(run)
        if not any(kind in available(run) for run in runs):
            warnings.append(f"model {label} has no {kind} representations (a CNN saves mean only); left out")
            continue
        models.append(load_model(label, runs, kind))
    if not models:
        raise ValueError(f"--kind {kind}: no model below {', '.join(map(str, folders))} saved {kind} "
                         "representations (a CNN saves mean only)")
    return models, warnings + _content_warnings(models)


def _content_warnings(models: Sequence[Model], min_shared: int = MIN_SHARED) -> list[str]:
    """One line per pair of models whose shared ids hold different images (those are left out of the pair's
    comparison), one line naming the runs whose images could not be checked (saved without hashes).

    Raises:
        ValueError: a pair left with fewer than ``min_shared`` images once those are left out (both runs named).
    """
    warnings = []
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            rows_b = {image: j for j, image in enumerate(b.ids)}
            shared = [(k, rows_b[image]) for k, image in enumerate(a.ids) if image in rows_b]
            verdict = [(same_image(a, b, a.ids[k]), k, j) for k, j in shared]
            other = [(k, j) for same, k, j in verdict if same is False]
            if not other:
                continue
            k, j = other[0]
            what = (f"models {a.label} and {b.label} share {len(shared)} image ids, but {len(other)} of them are other "
                    f"images in {a.sources[k]} than in {b.sources[j]} (e.g. {a.ids[k]!r}; other data options: seed, "
                    "data.per_combination?)")
            if len(shared) - len(other) < min_shared:
                raise ValueError(f"{what}: {len(shared) - len(other)} images in common, a comparison needs at least "
                                 f"{min_shared}")
            warnings.append(f"{what}; compared on the {len(shared) - len(other)} images that match by id and content")
    if unchecked := [str(run) for m in models for run in m.unchecked]:
        warnings.append(f"content of the images not checked (matched by id only; images.txt not verified) for "
                        f"{len(unchecked)} run(s) saved without image hashes by an older layerscope: "
                        f"{', '.join(unchecked)}")
    return warnings
