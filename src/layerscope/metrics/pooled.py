"""Dataset-level ("pooled") anomaly-localisation metrics on score cells.

Protocol. MVTec AD and anomalib score localisation by pooling: every pixel of every test
image, defect-free images included, enters one ranking, and a single threshold is shared by
all images ("predict defect where score >= t"). Pixel AUROC, average precision, the best F1
and AUPRO are curves over that one threshold. This is not the mean of per-image metrics: a
map that is high everywhere on a good image costs false positives at every threshold, and
good images contribute only negatives.

Cells. Pixels that must share a score (those that nearest upsampling copies from one grid
position of a map) are grouped into a cell ``i`` carrying its score ``s[i]`` and its pixel
counts: ``pos[i]`` defect pixels, ``neg[i]`` normal pixels, and the PRO weight
``pro[i] = sum_r |r ∩ cell i| / |r|`` over the connected ground-truth regions ``r``
(8-connectivity) of its image. Every curve point is a sum of such counts over the cells
scoring at least the threshold, so n cells give the exact pixel metric in O(n) after one
sort. One cell per pixel (counts 0/1, ``pro = 1/|r|`` on region pixels) is the plain
pixel metric.

Ties. Cells with equal scores form one tie group and enter the curves together: there is
one curve point per distinct score, from the highest down; in AUROC a positive and a
negative with equal scores count one half (the Mann-Whitney U statistic).

Bootstrap. Resampling images with replacement multiplies every count of a cell by how often
its image was drawn (``weights``), while the scores, hence the sort, stay the same:
``SortedCells`` sorts once and evaluates any number of weight vectors in O(n) each. A cell
of weight ``k`` gives exactly the metrics of the cell repeated ``k`` times.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PooledMetrics", "SortedCells", "group_metrics", "pooled_metrics", "threshold_at_fpr"]

_NAN = float("nan")


@dataclass(frozen=True)
class PooledMetrics:
    """Pooled localisation metrics of one dataset; NaN where a metric is undefined.

    Attributes:
        pixel_auroc: area under the pixel ROC curve; NaN without a positive or a negative pixel.
        aupro: area under PRO(FPR) for FPR in [0, fpr_limit], divided by fpr_limit (so in
            [0, 1]); NaN without a region or a negative pixel.
        pixel_ap: average precision, scikit-learn's step definition (no interpolation);
            NaN without a positive pixel.
        pixel_f1_max: best F1 over the thresholds; NaN without a positive pixel.
        f1_threshold: the cell score reaching ``pixel_f1_max`` (the highest such score if
            several tie); NaN without a positive pixel.
    """

    pixel_auroc: float
    aupro: float
    pixel_ap: float
    pixel_f1_max: float
    f1_threshold: float


def _vector(name: str, x: np.ndarray, n: int) -> np.ndarray:
    """``x`` as float64 of shape (n,), refusing negative, NaN or infinite entries."""
    a = np.asarray(x, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) like the scores, got {a.shape}")
    # counts and weights are sizes: a negative or NaN one would silently bend every curve
    if n and not (np.all(a >= 0) and math.isfinite(float(a.sum()))):
        raise ValueError(f"{name}: expected finite non-negative values")
    return a


class SortedCells:
    """Cell scores sorted once (descending) and split into tie groups, for many evaluations.

    Sorting is the only O(n log n) step; every method below is O(n) and sorts nothing, so
    a bootstrap evaluates 1000 weight vectors against one ``SortedCells``.

    Args:
        scores: float, (n,) one score per cell; NaN is refused (it has no rank).

    Attributes:
        n: number of cells.
        values: float64, (G,) distinct scores, descending (one per tie group).
    """

    def __init__(self, scores: np.ndarray) -> None:
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 1:
            raise ValueError(f"SortedCells: expected 1-D scores, got shape {s.shape}")
        if np.isnan(s).any():
            raise ValueError("SortedCells: scores contain NaN, which has no place in a ranking")
        self.n = int(s.shape[0])
        # ascending argsort read backwards is a view, not a copy; order inside a tie group is irrelevant
        self._order = np.argsort(s)[::-1]
        ranked = s[self._order]
        change = np.empty(self.n, dtype=bool)
        change[:1] = True
        # a tie group starts wherever the sorted score changes
        np.not_equal(ranked[1:], ranked[:-1], out=change[1:])
        starts = np.flatnonzero(change)
        del change
        self.values = ranked[starts]
        del ranked
        # bounds[k] = number of cells in the k highest groups; bounds[:-1] are the reduceat starts
        self._bounds = np.append(starts, self.n)

    @property
    def n_groups(self) -> int:
        """Number of tie groups G (distinct scores)."""
        return int(self.values.shape[0])

    def _sorted_weights(self, weights: np.ndarray | None) -> np.ndarray | None:
        """Weights in score order, (n,), or None."""
        if weights is None:
            return None
        w = _vector("weights", weights, self.n)
        return np.take(w, self._order, mode="clip")

    def _group_sums(self, x: np.ndarray, w_sorted: np.ndarray | None, buf: np.ndarray) -> np.ndarray:
        """Per-group sums (G,) of ``x * w`` using ``buf`` (n,) as scratch."""
        # mode="clip" writes straight into buf (mode="raise" would buffer); indices are valid by construction
        np.take(x, self._order, out=buf, mode="clip")
        if w_sorted is not None:
            buf *= w_sorted
        return np.add.reduceat(buf, self._bounds[:-1])

    def metrics(self, pos: np.ndarray, neg: np.ndarray, pro: np.ndarray, n_regions: float,
                fpr_limit: float = 0.3, weights: np.ndarray | None = None) -> PooledMetrics:
        """Pooled AUROC, AUPRO, AP and best F1 of the cells.

        Args:
            pos: (n,) defect pixels per cell, >= 0 (need not be integers).
            neg: (n,) normal pixels per cell, >= 0.
            pro: (n,) ``sum_r (pixels of region r in the cell) / |r|`` over the regions r,
                NOT divided by the number of regions.
            n_regions: total number of ground-truth regions (already weighted by the caller
                when bootstrapping: the sum over images of weight times regions).
            fpr_limit: upper end of the AUPRO integral, in (0, 1].
            weights: (n,) multiplicity per cell, >= 0, or None for all ones; pos, neg and
                pro are multiplied by it.

        Returns:
            ``PooledMetrics``; a field is NaN where it is undefined.
        """
        if not 0 < fpr_limit <= 1:
            raise ValueError(f"pooled metrics: fpr_limit={fpr_limit}, expected a value in (0, 1]")
        n = self.n
        pos, neg, pro = _vector("pos", pos, n), _vector("neg", neg, n), _vector("pro", pro, n)
        n_regions = float(n_regions)
        if not n_regions >= 0:
            raise ValueError(f"pooled metrics: n_regions={n_regions}, expected a value >= 0")
        if n == 0:
            return PooledMetrics(_NAN, _NAN, _NAN, _NAN, _NAN)
        w_sorted = self._sorted_weights(weights)
        buf = np.empty(n, dtype=np.float64)
        gn = self._group_sums(neg, w_sorted, buf)
        gp = self._group_sums(pos, w_sorted, buf)
        return group_metrics(self.values, gp, gn, lambda: self._group_sums(pro, w_sorted, buf), n_regions, fpr_limit)

    def at_threshold(self, t: float, pos: np.ndarray, neg: np.ndarray,
                     weights: np.ndarray | None = None) -> dict[str, float]:
        """Pixel confusion counts when predicting defect where score >= ``t``.

        Args:
            t: threshold (any float, not NaN).
            pos: (n,) defect pixels per cell.
            neg: (n,) normal pixels per cell.
            weights: (n,) multiplicity per cell, or None.

        Returns:
            ``{"tp", "fp", "fn", "tn"}`` as floats (weighted pixel counts).
        """
        t = float(t)
        if math.isnan(t):
            raise ValueError("at_threshold: t is NaN")
        n = self.n
        pos, neg = _vector("pos", pos, n), _vector("neg", neg, n)
        w = None if weights is None else _vector("weights", weights, n)
        # values is descending: the groups scoring >= t are those before the first value < t
        k = self.n_groups - int(np.searchsorted(self.values[::-1], t, side="left"))
        above, below = self._order[: self._bounds[k]], self._order[self._bounds[k]:]

        def total(x: np.ndarray, idx: np.ndarray) -> float:
            return float(x[idx].sum()) if w is None else float(np.dot(x[idx], w[idx]))

        return {"tp": total(pos, above), "fp": total(neg, above),
                "fn": total(pos, below), "tn": total(neg, below)}

    def threshold_at_fpr(self, neg: np.ndarray, target_fpr: float, weights: np.ndarray | None = None) -> float:
        """The lowest cell score ``t`` whose FPR (share of negatives scoring >= t) is <= ``target_fpr``.

        Args:
            neg: (n,) normal pixels per cell.
            target_fpr: the largest acceptable false-positive rate.
            weights: (n,) multiplicity per cell, or None; cells of weight 0 are absent and
                their scores are no candidates.

        Returns:
            The threshold; +inf when even the highest score exceeds the target (predict
            nothing); NaN when there is no negative pixel (FPR undefined).
        """
        target_fpr = float(target_fpr)
        if math.isnan(target_fpr):
            raise ValueError("threshold_at_fpr: target_fpr is NaN")
        n = self.n
        neg = _vector("neg", neg, n)
        if n == 0:
            return _NAN
        w_sorted = self._sorted_weights(weights)
        buf = np.empty(n, dtype=np.float64)
        fp = np.cumsum(self._group_sums(neg, w_sorted, buf))
        if fp[-1] == 0:
            return _NAN
        np.divide(fp, fp[-1], out=fp)
        # FPR grows as the threshold falls, so the groups meeting the target are a prefix
        k = int(np.searchsorted(fp, target_fpr, side="right"))
        if w_sorted is None:
            return float(self.values[k - 1]) if k else math.inf
        # a group of zero total weight holds no drawn cell, so its score is no candidate
        present = np.flatnonzero(np.add.reduceat(w_sorted, self._bounds[:-1])[:k] > 0)
        return float(self.values[present[-1]]) if present.size else math.inf


def group_metrics(values: np.ndarray, gp: np.ndarray, gn: np.ndarray, gpro, n_regions: float,
                  fpr_limit: float = 0.3) -> PooledMetrics:
    """Pooled AUROC, AUPRO, AP and best F1 from the counts of each tie group (distinct score).

    The one place the curves are read: ``SortedCells.metrics`` sums its cells into groups and
    calls it; the streamed accumulators (``metrics.pooled_stream``) merge their counts and do too.

    Args:
        values: float64, (G,) distinct scores, descending.
        gp: float64, (G,) defect pixels scoring each value.
        gn: float64, (G,) normal pixels scoring each value.
        gpro: float64, (G,) PRO weight per group (``SortedCells.metrics``' ``pro`` summed), or a
            callable returning it (computed only where AUPRO is defined).
        n_regions: total number of regions.
        fpr_limit: upper end of the AUPRO integral, in (0, 1].

    Returns:
        ``PooledMetrics``; a field is NaN where it is undefined.
    """
    if values.shape[0] == 0:
        return PooledMetrics(_NAN, _NAN, _NAN, _NAN, _NAN)
    fp = np.cumsum(gn)  # (G,) negatives scoring >= each group's value
    n_neg = float(fp[-1])
    aupro = _NAN
    if n_regions > 0 and n_neg > 0:
        aupro = _aupro(fp, gpro() if callable(gpro) else gpro, n_neg, n_regions, fpr_limit)
    tp = np.cumsum(gp)  # (G,) positives scoring >= each group's value
    n_pos = float(tp[-1])
    if n_pos == 0:
        return PooledMetrics(_NAN, aupro, _NAN, _NAN, _NAN)
    scratch = np.empty(gp.shape[0], dtype=np.float64)  # every O(G) temporary
    auroc = _NAN
    if n_neg > 0:
        # each negative beats the positives strictly above it and ties half of its own group
        np.multiply(gp, -0.5, out=scratch)
        scratch += tp
        auroc = float(np.dot(gn, scratch)) / (n_pos * n_neg)
    # AP: recall steps gp/P times precision; groups without pixels have gp = 0 and must not give 0/0
    np.add(tp, fp, out=scratch)
    scratch[scratch == 0] = 1.0
    np.divide(tp, scratch, out=scratch)
    ap = float(np.dot(gp, scratch)) / n_pos
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (TP + FP + P): equal to 2PR/(P+R), and 0 where TP = 0
    np.add(tp, fp, out=scratch)
    scratch += n_pos
    np.divide(tp, scratch, out=scratch)
    best = int(np.argmax(scratch))
    f1 = 2.0 * float(scratch[best])
    return PooledMetrics(auroc, aupro, ap, f1, float(values[best]))


def _aupro(fp: np.ndarray, gpro: np.ndarray, n_neg: float, n_regions: float, fpr_limit: float) -> float:
    """Normalised area under PRO(FPR) from FPR 0 to ``fpr_limit`` (MVTec AD, Bergmann et al.).

    Args:
        fp: (G,) cumulative negatives per tie group, descending scores; fp[-1] = n_neg > 0.
        gpro: (G,) PRO weight per tie group (not yet divided by ``n_regions``).
        n_neg: total negatives.
        n_regions: total regions, > 0.
        fpr_limit: in (0, 1].

    Returns:
        The trapezoid area of the curve (0, 0), (FPR_k, PRO_k)..., cut at ``fpr_limit`` with
        the crossing segment linearly interpolated, divided by ``fpr_limit``.
    """
    # curve points with FPR <= limit; FPR is non-decreasing, so they are a prefix: found on the counts, then
    # checked on fp / n_neg itself, so that the prefix is the one the divided values give
    k = int(np.searchsorted(fp, fpr_limit * n_neg, side="right"))
    while k < fp.shape[0] and fp[k] / n_neg <= fpr_limit:
        k += 1
    while k > 0 and fp[k - 1] / n_neg > fpr_limit:
        k -= 1
    # only the first k + 1 points matter: divide and cumulate no further
    y = np.cumsum(gpro[: k + 1]) / n_regions
    x = fp[: k + 1] / n_neg
    area = 0.0
    if k:
        dx = np.diff(x[:k], prepend=0.0)
        ysum = y[:k].copy()
        ysum[1:] += y[: k - 1]
        area = 0.5 * float(np.dot(dx, ysum))
    if k < x.shape[0]:
        # the segment from the last point inside (or the origin) to the first point beyond crosses the limit
        x0, y0 = (float(x[k - 1]), float(y[k - 1])) if k else (0.0, 0.0)
        x1, y1 = float(x[k]), float(y[k])
        y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_lim) * (fpr_limit - x0)
    return area / fpr_limit


def pooled_metrics(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray, pro: np.ndarray, n_regions: float,
                   fpr_limit: float = 0.3, weights: np.ndarray | None = None) -> PooledMetrics:
    """Pooled AUROC, AUPRO, AP and best F1 of cells; ``SortedCells(scores).metrics(...)``.

    Args:
        scores: float, (n,) one score per cell.
        pos: (n,) defect pixels per cell, >= 0.
        neg: (n,) normal pixels per cell, >= 0.
        pro: (n,) ``sum_r (pixels of region r in the cell) / |r|``, NOT divided by the
            number of regions.
        n_regions: total number of regions (already weighted by the caller when bootstrapping).
        fpr_limit: upper end of the AUPRO integral, in (0, 1].
        weights: (n,) multiplicity per cell, or None; pos, neg and pro are multiplied by it.

    Returns:
        ``PooledMetrics``.
    """
    return SortedCells(scores).metrics(pos, neg, pro, n_regions, fpr_limit, weights)


def threshold_at_fpr(scores: np.ndarray, neg: np.ndarray, target_fpr: float,
                     weights: np.ndarray | None = None) -> float:
    """The lowest cell score whose pooled FPR is <= ``target_fpr``; see ``SortedCells.threshold_at_fpr``.

    Args:
        scores: float, (n,) one score per cell.
        neg: (n,) normal pixels per cell.
        target_fpr: the largest acceptable false-positive rate.
        weights: (n,) multiplicity per cell, or None.

    Returns:
        The threshold; +inf if no cell score meets the target; NaN without negatives.
    """
    return SortedCells(scores).threshold_at_fpr(neg, target_fpr, weights)
