"""The dataset-level protocol: ``dataset_metrics.csv``.

Per image (``results.csv``) asks: does this map outline the defect in this image? Each image is
ranked on its own, so a map whose scale changes from image to image can look perfect. Dataset
level (``dataset_metrics.csv``, as MVTec AD, anomalib and PatchCore report) asks what an
inspection line runs: one threshold for every image. Pixel AUROC pools every pixel of every
test image, good images included; AUPRO averages PRO over every region of every image with FPR
over every normal pixel; F1-max is the best pixel F1 over one shared threshold.

A per-defect-type row pools that type's images with the defect-free (``good``) ones; the
``all`` row pools every image.

A study writes the table from its streamed accumulators (``analysis.pool_stream``, fed batch by
batch: ``stream_rows``); ``layerscope-report`` from the saved maps, pooled (``dataset_metrics``: a
weighted pass over every cell, which its bootstrap CIs repeat). The two agree to about 1e-15
(sums of the same terms grouped otherwise: BLAS products on one thread, no zero-count scores, the
PRO weights of tied cells summed in another order); the csv's 9 digits are the same. The held-out
choice is ``heldout``.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from .metrics.pooled import PooledMetrics, SortedCells, pooled_metrics
from .metrics.pooled_cells import row_metrics, sort_candidate
from .runtime import map_threads
from .results import catalog, layout
from .analysis.pool import SCORES, GridCells, Pool, build_pool
from .analysis.pool_stream import PooledStream

log = logging.getLogger(__name__)

CANDIDATE = list(catalog.CANDIDATE)
# dataset_metrics.csv's columns: the pooled metrics (and the F1-max threshold), the image AUROCs, the CIs
COLUMNS = ["job", *CANDIDATE, "category", "n_images", "n_defect_images", *catalog.POOLED, "f1_threshold",
           *catalog.IMAGE_SCORES, *(f"{m}_ci_{side}" for m in catalog.DATASET_CI for side in ("low", "high")),
           "upsample", "notes"]
CHOICE_METRICS = catalog.POOLED
dataset_metric = catalog.dataset_metric


def _image_auroc(scores: np.ndarray, defective: np.ndarray) -> float:
    ok = ~np.isnan(scores)
    pos, neg = defective[ok], ~defective[ok]
    if not pos.any() or not neg.any():
        return float("nan")
    return pooled_metrics(scores[ok], pos.astype(float), neg.astype(float), np.zeros(ok.sum()), 0).pixel_auroc


def _categories(images: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    """(name, bool image selection): each defect type with the good images, then ``all`` (a category of the
    data called ``all`` is named apart from it: ``catalog.data_category``). Images without a category (a folder
    of images) are no defect type of their own where they and the good ones are every image: that row would
    be ``all`` again, under an empty name."""
    good = (images["category"] == "good").to_numpy()
    out = []
    for category in sorted(set(images["category"]) - {"good"}):
        chosen = (images["category"] == category).to_numpy() | good
        if category == "" and chosen.all():
            continue
        out.append((catalog.data_category(category), chosen))
    out.append((catalog.AGGREGATE, np.ones(len(images), bool)))
    return out


def _notes(images: pd.DataFrame | dict[str, np.ndarray], sel: np.ndarray) -> str:
    """Which pooled metrics of the selected images are undefined, and why (empty when all are defined).

    Args:
        images: ``Pool.images``, or its columns as arrays (what threads read).
    """
    pos, neg = np.asarray(images["defect_pixels"])[sel].sum(), np.asarray(images["normal_pixels"])[sel].sum()
    defective = np.asarray(images["defective"])[sel]
    notes = []
    if pos == 0:
        notes.append("pixel_auroc, aupro, pixel_ap, pixel_f1_max undefined: no defect pixels")
    elif neg == 0:
        notes.append("pixel_auroc, aupro undefined: no normal pixels")
    if defective.all() or not defective.any():
        notes.append(f"image_auroc undefined: no {'defect-free' if defective.all() else 'defective'} images")
    return "; ".join(notes)


def undefined_reasons(table: pd.DataFrame, metric: str) -> dict[str, str]:
    """Categories of a ``dataset_metrics`` table where ``metric`` is undefined for every candidate, and why.

    Args:
        table: ``dataset_metrics`` rows (with ``notes``).
        metric: a dataset-level metric column.

    Returns:
        category -> reason, e.g. ``"no defect pixels"``.
    """
    reasons = {}
    for category, part in table.groupby("category", sort=False):
        if part[metric].notna().any():
            continue
        clauses = [c for note in part["notes"].fillna("") for c in str(note).split("; ")
                   if metric in c.split(" undefined: ")[0].split(", ")]
        reasons[category] = clauses[0].split(" undefined: ")[1] if clauses else "undefined for every map"
    return reasons


def _covered(cells: GridCells, images: int) -> np.ndarray:
    """(images,) bool: the images that have cells at this grid (those with a mask)."""
    covered = np.zeros(images, bool)
    covered[np.unique(cells.image)] = True
    return covered


class _Candidate:
    """One candidate's cells, sorted once; every metric is a weighted pass over them (``metrics.pooled_cells``,
    as the streamed rows)."""

    def __init__(self, pool: Pool, c: int, regions: np.ndarray | None = None, cells: GridCells | None = None):
        self.cells = pool.cells(c) if cells is None else cells
        self.scores = pool.scores(c)
        self.regions = pool.images["regions"].to_numpy(float) if regions is None else regions
        self.limit = pool.fpr_limit
        self.covered = _covered(self.cells, len(pool.images))
        self.image_scores = pool.image_scores[c]
        self.sorted = sort_candidate(self.scores, np.stack([self.cells.pos, self.cells.neg], 1), self.cells.pro,
                                     self.cells.image, np.flatnonzero(self.covered))

    def metrics(self, image_weights: np.ndarray) -> PooledMetrics:
        w = image_weights * self.covered
        return row_metrics(self.sorted, w, float((w * self.regions).sum()), self.limit)

    @functools.cached_property
    def _by_threshold(self) -> SortedCells:
        return SortedCells(self.scores)

    def at_threshold(self, t: float, image_weights: np.ndarray) -> dict:
        w = image_weights * self.covered
        return self._by_threshold.at_threshold(t, self.cells.pos, self.cells.neg, weights=w[self.cells.image])


def _bootstrap_weights(groups: Sequence[np.ndarray], n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) image multiplicities; each group (e.g. defective, good) resampled with replacement on its own,
    so every resample keeps both kinds of image."""
    weights = np.zeros((n_boot, n))
    for idx in groups:
        if len(idx):
            counts = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=n_boot)
            weights[:, idx] += counts
    return weights


