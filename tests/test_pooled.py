"""Pooled (dataset-level) localisation metrics against pixel-level brute force and scikit-learn.

Cells are checked by expanding them back into pixels: cell ``i`` becomes ``pos[i]`` defect
and ``neg[i]`` normal pixels with score ``scores[i]``; the pooled metric of the cells must equal
the reference metric of those pixels.
"""
from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.measure import label
from sklearn.metrics import average_precision_score, roc_auc_score

from layerscope.metrics.pooled import PooledMetrics, SortedCells, pooled_metrics, threshold_at_fpr

FIELDS = ("pixel_auroc", "aupro", "pixel_ap", "pixel_f1_max", "f1_threshold")


# ---------------------------------------------------------------- helpers


def expand(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of integer-count cells: scores (m,) and bool labels (m,), True = defect."""
    p, q = np.asarray(pos).astype(int), np.asarray(neg).astype(int)
    s = np.concatenate([np.repeat(scores, p), np.repeat(scores, q)])
    y = np.concatenate([np.ones(p.sum(), bool), np.zeros(q.sum(), bool)])
    return s, y


def brute_f1(s: np.ndarray, y: np.ndarray) -> tuple[float, dict[float, float]]:
    """Best F1 of pixels by looping over every distinct threshold; also F1 per threshold."""
    per_t = {}
    for t in np.unique(s):
        pred = s >= t
        tp, fp, fn = np.sum(pred & y), np.sum(pred & ~y), np.sum(~pred & y)
        prec, rec = (tp / (tp + fp), tp / (tp + fn)) if tp else (0.0, 0.0)
        per_t[float(t)] = 2 * prec * rec / (prec + rec) if tp else 0.0
    return max(per_t.values()), per_t


def random_cells(rng: np.random.Generator, n: int, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n cells with scores on ``levels`` values (many ties) and small counts, some cells empty."""
    scores = rng.integers(0, levels, n) / levels
    pos = rng.integers(0, 4, n) * (rng.random(n) < 0.4)
    neg = rng.integers(0, 4, n)
    return scores, pos.astype(float), neg.astype(float)


def same(a: PooledMetrics, b: PooledMetrics, tol: float = 1e-12) -> None:
    """Every field equal to ``tol``, NaN matching NaN."""
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= tol, (f, x, y)


def random_masks(rng: np.random.Generator, n_images: int = 6, size: int = 12) -> np.ndarray:
    """Bool masks (n_images, size, size) with 1-3 rectangular blobs each; every third image defect-free."""
    masks = np.zeros((n_images, size, size), bool)
    for i in range(n_images):
        if i % 3 == 0:
            continue
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, size, 2)
            h, w = rng.integers(1, 5, 2)
            masks[i, r:r + h, c:c + w] = True
    # two blobs touching only at a corner: one region under 8-connectivity
    masks[1, 0, 0] = masks[1, 1, 1] = True
    return masks


