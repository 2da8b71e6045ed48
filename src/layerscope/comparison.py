"""Comparing layers and models beyond masks, from what runs saved (no model, no forward pass).

Representations saved by runs (``save_representations=true``) are grouped into models (runs of the same
model config merge: a sweep that split the images or the layers over jobs), matched by image id, and
compared:

- ``similarity_table``: similarity measures (CKA by default; ``metrics.measures``) between every layer of
  every pair of models (a model with itself included), on the images the pair shares, each with a
  bootstrap interval and a permutation null (``similarity.csv``); ``monotonicity_table``: within each
  model, how similarity falls with layer distance (``monotonicity.csv``);
- ``probe_table``: a leave-one-out k-NN probe per (model, layer) of a label of the images, any column
  of ``results.csv`` that holds one value per image (``probe.csv``).

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

from .results.layout import CONFIG, RESULTS, run_dirs
from .results.representations import KINDS, available, has_representations, load_representations

log = logging.getLogger(__name__)

MIN_SHARED = 10  # fewer shared images than this: no CKA, no probe
SIMILARITY_COLUMNS = ("model_a", "layer_a", "model_b", "layer_b", "kind", "measure", "value", "ci_low", "ci_high",
                      "null_mean", "null_q95", "p_value", "calibrated", "n_images", "kernel", "estimator",
                      "convention", "permutations", "boot")
MONOTONICITY_COLUMNS = ("model", "kind", "measure", "spearman", "n_pairs", "n_layers")
PROBE_COLUMNS = ("model", "layer", "kind", "label", "k", "accuracy", "ci_low", "ci_high", "chance", "n_images",
                 "n_classes")


@dataclass
class Model:
    """One model's saved representations, merged over the runs that hold them.

    Attributes:
        label: how tables and figures name it (the model config's name, made unique).
        runs: its run folders.
        ids: image ids, the arrays' row order.
        arrays: layer -> (n, D) float32.
        num_layers: the model's layer count (for relative depth), when a run recorded it.
    """

    label: str
    runs: list[Path]
    ids: list[str] = field(default_factory=list)
    arrays: dict[int, np.ndarray] = field(default_factory=dict)
    num_layers: int | None = None


def find_runs(folders: Sequence[Path | str]) -> list[Path]:
    """Run folders at or below each of ``folders`` that saved representations, in order, each once.

    Raises:
        FileNotFoundError: a folder that does not exist, or none holding saved representations.
    """
    runs: list[Path] = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
        found = [d for d in run_dirs(folder) if has_representations(d)]
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


def group_runs(runs: Sequence[Path]) -> dict[str, list[Path]]:
    """Runs grouped by model config, labelled by the config's name (``· <size> px`` or ``· <run>`` added
    where two configs share a name)."""
    groups: dict[str, list[Path]] = {}
    configs: dict[str, dict] = {}
    for run in runs:
        cfg = _model_config(run)
        key = json.dumps(cfg, sort_keys=True, default=str)
        groups.setdefault(key, []).append(run)
        configs[key] = cfg
    names = [str(configs[k].get("name") or groups[k][0].name) for k in groups]
    labels = {}
    for key, name in zip(groups, names):
        label = name
        if names.count(name) > 1:
            label = f"{name} · {configs[key].get('img_size')} px"
            if sum(1 for k, n in zip(groups, names) if n == name and configs[k].get("img_size") ==
                   configs[key].get("img_size")) > 1:
                label = f"{name} · {groups[key][0].name}"
        labels[key] = label
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


def load_model(label: str, runs: Sequence[Path], kind: str = "mean") -> Model:
    """The representations of one model's runs: ids in run order (an id seen twice keeps its first row),
    layers that every one of those images has.

    Raises:
        ValueError: no run of this model saved ``kind``; images without a common layer.
    """
    rows: dict[int, dict[str, np.ndarray]] = {}
    order: list[str] = []
    seen: set[str] = set()
    for run in runs:
        if kind not in available(run):
            continue
        ids, arrays = load_representations(run, kind)
        for layer, array in arrays.items():
            per = rows.setdefault(layer, {})
            for i, image in enumerate(ids):
                per.setdefault(image, array[i])
        order += [image for image in ids if image not in seen]
        seen.update(ids)
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
    return Model(label, list(runs), order, arrays, _num_layers(runs))


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
        if not any(kind in available(run) for run in runs):
            warnings.append(f"model {label} has no {kind} representations (a CNN saves mean only); left out")
            continue
        models.append(load_model(label, runs, kind))
    if not models:
        raise ValueError(f"--kind {kind}: no model below {', '.join(map(str, folders))} saved {kind} "
                         "representations (a CNN saves mean only)")
    return models, warnings


def shared_rows(a: Model, b: Model) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the images ``a`` and ``b`` share, matched by id, in ``a``'s order."""
    where = {image: i for i, image in enumerate(b.ids)}
    common = [(i, where[image]) for i, image in enumerate(a.ids) if image in where]
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


def image_labels(runs: Sequence[Path], column: str) -> dict[str, str]:
    """image id -> its value of ``column`` in the runs' ``results.csv`` (images without a value left out).

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
            raise ValueError(f"--probe {column}: no such column in {path} (an image label: category, group, ...)")
        values = df[["image", column]].dropna()
        values = values[values[column].astype(str) != ""]
        several = values.groupby("image")[column].nunique()
        if (several > 1).any():
            image = several[several > 1].index[0]
            raise ValueError(f"--probe {column}: not a label of images: image {image!r} has {int(several.max())} "
                             f"values in {path}")
        for image, value in values.drop_duplicates("image").itertuples(index=False):
            labels.setdefault(str(image), str(value))
    return labels


def probe_table(models: Sequence[Model], column: str, kind: str = "mean", k: int | None = None, n_boot: int = 1000,
                seed: int = 0, strict: bool = True, min_images: int = MIN_SHARED) -> pd.DataFrame:
    """Leave-one-out k-NN accuracy of the image label ``column`` per (model, layer), with chance and a 95% CI.

    Args:
        strict: raise on a model that cannot be probed (fewer than ``min_images`` labelled images or one
            class); otherwise leave it out with a warning.

    Raises:
        ValueError: see ``image_labels``; with ``strict``, a model that cannot be probed.
    """
    from .metrics.probe import probe

    rows = []
    for m in models:
        labels = image_labels(m.runs, column)
        idx = np.array([i for i, image in enumerate(m.ids) if image in labels], dtype=np.int64)
        y = np.array([labels[m.ids[i]] for i in idx])
        classes = len(set(y.tolist()))
        if len(idx) < min_images or classes < 2:
            message = (f"--probe {column}: model {m.label} has {len(idx)} labelled images in {classes} classes; a "
                       f"probe needs at least {min_images} images and 2 classes")
            if strict:
                raise ValueError(message)
            log.warning("%s; left out", message)
            continue
        if k is not None and not 1 <= k < len(idx):
            raise ValueError(f"--k {k}: expected 1..{len(idx) - 1} (the other labelled images of {m.label})")
        for layer in sorted(m.arrays):
            result = probe(m.arrays[layer][idx], y, k, n_boot=n_boot, seed=seed)
            rows.append({"model": m.label, "layer": layer, "kind": kind, "label": column, **result})
    return pd.DataFrame(rows, columns=list(PROBE_COLUMNS))


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