def _ci(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x == x], float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))


# Cells a candidate needs before it is worth a thread: below, its NumPy calls are short and two threads trade
# the GIL more than they overlap (measured on 2 cores: 84 DINOv2 candidates of 65k cells 1.8x slower on two
# threads, even at 262k cells; EfficientNet's first layer at 1.6M cells 1.3x faster)
THREADED_CELLS = 2 ** 19


def _spread(fn: Callable[[Any], Any], items: Sequence[Any], cells: Sequence[int], threads: int) -> list[Any]:
    """``[fn(item) for item in items]``: the items of ``THREADED_CELLS`` cells or more on ``threads``, the
    others here, one after another."""
    big = [i for i, n in enumerate(cells) if n >= THREADED_CELLS]
    out = dict(zip(big, map_threads(fn, [items[i] for i in big], threads)))
    return [out[i] if i in out else fn(item) for i, item in enumerate(items)]


def nonfinite_note(images: int) -> str:
    """The note of a candidate whose map held NaN or infinite values in ``images`` images."""
    return f"map has NaN/inf values in {images} image{'s' if images != 1 else ''}: every metric undefined"


def stream_rows(stream: PooledStream, categories: list[tuple[str, np.ndarray]] | None = None,
                numbers: Sequence[int] | None = None, threads: int = 1) -> list[dict]:
    """The rows of ``dataset_metrics`` (without CIs) from one job's accumulators.

    Args:
        stream: the job's ``PooledStream``.
        categories: ``_categories`` of the pooled images (a sweep's jobs share them); None: the stream's own.
        numbers: each candidate's number in the pool (the ``_c`` column); None: the stream's order.
        threads: candidates sorted at once (NumPy's sorts, gathers and sums release the GIL); memory holds one
            candidate's sorted cells per thread. The rows do not depend on it.

    Returns:
        Per candidate, per category: a dict of ``COLUMNS`` (less the CIs) and ``_c``.
    """
    images = stream.images()
    covered = np.ones(len(images), bool) if stream.covered is None else stream.covered
    categories = _categories(images) if categories is None else categories
    regions = images["regions"].to_numpy(float)
    columns = {key: images[key].to_numpy() for key in ("defect_pixels", "normal_pixels", "defective")}

    def candidate_rows(c: int) -> list[dict]:
        cand = stream.candidates[c]
        image_scores, bad = stream.image_scores(c), stream.nonfinite.get(c, 0)
        layer, k = stream.where[c]
        store = stream.layers[layer]
        # cells of one size: each row sorts its scores alone; else the cells sorted once, every row selecting
        uniform = store.uniform(k)
        cells = store.sorted(k) if uniform is None else None
        rows = []
        for category, chosen in categories:
            sel = chosen & covered
            w = sel.astype(float) * covered  # the images' weights of the pass over every cell
            n_regions = float((w * regions).sum())
            m = uniform.metrics(sel, n_regions, stream.fpr_limit) if uniform is not None else \
                row_metrics(cells, sel, n_regions, stream.fpr_limit)
            rows.append(_row(cand, category, sel, m, image_scores, columns, bad,
                             numbers[c] if numbers is not None else c))
        return rows

    for store in stream.layers.values():
        store.join()  # here, before the threads read the layers
    # NumPy's BLAS products on one thread: its threads and these would only wait on each other
    with threadpool_limits(1):
        per_candidate = map_threads(candidate_rows, range(len(stream.candidates)), threads)
    return [row for rows in per_candidate for row in rows]