def regions_of(masks: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(image index, bool region mask) for every 8-connected region of every image."""
    out = []
    for i, m in enumerate(masks):
        lab = label(m, connectivity=2)
        out += [(i, lab == r) for r in range(1, lab.max() + 1)]
    return out


def reference_aupro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """AUPRO from the MVTec AD definition, by brute force over every distinct score.

    At each threshold t (descending): FPR over all normal pixels of all images, PRO the mean
    over all regions of all images of the share of the region scoring >= t. The curve starts
    at (0, 0), is integrated with the trapezoid rule up to ``limit`` (the crossing segment
    linearly interpolated) and divided by ``limit``.
    """
    regions = regions_of(masks)
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append((pred & normal).sum() / normal.sum())
        pros.append(np.mean([pred[i][reg].sum() / reg.sum() for i, reg in regions]))
    x, y = np.array(fprs), np.array(pros)
    inside = x <= limit
    xs, ys = x[inside], y[inside]
    if not inside.all():
        j = np.flatnonzero(~inside)[0]
        xs = np.append(xs, limit)
        ys = np.append(ys, np.interp(limit, [x[j - 1], x[j]], [y[j - 1], y[j]]))
    return float(np.trapezoid(ys, xs)) / limit


def pro_pixels(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-pixel PRO weight 1/|r| on the pixels of region r (0 elsewhere), and the region count."""
    pro = np.zeros(masks.shape)
    regions = regions_of(masks)
    for i, reg in regions:
        pro[i][reg] = 1.0 / reg.sum()
    return pro, len(regions)


def pixel_cells(maps: np.ndarray, masks: np.ndarray):
    """One cell per pixel: (scores, pos, neg, pro, n_regions)."""
    pro, n_regions = pro_pixels(masks)
    return maps.ravel(), masks.ravel().astype(float), (~masks).ravel().astype(float), pro.ravel(), n_regions


def block_cells(small: np.ndarray, masks: np.ndarray, f: int):
    """One cell per f x f block of maps nearest-upsampled from ``small`` (k, h, w)."""
    k, h, w = small.shape
    pro, n_regions = pro_pixels(masks)

    def per_block(a: np.ndarray) -> np.ndarray:
        return a.reshape(k, h, f, w, f).sum(axis=(2, 4)).ravel()

    pos = per_block(masks.astype(float))
    return small.ravel(), pos, f * f - pos, per_block(pro), n_regions


def images(seed: int, decimals: int | None = 2):
    """Masks (6, 12, 12), pixel maps nearest-upsampled from 6x6 maps, and the 6x6 maps."""
    rng = np.random.default_rng(seed)
    masks = random_masks(rng)
    small = rng.random((6, 6, 6))
    maps = small.repeat(2, axis=1).repeat(2, axis=2)
    # defects score a bit higher on average, so the curve is not a diagonal
    coarse_defect = masks.reshape(6, 6, 2, 6, 2).mean(axis=(2, 4))
    small = small + 0.6 * coarse_defect * rng.random(small.shape)
    if decimals is not None:
        small = np.round(small, decimals)  # ties between blocks and images
    maps = small.repeat(2, axis=1).repeat(2, axis=2)
    return masks, maps, small


# ---------------------------------------------------------------- 1. AUROC


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [2, 5, 40, 10_000])
def test_auroc_equals_sklearn_on_expanded_pixels(seed, levels):
    scores, pos, neg = random_cells(np.random.default_rng(seed), 400, levels)
    s, y = expand(scores, pos, neg)
    got = pooled_metrics(scores, pos, neg, pos, 1.0).pixel_auroc
    assert abs(got - roc_auc_score(y, s)) < 1e-9


def test_auroc_one_cell_per_pixel():
    rng = np.random.default_rng(7)
    y = rng.random(3000) < 0.1
    s = np.round(rng.random(3000) + 0.3 * y, 1)
    got = pooled_metrics(s, y.astype(float), (~y).astype(float), y.astype(float), 1.0).pixel_auroc
    assert abs(got - roc_auc_score(y, s)) < 1e-9


# ---------------------------------------------------------------- 2. AP and F1


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [2, 5, 40, 10_000])
def test_ap_and_f1_equal_pixel_references(seed, levels):
    scores, pos, neg = random_cells(np.random.default_rng(100 + seed), 300, levels)
    s, y = expand(scores, pos, neg)
    m = pooled_metrics(scores, pos, neg, pos, 1.0)
    assert abs(m.pixel_ap - average_precision_score(y, s)) < 1e-9
    best, per_t = brute_f1(s, y)
    assert abs(m.pixel_f1_max - best) < 1e-9
    # the threshold is a pixel score and reaches the best F1
    assert m.f1_threshold in per_t
    assert abs(per_t[m.f1_threshold] - best) < 1e-9


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=25))
def test_small_cells_match_pixels(cells):
    scores, pos, neg = (np.array(c, dtype=float) for c in zip(*cells))
    m = pooled_metrics(scores, pos, neg, pos, max(pos.sum(), 1.0), fpr_limit=1.0)
    s, y = expand(scores, pos, neg)
    if pos.sum() == 0:
        assert math.isnan(m.pixel_auroc) and math.isnan(m.pixel_ap) and math.isnan(m.pixel_f1_max)
        return
    best, per_t = brute_f1(s, y)
    assert abs(m.pixel_f1_max - best) < 1e-9 and abs(per_t[m.f1_threshold] - best) < 1e-9
    if neg.sum() == 0:
        assert math.isnan(m.pixel_auroc) and math.isnan(m.aupro) and m.pixel_ap == 1.0
        return
    assert abs(m.pixel_auroc - roc_auc_score(y, s)) < 1e-9
    assert abs(m.pixel_ap - average_precision_score(y, s)) < 1e-9
    # one "region" holding every positive: PRO = TPR, so AUPRO over the whole FPR range is the AUROC
    assert abs(m.aupro - m.pixel_auroc) < 1e-9


