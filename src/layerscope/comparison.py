"""Comparing layers and models beyond masks, from what runs saved (no model, no forward pass).

Representations saved by runs (``save_representations=true``) are grouped into models (runs of the same
model config merge: a sweep that split the images or the layers over jobs), matched by image id *and*
content (the hash or thumbnail of the input each run saved with its rows, ``results.representations``:
two runs can give one id to two images), and compared:

- ``similarity_table``: similarity measures (CKA by default; ``metrics.measures``) between every layer of
  every pair of models (a model with itself included), on the images the pair shares, each with a
  bootstrap interval and a permutation null (``similarity.csv``); ``monotonicity_table``: within each
  model, how similarity falls with layer distance (``monotonicity.csv``);
- ``probe_table``: a leave-one-out (or leave-one-group-out) k-NN probe per (model, layer) of a label of
  the images, any column of ``results.csv`` that holds one value per image, with its binomial interval
  and its label-permutation null (``probe.csv``; ``probe_warnings``: accuracies below their null);
- ``representation_rows``: the rows a kind compares (``patches``: image x cell on one common grid;
  ``defect``/``background``: the images that have one).

The library behind ``layerscope-compare`` and a run's W&B logging.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .metrics.probe import PERMUTATIONS
from .results.layout import CONFIG, REPRESENTATIONS, RESULTS, run_dirs
from .results.representations import (KINDS, available, has_representations, image_contents,
                                      load_representations)

log = logging.getLogger(__name__)

MIN_SHARED = 10  # fewer shared images than this: no CKA, no probe
# Two thumbnails (16 x 16, uint8) show the same image when no value differs by more than this: the same
# synthetic image preprocessed at 64, 224, 448 and 518 px differs by at most 3, two different ones (48 pairs
# of another seed) by at least 37.
THUMB_TOLERANCE = 8
# Two rows of one image from runs of one model config are the same when their relative L2 difference is
# below this (float32 vs float16 precision differ by ~1e-3; other weights by far more).
ROW_TOLERANCE = 1e-2
SIMILARITY_COLUMNS = ("model_a", "layer_a", "model_b", "layer_b", "kind", "measure", "value", "ci_low", "ci_high",
                      "null_mean", "null_q95", "p_value", "calibrated", "n_images", "kernel", "estimator",
                      "convention", "permutations", "boot")
MONOTONICITY_COLUMNS = ("model", "kind", "measure", "spearman", "n_pairs", "n_layers")
PROBE_COLUMNS = ("model", "layer", "kind", "label", "group", "k", "accuracy", "ci_low", "ci_high", "interval",
                 "chance", "null_q05", "null_q95", "p_value", "p_below", "permutations", "majority", "n_images",
                 "n_classes", "n_groups")


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


def representation_rows(models: Sequence[Model], kind: str, grid: int | None = None, max_cells: int | None = None,
                        seed: int = 0) -> tuple[list[Model], list[str]]:
    """The rows a comparison of ``kind`` compares, and warnings.

    - ``patches``: every layer of every model average-pooled to one common grid (``grid`` x ``grid``, or the
      coarsest saved layer's), rows = image x cell named ``<image>#<row>,<col>`` (``results.cells``), so a
      ViT block and a CNN stage compare cell by cell; with ``max_cells``, a seeded subset of those rows
      (the same cells for every model).
    - ``defect`` / ``background``: the images whose row exists at every layer (no mask, or no defect pixel
      for ``defect``: NaN rows) in every model.
    - other kinds: as loaded.

    Raises:
        ValueError: a ``grid`` finer than a saved layer's cells; no image left.
    """
    from .results.cells import adaptive_pool, cell_ids, common_grid, to_rows

    warnings: list[str] = []
    if kind == "patches":
        g = common_grid([a.shape[1:3] for m in models for a in m.arrays.values()], grid)
        out = [Model(m.label, m.runs, cell_ids(m.ids, g), {layer: to_rows(adaptive_pool(a, g))
                                                              for layer, a in m.arrays.items()}, m.num_layers)
               for m in models]
        every = sorted({row for m in out for row in m.ids})
        if max_cells is not None and max_cells < len(every):
            keep = {every[i] for i in np.random.default_rng(seed).permutation(len(every))[:max_cells]}
            for m in out:
                idx = np.array([i for i, row in enumerate(m.ids) if row in keep], dtype=np.int64)
                m.ids = [m.ids[i] for i in idx]
                m.arrays = {layer: a[idx] for layer, a in m.arrays.items()}
            warnings.append(f"patches: {max_cells} of {len(every)} cells kept (--max-cells, seed {seed})")
        log.info("patches: every layer pooled to %dx%d cells", *g)
        return out, warnings
    if kind in ("defect", "background"):
        out = []
        for m in models:
            ok = np.ones(len(m.ids), dtype=bool)
            for a in m.arrays.values():
                ok &= np.isfinite(a).all(1)
            if not ok.any():
                raise ValueError(f"--kind {kind}: model {m.label} has no image with a {kind} representation "
                                 f"({'no mask or no defect pixel' if kind == 'defect' else 'no mask'} in every image)")
            if not ok.all():
                what = "a mask with a defect" if kind == "defect" else "a mask"
                warnings.append(f"model {m.label}: {int((~ok).sum())} of {len(ok)} images have no {kind} "
                                f"representation (without {what}); left out")
            idx = np.flatnonzero(ok)
            out.append(Model(m.label, m.runs, [m.ids[i] for i in idx], {layer: a[idx] for layer, a in m.arrays.items()},
                             m.num_layers))
        return out, warnings
    return list(models), warnings


def shared_rows(a: Model, b: Model) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the images ``a`` and ``b`` share, matched by id and content (``same_image``: an id
    whose rows show other images is left out; one that cannot be checked counts), in ``a``'s order."""
    where = {image: i for i, image in enumerate(b.ids)}
    common = [(i, where[image]) for i, image in enumerate(a.ids)
              if image in where and (a is b or same_image(a, b, image) is not False)]
    ia, ib = (np.array([c[k] for c in common], dtype=np.int64) for k in (0, 1))
    return ia, ib


def _estimator(estimator: str, n: int, layers: int) -> str:
    from .metrics.similarity import choose_estimator

    return estimator if estimator == "biased" else choose_estimator(n, layers, estimator)


def similarity_table(models: Sequence[Model], kind: str = "mean", kernel: str = "linear", estimator: str = "auto",
                     batch_size: int = 256, seed: int = 0, min_shared: int = MIN_SHARED,
                     measures: Sequence[str] | str = ("cka",), n_perm: int = 200, n_boot: int = 1000,
                     rbf_sigma: float = 1.0, rbf_median: str = "distinct", knn_k: int = 10) -> pd.DataFrame:
    """Every measure between every layer of every pair of models (both orders, each model with itself, the
    diagonal), in long form: one row per (pair of layers, measure) with its paired-bootstrap 95% interval
    and its permutation null (``metrics.measures``).

    Each layer is prepared once per set of shared images (a Gram matrix, ranks, a neighbour graph) and
    reused by every pair; the draws and permutations are the same for every pair of layers.

    Args:
        measures: names of ``metrics.measures.MEASURES`` or ``all``.
        n_perm, n_boot: permutations of the second model's images (null) and bootstrap draws (interval).
        kernel, estimator, rbf_sigma, rbf_median, batch_size: CKA's conventions; knn_k: mutual k-NN's and CKNNA's.

    Raises:
        ValueError: a pair of models sharing fewer than ``min_shared`` images; an unknown measure or option.
    """
    from .metrics.measures import Options, resolve
    from .metrics.measures.engine import check, compare_states, prepare

    chosen = resolve(measures)
    rows = []
    cache: dict[tuple, tuple[list[int], list]] = {}

    def states(model: Model, idx: np.ndarray, measure, opts) -> tuple[list[int], list]:
        # a model's layers on the same images (the usual case: every model saw every image) are prepared once
        key = (id(model), measure.name, opts, idx.tobytes())
        if key not in cache:
            cache[key] = prepare({layer: x[idx] for layer, x in model.arrays.items()}, measure, opts)
        return cache[key]

    for i, a in enumerate(models):
        for b in models[i:]:
            ia, ib = shared_rows(a, b)
            if len(ia) < min_shared:
                which = f"model {a.label} has" if a is b else f"models {a.label} and {b.label} share"
                raise ValueError(f"{which} {len(ia)} images (matched by id); a similarity needs at least {min_shared}")
            layers = len(a.arrays) + (0 if a is b else len(b.arrays))
            for measure in chosen:
                is_cka = measure.name == "cka"
                used = _estimator(estimator, len(ia), layers) if is_cka else ""
                opts = Options(kernel, used or "full", rbf_sigma, rbf_median, knn_k, batch_size=batch_size, seed=seed)
                check(len(ia), layers, measure, opts)
                la, sa = states(a, ia, measure, opts)
                lb, sb = (la, sa) if a is b else states(b, ib, measure, opts)
                values, columns = compare_states(sa, sb, len(ia), measure, opts, n_perm, n_boot, seed)
                convention = measure.convention(opts)
                tail = (len(ia), kernel if is_cka else "", used, convention, n_perm, n_boot)
                for r, layer_a in enumerate(la):
                    for c, layer_b in enumerate(lb):
                        extra = columns[r][c]
                        rows.append((a.label, layer_a, b.label, layer_b, kind, measure.name, float(values[r, c]),
                                     *extra.values(), *tail))
                if a is not b:  # the other order: a symmetric measure's numbers are the same
                    if measure.symmetric:
                        back_values, back = values.T, [list(col) for col in zip(*columns)]
                    else:
                        back_values, back = compare_states(sb, sa, len(ia), measure, opts, n_perm, n_boot, seed)
                    for r, layer_b in enumerate(lb):
                        for c, layer_a in enumerate(la):
                            rows.append((b.label, layer_b, a.label, layer_a, kind, measure.name,
                                         float(back_values[r, c]), *back[r][c].values(), *tail))
    table = pd.DataFrame(rows, columns=list(SIMILARITY_COLUMNS))
    order = {m.label: i for i, m in enumerate(models)}
    names = {m.name: i for i, m in enumerate(chosen)}
    table = table.sort_values(["measure", "model_a", "model_b", "layer_a", "layer_b"],
                              key=lambda c: c.map(order) if c.name in ("model_a", "model_b") else
                              c.map(names) if c.name == "measure" else c, kind="stable")
    return table.reset_index(drop=True)


def monotonicity_table(similarity: pd.DataFrame) -> pd.DataFrame:
    """ReSi's layer monotonicity per (model, kind, measure): the Spearman correlation between the layer
    distance |i - j| and the similarity of two layers of the same model (negative: similarity falls with
    distance, as it should), from ``similarity_table``'s rows."""
    from .metrics.measures import monotonicity

    rows = []
    within = similarity[similarity["model_a"] == similarity["model_b"]]
    for (model, kind, measure), part in within.groupby(["model_a", "kind", "measure"], sort=False):
        grid = part.pivot_table(index="layer_a", columns="layer_b", values="value", aggfunc="first")
        layers = sorted(set(grid.index) & set(grid.columns))
        rho, pairs = monotonicity(layers, grid.loc[layers, layers].to_numpy(float))
        rows.append((model, kind, measure, rho, pairs, len(layers)))
    return pd.DataFrame(rows, columns=list(MONOTONICITY_COLUMNS))


def image_labels(runs: Sequence[Path], column: str, option: str = "--probe") -> dict[str, str]:
    """image id -> its value of ``column`` in the runs' ``results.csv`` (images without a value left out).

    Args:
        option: the option that named the column (for the errors).

    Raises:
        ValueError: no such column, or a column that varies within an image (not a label of images).
    """
    from .results.table import read_results

    labels: dict[str, str] = {}
    for run in runs:
        path = run / RESULTS
        if not path.exists():
            continue
        df = read_results(path)
        if column not in df.columns:
            raise ValueError(f"{option} {column}: no such column in {path} (an image label: category, group, ...)")
        values = df[["image", column]].dropna()
        values = values[values[column].astype(str) != ""]
        several = values.groupby("image")[column].nunique()
        if (several > 1).any():
            image = several[several > 1].index[0]
            raise ValueError(f"{option} {column}: not a label of images: image {image!r} has {int(several.max())} "
                             f"values in {path}")
        for image, value in values.drop_duplicates("image").itertuples(index=False):
            labels.setdefault(str(image), str(value))
    return labels


def check_label(models: Sequence[Model], column: str) -> None:
    """Refuse, before any probe, a ``--probe`` column that cannot be a label of these models' images.

    Raises:
        ValueError: ``image`` (the id itself); a run without ``results.csv`` (where labels come from); a
            column with nearly one class per image (more than half of the labelled images alone in their
            class, e.g. a continuous value: a leave-one-out probe can never predict such an image).
    """
    if column == "image":
        raise ValueError("--probe image: the image id is not a label (each image would be its own class); expected "
                         "category or another results.csv column that groups images")
    for m in models:
        if missing := [run for run in m.runs if not (run / RESULTS).exists()]:
            raise ValueError(f"--probe {column}: {missing[0]} has no {RESULTS}, where the labels of its images come "
                             "from (compare without --probe, or rerun it)")
        labels = image_labels(m.runs, column)
        values = pd.Series([labels[image] for image in m.ids if image in labels], dtype=object)
        counts = values.value_counts()
        alone = int((counts == 1).sum())
        if len(values) and alone > len(values) / 2:
            raise ValueError(f"--probe {column}: {len(counts)} classes in {len(values)} images of model {m.label} "
                             f"({alone} images alone in their class, which a leave-one-out probe cannot predict); "
                             "expected a label that groups images (a continuous column?)")


def probe_table(models: Sequence[Model], column: str, kind: str = "mean", k: int | None = None,
                group: str | None = None, permutations: int = PERMUTATIONS, interval: str = "wilson",
                seed: int = 0, strict: bool = True, min_images: int = MIN_SHARED) -> pd.DataFrame:
    """k-NN accuracy of the image label ``column`` per (model, layer), leave-one-out or leave-one-group-out,
    with a binomial 95% interval and a label-permutation null under the same scheme (``metrics.probe``).

    Args:
        group: an image label column (e.g. ``source``): its groups are left out whole, so a factor it
            holds cannot outvote ``column``. Rows of the ``patches`` kind (cells) are always grouped by
            their image as well (a cell's own image would give its label away): ``group`` None means
            leave-one-image-out there.
        permutations: label permutations of the null (0: none).
        interval: ``wilson`` or ``clopper-pearson``.
        strict: raise on a model that cannot be probed (fewer than ``min_images`` labelled images or one
            class); otherwise leave it out with a warning.

    Raises:
        ValueError: see ``image_labels``; with ``strict``, a model that cannot be probed.
    """
    from .metrics.probe import probe
    from .results.cells import image_of

    rows = []
    for m in models:
        labels = image_labels(m.runs, column)
        groups = image_labels(m.runs, group, "--group") if group else None
        images = [image_of(row) for row in m.ids]
        idx = np.array([i for i, image in enumerate(images) if image in labels
                        and (groups is None or image in groups)], dtype=np.int64)
        y = np.array([labels[images[i]] for i in idx])
        g = None
        cells = any(images[i] != m.ids[i] for i in idx)
        units = np.array([images[i] for i in idx]) if cells else None  # the null permutes whole images' labels
        if groups is not None or cells:
            # cells of one image always share its group: with --group, the image's group value
            g = np.array([groups[images[i]] if groups is not None else images[i] for i in idx])
        classes = len(set(y.tolist()))
        scheme = f"outside its {group}" if group else "other images"
        if len(idx) < min_images or classes < 2 or (g is not None and len(set(g.tolist())) < 2):
            message = (f"--probe {column}: model {m.label} has {len(idx)} labelled images in {classes} classes"
                       + (f" and {len(set(g.tolist()))} groups" if g is not None else "")
                       + f"; a probe needs at least {min_images} images, 2 classes"
                       + (" and 2 groups" if g is not None else ""))
            if strict:
                raise ValueError(message)
            log.warning("%s; left out", message)
            continue
        if k is not None:
            limit = len(idx) - 1 if g is None else len(g) - max(np.unique(g, return_counts=True)[1])
            if not 1 <= k <= limit:
                raise ValueError(f"--k {k}: expected 1..{limit} (the labelled images {scheme} of {m.label})")
        for layer in sorted(m.arrays):
            result = probe(m.arrays[layer][idx], y, k, groups=g, permutations=permutations, interval=interval,
                           seed=seed, units=units)
            rows.append({"model": m.label, "layer": layer, "kind": kind, "label": column,
                         "group": group or ("image" if g is not None else ""), **result})
    return pd.DataFrame(rows, columns=list(PROBE_COLUMNS))


def probe_warnings(table: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """One line per (model, label, kind, group) whose accuracy is significantly below its permutation null at
    some layer: the representation clusters by a factor other than the label, and leave-one-out lets that
    factor outvote it."""
    if table.empty or "p_below" not in table.columns:
        return []
    out = []
    below = table[table["p_below"] < alpha]
    for (model, label, kind, group), part in below.groupby(["model", "label", "kind", "group"], sort=False):
        layers = ", ".join(str(int(v)) for v in part["layer"])
        again = ("--group with another column" if group and group != "image"
                 else "--group COLUMN (the factor, a label of images: e.g. --group source)")
        out.append(f"probe of {label} on {model} ({kind}), layers {layers}: accuracy below its permutation null "
                   f"(p_below < {alpha:g}); the representation clusters by another factor; try {again}")
    return out


CCA_MEASURES = ("svcca", "pwcca")  # canonical correlations: 1 by construction with fewer images than dimensions


def cca_warnings(models: Sequence[Model], table: pd.DataFrame) -> list[str]:
    """One line per CCA measure whose rows compare layers wider than their images: with n images, two
    layers of n or more (kept) dimensions have canonical directions that match exactly, so their canonical
    correlations are 1 whatever the representations (and so is the null; SVCCA's kept directions come close
    to it), and the row says little."""
    if table.empty:
        return []
    width = {(m.label, layer): int(a.shape[-1]) for m in models for layer, a in m.arrays.items()}
    out = []
    for measure in CCA_MEASURES:
        rows = table[table["measure"] == measure]
        if rows.empty:
            continue
        wide = [min(width.get((r.model_a, r.layer_a), 0), width.get((r.model_b, r.layer_b), 0)) >= r.n_images
                for r in rows.itertuples()]
        if any(wide):
            out.append(f"{measure}: {sum(wide)} of {len(rows)} layer pairs have no more images than dimensions "
                       f"(at most {int(rows['n_images'].max())} images): their canonical correlations reach or approach 1 "
                       "by construction (and so does the null); compare on more images than the layers' widths")
    return out


def self_comparison(run_dir: Path, kind: str = "mean", probe: str = "category", seed: int = 0
                    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """One run's own layer x layer CKA and probe of ``probe`` (what a run logs to W&B); what cannot be
    computed (under ``MIN_SHARED`` images, a single class) is left empty with a warning."""
    run_dir = Path(run_dir)
    label = str(_model_config(run_dir).get("name") or run_dir.name)
    model = load_model(label, [run_dir], kind)
    try:
        similarity = similarity_table([model], kind, seed=seed)
    except ValueError as e:
        log.warning("CKA not logged: %s", e)
        similarity = pd.DataFrame(columns=list(SIMILARITY_COLUMNS))
    try:
        table = probe_table([model], probe, kind, seed=seed, strict=False)
    except ValueError as e:
        log.warning("probe not logged: %s", e)
        table = None
    return similarity, table