def _row(cand: dict, category: str, sel: np.ndarray, m: PooledMetrics, image_scores: np.ndarray,
         columns: dict[str, np.ndarray], bad: int, number: int) -> dict:
    """One row of ``dataset_metrics``: a candidate's pooled metrics ``m`` over the images ``sel`` of a category.

    Args:
        image_scores: (n_images, len(SCORES)) the candidate's image scores.
        columns: ``defect_pixels``, ``normal_pixels``, ``defective`` of every image.
        bad: images in which its map held NaN/inf values (then every metric is NaN, with the note).
        number: its candidate number (``_c``).
    """
    defective = columns["defective"]
    metrics = asdict(m)
    scores = {name: _image_auroc(image_scores[sel, SCORES.index(score)], defective[sel])
              for name, score in catalog.IMAGE_SCORES.items()}
    notes = _notes(columns, sel)
    if bad:  # its cells were read as zeros: no number of it would mean anything
        metrics, scores = {k: float("nan") for k in metrics}, {k: float("nan") for k in scores}
        notes = nonfinite_note(bad)
    return {"job": cand["job"], **{k: cand[k] for k in CANDIDATE}, "category": category, "n_images": int(sel.sum()),
            "n_defect_images": int((sel & defective).sum()), **metrics, **scores, "upsample": cand["upsample"],
            "notes": notes, "_c": number}