# ---------------------------------------------------------------- 3. AUPRO


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_equals_mvtec_reference_for_pixels_and_blocks(seed, limit):
    masks, maps, small = images(seed)
    expected = reference_aupro(maps, masks, limit)
    by_pixel = pooled_metrics(*pixel_cells(maps, masks), fpr_limit=limit).aupro
    by_block = pooled_metrics(*block_cells(small, masks, 2), fpr_limit=limit).aupro
    assert 0 < expected <= 1
    assert abs(by_pixel - expected) < 1e-9
    assert abs(by_block - by_pixel) < 1e-9


@pytest.mark.parametrize("seed", range(3))
def test_aupro_without_ties_and_at_a_limit_on_a_curve_point(seed):
    masks, maps, small = images(seed, decimals=None)
    normal = ~masks
    # a limit that is exactly an FPR of the curve: no interpolation, the point itself is the end
    t = np.quantile(maps[normal], 0.8)
    limit = float((maps >= t)[normal].sum() / normal.sum())
    for lim in (limit, 0.3):
        expected = reference_aupro(maps, masks, lim)
        assert abs(pooled_metrics(*pixel_cells(maps, masks), fpr_limit=lim).aupro - expected) < 1e-9
        assert abs(pooled_metrics(*block_cells(small, masks, 2), fpr_limit=lim).aupro - expected) < 1e-9


def test_aupro_counts_every_region_equally():
    # image 0: a big region fully detected; image 1: a one-pixel region missed; image 2: good
    masks = np.zeros((3, 8, 8), bool)
    masks[0, :4, :4] = True
    masks[1, 7, 7] = True
    maps = np.full((3, 8, 8), 0.5)
    maps[0][masks[0]] = 1.0
    maps[1][masks[1]] = 0.0  # below every normal pixel
    got = pooled_metrics(*pixel_cells(maps, masks), fpr_limit=0.3).aupro
    # PRO is 1/2 (one of two regions found, whatever their sizes) over the whole FPR range up to 1
    assert abs(got - 0.5) < 1e-12
    assert abs(got - reference_aupro(maps, masks, 0.3)) < 1e-12


# ---------------------------------------------------------------- 4. weights


@pytest.mark.parametrize("seed", range(6))
def test_integer_weights_equal_repeated_cells(seed):
    rng = np.random.default_rng(200 + seed)
    n_images, per_image = 8, 30
    image = np.repeat(np.arange(n_images), per_image)
    scores, pos, neg = random_cells(rng, n_images * per_image, levels=7)
    pro = rng.random(scores.shape) * (pos > 0)
    regions = rng.integers(0, 4, n_images)
    sc = SortedCells(scores)
    for _ in range(5):  # bootstrap draws against one sort
        draws = rng.integers(0, 3, n_images)  # times each image is drawn; 0 = left out
        draws[rng.integers(n_images)] += 1
        w = draws[image].astype(float)
        n_regions = float(draws @ regions)  # the caller weights the region count

        def rep(a):
            return np.repeat(a, draws[image])

        for limit in (0.3, 1.0):
            weighted = sc.metrics(pos, neg, pro, n_regions, limit, weights=w)
            repeated = pooled_metrics(rep(scores), rep(pos), rep(neg), rep(pro), n_regions, limit)
            same(weighted, repeated)
            same(weighted, pooled_metrics(scores, pos, neg, pro, n_regions, limit, weights=w))
        for target in (0.0, 0.05, 0.2, 0.5, 1.0):
            assert sc.threshold_at_fpr(neg, target, weights=w) == threshold_at_fpr(rep(scores), rep(neg), target)
        for t in (-1.0, 0.0, 3 / 7, 0.5, 6 / 7, 2.0):
            got = sc.at_threshold(t, pos, neg, weights=w)
            assert got == SortedCells(rep(scores)).at_threshold(t, rep(pos), rep(neg))


