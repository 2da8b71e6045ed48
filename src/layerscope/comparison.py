"""Comparing layers and models beyond masks, from what runs saved (no model, no forward pass).

Representations saved by runs (``save_representations=true``), grouped into models and matched by image
id and content (``results.saved_models``: ``load_models``, re-exported here), are compared:

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

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .metrics.probe import PERMUTATIONS
from .results.layout import RESULTS
from .results.saved_models import MIN_SHARED, Model, _model_config, load_model, load_models, same_image

log = logging.getLogger(__name__)

SIMILARITY_COLUMNS = ("model_a", "layer_a", "model_b", "layer_b", "kind", "measure", "value", "ci_low", "ci_high",
                      "null_mean", "null_q95", "p_value", "calibrated", "n_images", "kernel", "estimator",
                      "convention", "permutations", "boot")
MONOTONICITY_COLUMNS = ("model", "kind", "measure", "spearman", "n_pairs", "n_layers")
PROBE_COLUMNS = ("model", "layer", "kind", "label", "group", "k", "accuracy", "ci_low", "ci_high", "interval",
                 "chance", "null_q05", "null_q95", "p_value", "p_below", "permutations", "majority", "n_images",
                 "n_classes", "n_groups")


# the loaders are re-exported: callers read models and compare them from this one module
__all__ = ["Model", "load_model", "load_models", "same_image", "SIMILARITY_COLUMNS", "MONOTONICITY_COLUMNS",
           "PROBE_COLUMNS", "CCA_MEASURES", "representation_rows", "shared_rows", "similarity_table",
           "monotonicity_table", "image_labels", "check_label", "probe_table", "probe_warnings", "cca_warnings",
           "self_comparison"]


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
                       f"(at most {int(rows['n_images'].max())} images): their canonical correlations reach or "
                       "approach 1 by construction (and so does the null); compare on more images than the layers' widths")
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
