"""The dataset-level protocol and the held-out choice of a map and its threshold.

Per image (``results.csv``) asks: does this map outline the defect in this image? Each image is
ranked on its own, so a map whose scale changes from image to image can look perfect. Dataset
level (``dataset_metrics.csv``, as MVTec AD, anomalib and PatchCore report) asks what an
inspection line runs: one threshold for every image. Pixel AUROC pools every pixel of every
test image, good images included; AUPRO averages PRO over every region of every image with FPR
over every normal pixel; F1-max is the best pixel F1 over one shared threshold.

A per-defect-type row pools that type's images with the defect-free (``good``) ones; the
``all`` row pools every image.

``choose`` picks a candidate (model, method, layer, map) and its raw-score threshold on
calibration images only and reports it on the held-out images with bootstrap 95% CIs, plus how
often each candidate wins when the calibration images are resampled, and, given costs, the
expected inspection cost per part against no inspection.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .metrics.pooled import SortedCells, pooled_metrics, threshold_at_fpr
from .runtime import map_threads
from .results import catalog, layout
from .analysis.pool import SCORES, GridCells, Pool, build_pool

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
    data called ``all`` is named apart from it: ``catalog.data_category``)."""
    good = (images["category"] == "good").to_numpy()
    out = []
    for category in sorted(set(images["category"]) - {"good"}):
        out.append((catalog.data_category(category), (images["category"] == category).to_numpy() | good))
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
    """One candidate's cells, sorted once; every metric is a weighted pass over them."""

    def __init__(self, pool: Pool, c: int, regions: np.ndarray | None = None, cells: GridCells | None = None):
        self.cells = pool.cells(c) if cells is None else cells
        self.scores = pool.scores(c)
        self.sorted = SortedCells(self.scores)
        self.regions = pool.images["regions"].to_numpy(float) if regions is None else regions
        self.limit = pool.fpr_limit
        self.covered = _covered(self.cells, len(pool.images))
        self.image_scores = pool.image_scores[c]

    def metrics(self, image_weights: np.ndarray):
        w = image_weights * self.covered
        return self.sorted.metrics(self.cells.pos, self.cells.neg, self.cells.pro, float((w * self.regions).sum()),
                                   self.limit, weights=w[self.cells.image])

    def at_threshold(self, t: float, image_weights: np.ndarray) -> dict:
        w = image_weights * self.covered
        return self.sorted.at_threshold(t, self.cells.pos, self.cells.neg, weights=w[self.cells.image])


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
        cand = candidates[c]
        data = _Candidate(pool, c, regions, grid_cells[c])  # one candidate's sorted cells per thread at a time
        rows = []
        bad = pool.nonfinite.get(c, 0)
        for category, chosen in categories:
            sel = chosen & data.covered
            m = asdict(data.metrics(sel.astype(float)))
            scores = {name: _image_auroc(data.image_scores[sel, SCORES.index(score)], defective[sel])
                      for name, score in catalog.IMAGE_SCORES.items()}
            notes = _notes(columns, sel)
            if bad:  # its cells were read as zeros: no number of it would mean anything
                m, scores = {k: float("nan") for k in m}, {k: float("nan") for k in scores}
                notes = nonfinite_note(bad)
            rows.append({"job": cand["job"], **{k: cand[k] for k in CANDIDATE}, "category": category,
                         "n_images": int(sel.sum()), "n_defect_images": int((sel & defective).sum()), **m, **scores,
                         "upsample": cand["upsample"], "notes": notes, "_c": c})
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
                          pool: Pool | None = None, threads: int = 1) -> pd.DataFrame:
    """Compute ``dataset_metrics`` for every run below ``folder`` and write each run's rows into its
    ``dataset_metrics.csv`` (atomically); returns all rows.

    Args:
        pool: the folder's pooled maps when the caller has them (and keeps them open); else read here.
        threads: ``dataset_metrics``' threads.
    """
    own = pool is None
    pool = build_pool(folder, progress) if own else pool
    try:
        table = dataset_metrics(pool, n_boot, seed, threads=threads)
    finally:
        if own:
            pool.close()
    folder = Path(folder)
    for job, part in table.groupby("job", sort=False):
        out = (folder / job if job != "." else folder) / layout.DATASET_METRICS
        tmp = out.with_suffix(".csv.tmp")
        part.to_csv(tmp, index=False, float_format="%.9g")  # float32 thresholds round-trip
        tmp.replace(out)
    return table


# ---------------------------------------------------------------------------------------- the choice