def test_unit_weights_change_nothing_and_zero_weights_remove_cells():
    scores, pos, neg = random_cells(np.random.default_rng(3), 200, 9)
    pro = pos / 7
    same(pooled_metrics(scores, pos, neg, pro, 30.0, weights=np.ones(200)),
         pooled_metrics(scores, pos, neg, pro, 30.0))
    keep = np.arange(200) % 3 != 0
    same(pooled_metrics(scores, pos, neg, pro, 30.0, weights=keep.astype(float)),
         pooled_metrics(scores[keep], pos[keep], neg[keep], pro[keep], 30.0))


def test_weighted_evaluations_do_not_sort(monkeypatch):
    scores, pos, neg = random_cells(np.random.default_rng(4), 500, 20)
    sc = SortedCells(scores)
    expected = sc.metrics(pos, neg, pos / 9, 40.0, weights=np.arange(500) % 4)

    def refuse(*args, **kwargs):
        raise AssertionError("sorted again")

    for name in ("argsort", "sort", "lexsort", "unique", "partition", "argpartition"):
        monkeypatch.setattr(np, name, refuse)
    same(sc.metrics(pos, neg, pos / 9, 40.0, weights=np.arange(500) % 4), expected)
    sc.threshold_at_fpr(neg, 0.1, weights=np.arange(500) % 4)
    sc.at_threshold(0.5, pos, neg, weights=np.arange(500) % 4)


# ---------------------------------------------------------------- 5. thresholds


@pytest.mark.parametrize("seed", range(4))
def test_threshold_at_fpr_is_the_lowest_meeting_the_target(seed):
    scores, pos, neg = random_cells(np.random.default_rng(300 + seed), 300, 25)
    n_neg = neg.sum()
    fpr = {float(t): neg[scores >= t].sum() / n_neg for t in np.unique(scores)}
    # targets between curve points and exactly on them
    targets = [0.0, 0.01, 0.1, 0.3, 0.77, 1.0, *sorted(fpr.values())[::5]]
    for target in targets:
        ok = [t for t, f in fpr.items() if f <= target]
        expected = min(ok) if ok else math.inf
        got = threshold_at_fpr(scores, neg, target)
        assert got == expected, (target, got, expected)
        if ok:
            assert neg[scores >= got].sum() / n_neg <= target


def test_threshold_at_fpr_edges():
    scores = np.array([0.9, 0.5, 0.1])
    # the top cell alone already has FPR 1/3: no cell score reaches FPR 0
    assert threshold_at_fpr(scores, np.array([1.0, 1.0, 1.0]), 0.0) == math.inf
    assert threshold_at_fpr(scores, np.array([0.0, 1.0, 1.0]), 0.0) == 0.9
    assert threshold_at_fpr(scores, np.array([1.0, 1.0, 1.0]), 1.0) == 0.1
    assert math.isnan(threshold_at_fpr(scores, np.zeros(3), 0.1))
    # a score whose cells all have weight 0 was not drawn: no candidate, as if the cell were absent
    w = np.array([1.0, 0.0, 1.0])
    assert threshold_at_fpr(scores, np.ones(3), 0.5, weights=w) == 0.9
    assert threshold_at_fpr(scores, np.ones(3), 0.0, weights=w) == math.inf