def dataset_metrics(pool: Pool, n_boot: int = 200, seed: int = 0, ci_top: int | None = 5,
                    threads: int = 1) -> pd.DataFrame:
    """One row per (candidate, category) with the pooled metrics (``COLUMNS``).

    Args:
        pool: the pooled saved maps (``build_pool``).
        n_boot: bootstrap resamples (over images, defective and good apart) for the CIs of
            pooled pixel AUROC and AUPRO of the ``all`` row; 0 for none.
        seed: bootstrap seed.
        ci_top: which ``all`` rows get CIs: the ``ci_top`` best candidates by each of the two
            metrics plus, per (model, method), every layer of its best map (the line the figures
            draw); None for every candidate. Each CI costs ``n_boot`` pooled passes.
        threads: large candidates (``THREADED_CELLS``) evaluated at once (NumPy's sorts and sums release the
            GIL); memory holds one candidate's sorted cells per thread. The rows do not depend on it.
    """
    images = pool.images
    defective = images["defective"].to_numpy()
    regions = images["regions"].to_numpy(float)
    columns = {key: images[key].to_numpy() for key in ("defect_pixels", "normal_pixels", "defective")}
    categories = _categories(images)

    def candidate_rows(c: int) -> list[dict]:
        data = _Candidate(pool, c, regions, grid_cells[c])  # one candidate's sorted cells per thread at a time
        rows = []
        for category, chosen in categories:
            sel = chosen & data.covered
            rows.append(_row(candidates[c], category, sel, data.metrics(sel.astype(float)), data.image_scores,
                             columns, pool.nonfinite.get(c, 0), c))
        return rows

    candidates = {c: dict(cand) for c, cand in pool.candidates.iterrows()}  # pandas here, NumPy in the threads
    grid_cells = {c: pool.cells(c) for c in candidates}
    order = list(candidates)
    parts = _spread(candidate_rows, order, [len(grid_cells[c].image) for c in order], threads)
    table = pd.DataFrame([row for part in parts for row in part])
    if n_boot:
        pooled = table[table["category"] == catalog.AGGREGATE]
        chosen_c = set(pooled["_c"])
        if ci_top is not None:
            chosen_c = set()
            for metric in catalog.DATASET_CI:
                defined = pooled.dropna(subset=[metric])  # an undefined metric has no best map and no CI
                chosen_c |= set(defined.nlargest(ci_top, metric)["_c"])
                for _, part in defined.groupby(["job", "model", "method"]):
                    head = part.groupby("head")[metric].mean().idxmax()
                    chosen_c |= set(part.loc[part["head"] == head, "_c"])
        rng = np.random.default_rng(seed)
        chosen_rows = [(i, int(c)) for i, c in pooled.loc[pooled["_c"].isin(chosen_c), "_c"].items()]

        def intervals(job: tuple[int, np.ndarray]) -> dict[str, tuple[float, float]]:
            c, draws = job
            data = _Candidate(pool, c, regions, grid_cells[c])
            boots = [data.metrics(w) for w in draws]
            return {metric: _ci([getattr(b, metric) for b in boots]) for metric in catalog.DATASET_CI}

        step = max(1, threads)  # the resamples are drawn in this order whatever the threads: the same CIs
        for start in range(0, len(chosen_rows), step):
            jobs = []
            for _, c in chosen_rows[start:start + step]:
                covered = _covered(grid_cells[c], len(images))
                groups = [np.flatnonzero(covered & defective), np.flatnonzero(covered & ~defective)]
                jobs.append((c, _bootstrap_weights(groups, len(images), n_boot, rng)))
            cells = [len(grid_cells[c].image) for c, _ in jobs]
            for (i, _), cis in zip(chosen_rows[start:start + step], _spread(intervals, jobs, cells, threads)):
                for metric, ci in cis.items():
                    table.loc[i, [f"{metric}_ci_low", f"{metric}_ci_high"]] = ci
    return table.reindex(columns=COLUMNS)


def write_dataset_metrics(folder: Path, n_boot: int = 200, seed: int = 0, progress: bool = False,
                          pool: Pool | None = None, threads: int = 1,
                          stream: PooledStream | None = None) -> pd.DataFrame:
    """Compute ``dataset_metrics`` for every run below ``folder`` and write each run's rows into its
    ``dataset_metrics.csv`` (atomically); returns all rows.

    Args:
        pool: the folder's pooled maps when the caller has them (and keeps them open); else read here.
        threads: ``dataset_metrics``' threads.
        stream: the run's accumulators, fed as it scored its images (``folder`` is that run): the rows
            come from them, without CIs, and no saved map is read (unless it dropped its counts, over
            ``analysis.pool_stream.STREAM_BYTES``).
    """
    if stream is not None and not stream.dropped:
        if not stream.image_rows:
            raise FileNotFoundError(f"{folder}: no image has a mask; the dataset-level protocol needs masks")
        table = pd.DataFrame(stream_rows(stream, threads=threads)).reindex(columns=COLUMNS)
    else:
        own = pool is None
        pool = build_pool(folder, progress) if own else pool
        try:
            table = dataset_metrics(pool, n_boot, seed, threads=threads)
        finally:
            if own:
                pool.close()
    folder = Path(folder)
    for job, part in table.groupby("job", sort=False):
        write_table(part, (folder / job if job != "." else folder) / layout.DATASET_METRICS)
    return table


def write_table(table: pd.DataFrame, out: Path) -> None:
    """``dataset_metrics`` rows into ``out`` (CSV), atomically: the old file or the new one, never a part."""
    tmp = out.with_suffix(".csv.tmp")
    table.reindex(columns=COLUMNS).to_csv(tmp, index=False, float_format="%.9g")  # float32 thresholds round-trip
    tmp.replace(out)