def split_images(images: pd.DataFrame, calibration: float, seed: int) -> np.ndarray:
    """Bool (n,) calibration selection: a seeded share of each category (at least one image of
    each category with two or more goes to each side)."""
    if not 0 < calibration < 1:
        raise ValueError(f"--calibration {calibration}: expected a share in (0, 1), a file of image ids, or a folder")
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(images), bool)
    for _, idx in images.groupby("category").indices.items():
        idx = rng.permutation(idx)
        k = int(round(calibration * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        chosen[idx[:k]] = True
    return chosen


def _economics(scores_cal: np.ndarray, bad_cal: np.ndarray, scores_out: np.ndarray, bad_out: np.ndarray,
               cost_miss: float, cost_false_alarm: float, defect_rate: float, n_boot: int,
               rng: np.random.Generator) -> dict:
    """The image threshold minimising the expected cost per part on calibration, judged on held-out.

    Without defect-free images on a side the false-alarm rate, hence every cost, is undefined (NaN).
    """
    baseline = defect_rate * cost_miss
    for side, bad in (("calibration", bad_cal), ("held-out", bad_out)):
        if bad.all():  # a false-alarm rate of 0/0 would read as a perfect 0
            nan = float("nan")
            return {"image_threshold": nan, "defect_rate": defect_rate, "cost_miss": cost_miss,
                    "cost_false_alarm": cost_false_alarm, "miss_rate": nan, "false_alarm_rate": nan,
                    "expected_cost_per_part": nan, "expected_cost_ci": [nan, nan],
                    "no_inspection_cost_per_part": baseline, "break_even_defect_rate": nan,
                    "undefined": f"no defect-free images among the {side} images",
                    "verdict": f"false-alarm rate undefined: no defect-free images among the {side} images, so "
                               f"the expected cost per part is not estimated ({baseline:.4g} per part with no "
                               "inspection)."}
    def rates(scores, bad, t, w=None):
        w = np.ones(len(scores)) if w is None else w
        flagged = scores >= t
        miss = (w * (bad & ~flagged)).sum() / max((w * bad).sum(), 1e-12)
        false_alarm = (w * (~bad & flagged)).sum() / max((w * ~bad).sum(), 1e-12)
        return miss, false_alarm

    def cost(miss, false_alarm):
        return defect_rate * miss * cost_miss + (1 - defect_rate) * false_alarm * cost_false_alarm

    candidates = np.unique(np.concatenate([scores_cal, [np.inf]]))  # inf: flag nothing
    costs = [cost(*rates(scores_cal, bad_cal, t)) for t in candidates]
    t = float(candidates[int(np.argmin(costs))])
    miss, false_alarm = rates(scores_out, bad_out, t)
    expected = cost(miss, false_alarm)
    groups = [np.flatnonzero(bad_out), np.flatnonzero(~bad_out)]
    boots = [cost(*rates(scores_out, bad_out, t, w)) for w in _bootstrap_weights(groups, len(scores_out), n_boot, rng)]
    denominator = cost_miss * (1 - miss) + false_alarm * cost_false_alarm
    break_even = false_alarm * cost_false_alarm / denominator if denominator > 0 else float("nan")
    low, high = _ci(boots)
    pays = "pays" if high < baseline else "does not pay" if low > baseline else "may pay (the CI holds the baseline)"
    return {"image_threshold": t, "defect_rate": defect_rate, "cost_miss": cost_miss,
            "cost_false_alarm": cost_false_alarm, "miss_rate": miss, "false_alarm_rate": false_alarm,
            "expected_cost_per_part": expected, "expected_cost_ci": [low, high],
            "no_inspection_cost_per_part": baseline, "break_even_defect_rate": break_even,
            "verdict": f"At a defect rate of {defect_rate:.3g} this inspection {pays}: {expected:.4g} "
                       f"[{low:.4g}, {high:.4g}] per part against {baseline:.4g} with no inspection; "
                       + (f"break-even defect rate {break_even:.3g}." if break_even == break_even else
                          "no break-even defect rate (the threshold flags no part: it costs what no inspection "
                          "costs).")}


def choice_split(pool: Pool, metric: str, calibration: float | np.ndarray, seed: int) -> tuple[str, np.ndarray, np.ndarray]:
    """The held-out choice's metric (its canonical name) and its calibration / held-out split of the pool's
    images (a fraction split by ``seed``, or a boolean mask).

    Raises:
        ValueError: a metric the choice cannot rank by, or a split that leaves one side without defective images.
    """
    metric = dataset_metric(metric)
    if metric not in CHOICE_METRICS:
        raise ValueError(f"--metric {metric}: the choice ranks by one of {', '.join(CHOICE_METRICS)}")
    images = pool.images
    cal = split_images(images, calibration, seed) if np.ndim(calibration) == 0 else np.asarray(calibration, bool)
    out = ~cal
    defective = images["defective"].to_numpy()
    for name, side in (("calibration", cal), ("held-out", out)):
        if not (side & defective).any():
            raise ValueError(f"the {name} images hold no defective image; use more images or another split")
    return metric, cal, out


def choose(pool: Pool, metric: str = "aupro", calibration: float | np.ndarray = 0.5, seed: int = 0,
           n_boot: int = 1000, n_stability: int = 200, target_fpr: float | None = None,
           costs: tuple[float, float] | None = None, defect_rate: float | None = None,
           image_score: str = "max", stability_pool: int = 20) -> dict[str, Any]:
    """Choose a candidate and its threshold on calibration images; report it on the held-out ones.

    Args:
        pool: pooled saved maps.
        metric: the pooled metric that chooses (``CHOICE_METRICS``).
        calibration: a share of images (split per category, seeded) or a bool (n_images,)
            selection of the calibration images.
        seed: split and bootstrap seed.
        n_boot: bootstrap resamples of held-out images for the CIs.
        n_stability: bootstrap resamples of the calibration images, each repeating the choice.
        stability_pool: how many of the best candidates on the calibration images compete in
            each resample.
        target_fpr: None: the threshold is calibration F1-max's; else the lowest threshold
            whose calibration pixel FPR is at most this.
        costs: (cost of a missed defective part, cost of a false alarm), per part, or None.
        defect_rate: the line's share of defective parts (None: the data's own).
        image_score: ``max`` or ``topk``: the image score of the cost threshold.

    Returns:
        A JSON-serialisable dict (see ``write_choice``).

    Raises:
        ValueError: an unknown metric, or a split that leaves one side without defective images.
    """
    metric, cal, out = choice_split(pool, metric, calibration, seed)
    images = pool.images
    defective = images["defective"].to_numpy()
    n_candidates = len(pool.candidates)
    scores = np.full(n_candidates, np.nan)
    for c in range(n_candidates):  # one at a time: memory does not grow with the number of candidates
        if not pool.nonfinite.get(c):  # a map with NaN/inf values is never chosen
            scores[c] = getattr(_Candidate(pool, c).metrics(cal.astype(float)), metric)
    if np.isnan(scores).all():
        why = " (every candidate's map has NaN/inf values)" if len(pool.nonfinite) == n_candidates else ""
        raise ValueError(f"{metric} is undefined for every candidate on the calibration images{why}")
    best = int(np.nanargmax(scores))
    # the contenders of the stability resamples: the strongest on the whole calibration set (a candidate
    # far behind never wins a resample); only they are held in memory
    contenders = [int(i) for i in np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")[:stability_pool]
                  if not pool.nonfinite.get(int(i))]
    data = {i: _Candidate(pool, i) for i in {*contenders, best}}
    chosen = data[best]
    cand = pool.candidates.iloc[best]
    on_cal = chosen.metrics(cal.astype(float))
    if target_fpr is None:
        threshold, rule = float(on_cal.f1_threshold), "calibration pixel F1-max"
    else:
        w = (cal * chosen.covered).astype(float)[chosen.cells.image]
        threshold = float(threshold_at_fpr(chosen.scores, chosen.cells.neg, target_fpr, weights=w))
        if math.isnan(threshold):
            raise ValueError(f"--target-fpr {target_fpr:g}: the calibration images hold no normal pixel, so the "
                             "pixel FPR is undefined; use the F1-max threshold (no --target-fpr)")
        rule = f"calibration pixel FPR <= {target_fpr:g}"
    rng = np.random.default_rng(seed + 1)

    def held_out(weights: np.ndarray) -> dict[str, float]:
        m = chosen.metrics(weights)
        c = chosen.at_threshold(threshold, weights)
        tp, fp, fn = c["tp"], c["fp"], c["fn"]
        flagged = chosen.image_scores[:, SCORES.index("score_max")] >= threshold  # a cell above the threshold
        bad, good = weights * defective * chosen.covered, weights * ~defective * chosen.covered
        return {"pixel_auroc": m.pixel_auroc, "aupro": m.aupro, "pixel_ap": m.pixel_ap,
                "pixel_f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
                "pixel_iou": tp / (tp + fp + fn) if tp + fp + fn else float("nan"),
                "image_recall": (bad * flagged).sum() / bad.sum() if bad.sum() else float("nan"),
                "image_false_alarm_rate": (good * flagged).sum() / good.sum() if good.sum() else float("nan"),
                "image_accuracy": ((bad * flagged).sum() + (good * ~flagged).sum()) / (bad.sum() + good.sum())}

    point = held_out(out.astype(float))
    groups = [np.flatnonzero(out & defective), np.flatnonzero(out & ~defective)]
    boots = [held_out(w) for w in _bootstrap_weights(groups, len(images), n_boot, rng)]
    held = {k: {"value": v, "ci": list(_ci([b[k] for b in boots]))} for k, v in point.items()}
    wins = np.zeros(n_candidates)
    cal_groups = [np.flatnonzero(cal & defective), np.flatnonzero(cal & ~defective)]
    for w in _bootstrap_weights(cal_groups, len(images), n_stability, rng):
        values = np.array([getattr(data[i].metrics(w), metric) for i in contenders])
        if not np.isnan(values).all():
            wins[contenders[int(np.nanargmax(values))]] += 1
    top = np.argsort(-wins, kind="stable")[:5]
    describe = pool.candidates[["job", *CANDIDATE]]
    stability = [{**{k: _plain(v) for k, v in describe.iloc[i].items()}, "wins": float(wins[i] / max(n_stability, 1))}
                 for i in top if wins[i] > 0]
    result: dict[str, Any] = {
        "protocol": "dataset (pooled over images; one threshold for every image)",
        "metric": metric, "chosen": {k: _plain(v) for k, v in cand[["job", *CANDIDATE, "upsample"]].items()},
        "calibration_score": float(scores[best]), "threshold": threshold, "threshold_rule": rule,
        "seed": seed, "n_boot": n_boot, "n_stability": n_stability,
        "stability_pool": min(stability_pool, n_candidates),
        "calibration_images": images["id"][cal].tolist(), "held_out_images": images["id"][out].tolist(),
        "held_out": held, "stability": stability,
        "candidates": int(n_candidates),
    }
    if costs is not None:
        rate = float(defective.mean()) if defect_rate is None else float(defect_rate)
        if not 0 <= rate <= 1:
            raise ValueError(f"--defect-rate {defect_rate}: expected a share in [0, 1]")
        s = chosen.image_scores[:, SCORES.index(f"score_{image_score}")]
        result["economics"] = _economics(s[cal & chosen.covered], defective[cal & chosen.covered],
                                         s[out & chosen.covered], defective[out & chosen.covered],
                                         costs[0], costs[1], rate, n_boot, rng)
        result["economics"]["image_score"] = f"score_{image_score}"
    return result


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def choice_markdown(result: dict[str, Any]) -> str:
    """A readable summary of ``choose``'s result."""
    c = result["chosen"]
    job = "" if c["job"] == "." else f" (job {c['job']})"
    lines = [f"# Held-out choice by pooled `{result['metric']}` ({result['protocol']})", "",
             f"Chosen on {len(result['calibration_images'])} calibration images among {result['candidates']} "
             f"candidates: **{c['model']} · {c['method']} · layer {c['layer']} · {c['head']}**"
             f"{job}, calibration "
             f"{result['metric']} {result['calibration_score']:.3f}; threshold {result['threshold']:.6g} "
             f"({result['threshold_rule']}).", "",
             f"## On the {len(result['held_out_images'])} held-out images (95% bootstrap CI)", "",
             "| metric | value | 95% CI |", "|---|---:|---|"]
    for name, v in result["held_out"].items():
        ci = f"[{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" if _defined(v["ci"][0]) else ""
        value = f"{v['value']:.3f}" if _defined(v["value"]) else "undefined" + UNDEFINED.get(name, "")
        lines.append(f"| {name} | {value} | {ci} |")
    lines += ["", f"## Stability: share of {result['n_stability']} calibration resamples each candidate wins "
              f"(the {result.get('stability_pool', '')} best on the calibration images compete)", "",
              "| model | method | layer | head | wins |", "|---|---|---:|---|---:|"]
    for s in result["stability"]:
        lines.append(f"| {s['model']} | {s['method']} | {s['layer']} | {s['head']} | {s['wins']:.2f} |")
    if "economics" in result:
        e = result["economics"]
        lines += ["", "## Inspection economics (per part, held-out images)", ""]
        if "undefined" in e:  # no number stands in for an unknown false-alarm rate
            lines.append(f"Image threshold on `{e['image_score']}`: {e['verdict']}")
        else:
            lines += [f"Image threshold {e['image_threshold']:.6g} on `{e['image_score']}` (minimum expected cost "
                      f"on calibration): miss rate {e['miss_rate']:.3f}, false-alarm rate "
                      f"{e['false_alarm_rate']:.3f}.", "", e["verdict"]]
    return "\n".join(lines) + "\n"


UNDEFINED = {"image_false_alarm_rate": ": no defect-free images", "image_recall": ": no defective images"}


def _defined(value: Any) -> bool:
    return value is not None and value == value


def _strict(value: Any) -> Any:
    """``value`` with every NaN or infinite float as None: strict JSON (``null``), which every reader parses."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def write_choice(folder: Path, result: dict[str, Any]) -> tuple[Path, Path]:
    """``choice_<metric>.json`` (strict JSON: an undefined or infinite number is ``null``) and ``.md`` in ``folder``."""
    folder = Path(folder)
    stem = layout.choice_stem(result["metric"])
    js, md = folder / f"{stem}.json", folder / f"{stem}.md"
    for path, text in ((js, json.dumps(_strict(result), indent=2, allow_nan=False)), (md, choice_markdown(result))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return js, md