def test_at_threshold_counts_pixels():
    scores, pos, neg = random_cells(np.random.default_rng(5), 300, 11)
    sc = SortedCells(scores)
    for t in (-np.inf, 0.0, 0.05, 5 / 11, 10 / 11, 1.0, np.inf):
        above = scores >= t
        assert sc.at_threshold(t, pos, neg) == {
            "tp": pos[above].sum(), "fp": neg[above].sum(), "fn": pos[~above].sum(), "tn": neg[~above].sum()}


# ---------------------------------------------------------------- 6. degenerate input


def test_no_positives_no_negatives_and_all_ties():
    scores = np.array([0.2, 0.4, 0.4, 0.9])
    ones, zeros = np.ones(4), np.zeros(4)
    m = pooled_metrics(scores, zeros, ones, zeros, 0.0)
    assert all(math.isnan(getattr(m, f)) for f in FIELDS)
    m = pooled_metrics(scores, ones, zeros, ones / 4, 1.0)
    assert math.isnan(m.pixel_auroc) and math.isnan(m.aupro)
    assert m.pixel_ap == 1.0 and m.pixel_f1_max == 1.0 and m.f1_threshold == 0.2
    pos, neg = np.array([1.0, 0, 2, 0]), np.array([0.0, 3, 1, 2])
    m = pooled_metrics(np.full(4, 0.7), pos, neg, pos / 3, 1.0, fpr_limit=1.0)
    assert m.pixel_auroc == 0.5 and m.aupro == 0.5
    assert abs(m.pixel_ap - 3 / 9) < 1e-15 and abs(m.pixel_f1_max - 6 / 12) < 1e-15 and m.f1_threshold == 0.7
    # one curve segment from (0, 0) to (1, 1), cut at 0.3: area 0.045, normalised 0.15
    assert abs(pooled_metrics(np.full(4, 0.7), pos, neg, pos / 3, 1.0).aupro - 0.15) < 1e-15
    assert all(math.isnan(getattr(pooled_metrics([], [], [], [], 0.0), f)) for f in FIELDS)


def test_bad_input_is_refused():
    s, c = np.array([0.1, 0.2]), np.array([1.0, 1.0])
    with pytest.raises(ValueError, match="scores contain NaN"):
        pooled_metrics(np.array([0.1, np.nan]), c, c, c, 1.0)
    with pytest.raises(ValueError, match="pos: expected finite non-negative values"):
        pooled_metrics(s, np.array([1.0, -1.0]), c, c, 1.0)
    with pytest.raises(ValueError, match="weights: expected finite non-negative values"):
        pooled_metrics(s, c, c, c, 1.0, weights=np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match=r"pos: expected shape \(2,\) like the scores, got \(1,\)"):
        pooled_metrics(s, c[:1], c, c, 1.0)
    for limit in (0.0, 1.5):
        with pytest.raises(ValueError, match=rf"fpr_limit={limit}, expected a value in \(0, 1\]"):
            pooled_metrics(s, c, c, c, 1.0, fpr_limit=limit)


# ---------------------------------------------------------------- 7. memory at scale


@pytest.mark.slow
def test_two_million_cells_in_linear_memory():
    n = 2_000_000
    rng = np.random.default_rng(6)
    scores = rng.random(n)  # all distinct: as many tie groups as cells, the worst case
    pos = (rng.random(n) < 0.05).astype(float)
    neg = 1.0 - pos
    pro = pos / 1000.0
    weights = rng.integers(0, 3, n).astype(float)
    budget = 3 * 40 * n  # a dozen or so float64 vectors; a per-threshold pass would need n^2
    tracemalloc.start()
    try:
        m = pooled_metrics(scores, pos, neg, pro, 100.0)
        _, peak_once = tracemalloc.get_traced_memory()
        sc = SortedCells(scores)
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        mw = sc.metrics(pos, neg, pro, 100.0, weights=weights)
        now, peak_weighted = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_once < budget, peak_once / n
    assert held < 40 * n, held / n
    assert peak_weighted - held < budget, (peak_weighted - held) / n
    assert abs(m.pixel_auroc - 0.5) < 0.01 and abs(mw.pixel_auroc - 0.5) < 0.01
    assert 0 <= m.aupro <= 1 and 0 < m.pixel_f1_max <= 1
