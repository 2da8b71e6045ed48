"""Streamed pooled metrics: each layer's cells kept as batches come, each candidate sorted once at the end.

The pooled curves (``metrics.pooled.group_metrics``) read, per distinct score of a row's cells, how many
defect pixels, normal pixels and how much PRO weight score exactly that value. A run keeps, per layer, its
images' cells as they come (``LayerCells.add``: the maps' scores and the masks' counts per cell, no sorting
in the loop); at the end each candidate's cells are sorted once (``LayerCells.sorted``, ``sort_candidate``),
and every row (a set of images, or a bootstrap draw's weights over them) reads its curves off that one order
(``row_metrics``): selecting cells keeps them sorted, and the curves change only at the cells with defect
pixels, so a row costs one running sum and a lookup per defect cell, not a sort. ``layerscope-report``'s
pass over the saved maps (``protocol._Candidate``) sorts and reads its candidates the same way.

Exact: pixel counts are integers (held in float32, exact up to 2^24 pixels per cell, summed in float64), so
their sums are exact in any order; the PRO weights are float64 sums, equal to a pass over all cells up to
their rounding where several cells with region weight tie.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .pooled import PooledMetrics

__all__ = ["LayerCells", "CandidateCells", "UniformCells", "descending_keys", "row_metrics", "sort_candidate",
           "sort_cells"]

_LOW = np.uint32(0x7FFFFFFF)


def descending_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys that sort ascending as the float32 ``values`` sort descending (-0.0 as 0.0).

    A float's bits sort like the float for non-negative values and in reverse for negative ones; the
    non-negative ones are inverted (highest first) below the negative ones, kept as they are (lowest last).
    ``_flip(keys).view(np.float32)`` gives the values back.
    """
    bits = (np.asarray(values, dtype=np.float32) + np.float32(0.0)).view(np.uint32)  # + 0.0: -0.0 becomes 0.0
    return _flip(bits)


def _flip(bits: np.ndarray) -> np.ndarray:
    """uint32 -> uint32: the non-negative floats' bits inverted, the negative ones' kept (its own inverse).

    As integer steps on one buffer: the sign bit, less one, is all ones for a non-negative float and zero for a
    negative one; its low 31 bits, xor-ed in, invert exactly the former (10x ``np.where``'s speed).
    """
    mask = bits >> np.uint32(31)
    mask -= np.uint32(1)
    mask &= _LOW
    mask ^= bits
    return mask


def sort_cells(values: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cells sorted from the highest score down, ties in their order.

    On the CPU each score's key and its position are packed into one 64-bit integer and sorted by value:
    NumPy's sort of plain integers is many times faster than an argsort (55 ms for 3 million cells on one
    core, against 340 ms for a stable argsort of the keys). On a GPU, ``torch.sort`` (stable) there: the same
    order.

    Args:
        values: float32, (N,), no NaN, N < 2^32.

    Returns:
        keys: uint32, (N,) the sorted scores' ``descending_keys`` (equal keys: equal scores).
        order: int64, (N,) each sorted cell's position.
    """
    if isinstance(values, torch.Tensor):
        if values.device.type != "cpu":
            ranked, order = torch.sort(values.float(), descending=True, stable=True)
            return descending_keys(ranked.cpu().numpy()), order.cpu().numpy()
        values = values.numpy()
    n = values.shape[0]
    if n >= 2 ** 32:
        raise ValueError(f"sort_cells: {n} cells, at most 2^32 - 1 can be sorted at once")
    return _packed_sort(descending_keys(values))


def _packed_sort(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint32 ``keys`` (fewer than 2^32) ascending, and the order that sorts them with ties in their order
    (``np.argsort(keys, kind="stable")``): each key and its index packed into one 64-bit integer and sorted as
    plain integers, many times faster than a stable argsort."""
    packed = keys.astype(np.uint64)
    packed <<= np.uint64(32)
    packed |= np.arange(keys.shape[0], dtype=np.uint64)
    packed.sort()
    order = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
    packed >>= np.uint64(32)
    return packed.astype(np.uint32), order


@dataclass
class CandidateCells:
    """One candidate's cells in score order (``sort_candidate``): what its rows read.

    Attributes:
        keys: uint32, (N,) ``descending_keys`` of the scores, ascending (equal keys: one score).
        order: int64, (N,) each sorted cell's position in storage order.
        defect: float32, (N,) each sorted cell's defect pixels.
        normal: float64, (N,) each sorted cell's normal pixels.
        pro: float64, (N,) each cell's PRO weight, in storage order.
        images: int, (N,) each cell's image (index into the image table), in storage order.
        present: the images that have cells.
    """

    keys: np.ndarray
    order: np.ndarray
    defect: np.ndarray
    normal: np.ndarray
    pro: np.ndarray
    images: np.ndarray
    present: np.ndarray

    @functools.cached_property
    def image(self) -> np.ndarray:
        """intp, (N,) each sorted cell's image: an index every row gathers its images' weights with (NumPy converts
        any other index type to intp first, on every gather)."""
        return np.take(self.images, self.order).astype(np.intp, copy=False)

    @functools.cached_property
    def positive(self) -> np.ndarray:
        """int64, (P,) the sorted positions of the cells holding defect pixels, ascending (the only cells with
        PRO weight too: a region's pixels are defect pixels)."""
        return np.flatnonzero(self.defect > 0)

    @functools.cached_property
    def negatives(self) -> np.ndarray:
        """float64, (N,) normal pixels of the sorted cells, cumulated (exact: integers)."""
        return np.cumsum(self.normal)


def sort_candidate(scores: torch.Tensor | np.ndarray, pixels: np.ndarray, pro: np.ndarray, images: np.ndarray,
                   present: np.ndarray) -> CandidateCells:
    """A candidate's cells sorted from its highest score down, with their counts in that order.

    Args:
        scores: float32, (N,) the map's score per cell (no NaN; on any device).
        pixels: float32, (N, 2) defect and normal pixels per cell.
        pro: float64, (N,) PRO weight per cell.
        images: int, (N,) each cell's image.
        present: the images that have cells.
    """
    keys, order = sort_cells(scores)
    # the two float32 counts of a cell moved as one 64-bit word: one gather instead of two
    packed = np.ascontiguousarray(pixels, dtype=np.float32).reshape(-1).view(np.uint64)
    moved = np.take(packed, order).view(np.float32).reshape(-1, 2)
    return CandidateCells(keys, order, moved[:, 0], moved[:, 1].astype(np.float64), pro, images, present)


@dataclass
class LayerCells:
    """One layer's cells over a run's images: every candidate map's scores and the masks' counts per cell.

    Attributes:
        cells: cells per image (the layer's grid, or the mask's pixels for bilinear maps).
        scores: per batch, float32 (B, K, cells): the K maps of each image.
        images: per batch, int64 (B,) each image's index in the stream's image table.
        pixels: per batch, float32 (B, cells, 2) defect and normal pixels per cell.
        pro: per batch, float64 (B, cells) PRO weight per cell (``sum_r |r ∩ cell| / |r|``).
    """

    cells: int
    scores: list[np.ndarray] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    pixels: list[np.ndarray] = field(default_factory=list)
    pro: list[np.ndarray] = field(default_factory=list)
    _cell_images: np.ndarray | None = field(default=None, init=False, repr=False)  # (R cells,) each cell's image
    _defects: tuple | None = field(default=None, init=False, repr=False)  # ``_uniform_defects`` of the joined cells

    def add(self, scores: torch.Tensor, images: np.ndarray, pixels: torch.Tensor, pro: torch.Tensor) -> int:
        """Keep a batch's cells; returns the bytes now held for them.

        Args:
            scores: (B, K, cells) the maps (any device; a GPU's stay there until ``sorted``).
            images: (B,) the images' indices in the stream's image table.
            pixels: (B, cells, 2) defect and normal pixels per cell.
            pro: (B, cells) PRO weight per cell.
        """
        if scores.shape[-1] != self.cells or pixels.shape[1:] != (self.cells, 2):
            raise ValueError(f"LayerCells.add: expected {self.cells} cells per image, got scores "
                             f"{tuple(scores.shape)} and pixels {tuple(pixels.shape)}")
        held = scores.float()
        self.scores.append(held.numpy().copy() if held.device.type == "cpu" else held.clone())
        self.images.append(np.asarray(images, dtype=np.int64))
        self.pixels.append(pixels.float().cpu().numpy())
        self.pro.append(pro.double().cpu().numpy())
        self._cell_images = None
        return int(scores.shape[0]) * self.cells * (4 * int(scores.shape[1]) + 16)

    def __len__(self) -> int:
        return sum(len(i) for i in self.images)

    def join(self) -> None:
        """Each list's batches as one array (once the batches are in: what ``sorted`` reads; call it before
        sorting from several threads)."""
        for name in ("scores", "images", "pixels", "pro"):
            parts = getattr(self, name)
            if len(parts) > 1:
                joined = torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)
                setattr(self, name, [joined])
        if self._cell_images is None:
            self._cell_images = np.repeat(self.images[0].astype(np.int32), self.cells)
            self._defects = _uniform_defects(self.scores[0], self.pixels[0], self.pro[0])

    def sorted(self, k: int) -> CandidateCells:
        """Map ``k``'s cells over every stored image, sorted from its highest score down."""
        self.join()  # a layer's cells start with its first batch: there is always one
        return sort_candidate(self.scores[0][:, k].reshape(-1), self.pixels[0].reshape(-1, 2),
                              self.pro[0].reshape(-1), self._cell_images, self.images[0])

    def uniform(self, k: int) -> "UniformCells | None":
        """Map ``k``'s cells read without sorting their positions, where every cell counts the same pixels and the
        scores are on the CPU (``UniformCells``); None elsewhere (ignored pixels, a GPU's maps): ``sorted``."""
        self.join()
        if self._defects is None:
            return None
        size, at, defect, pro = self._defects
        return UniformCells(descending_keys(self.scores[0][:, k]), self.images[0], size, at, defect, pro)


def _uniform_defects(scores: np.ndarray | torch.Tensor, pixels: np.ndarray, pro: np.ndarray) -> tuple | None:
    """(pixels per cell, storage positions of the cells holding defect pixels, their defect pixels, their PRO
    weights) where every cell counts the same pixels (defect + normal) and the scores are NumPy's; else None."""
    if isinstance(scores, torch.Tensor) or not pixels.size:
        return None
    counted = pixels[..., 0] + pixels[..., 1]  # float32: exact up to 2^24 pixels a cell (a sum over the last
    # axis of two would be several times slower)
    size = float(counted.flat[0])
    if not bool((counted == counted.flat[0]).all()):
        return None
    defect = pixels[..., 0].reshape(-1)
    at = np.flatnonzero(defect > 0)
    return size, at, defect[at], pro.reshape(-1)[at]


@dataclass
class UniformCells:
    """One candidate's cells where every cell counts the same pixels: each row's metrics from its sorted scores
    alone (``row_metrics``' values exactly, without sorting the cells' positions).

    With ``s`` pixels a cell, a row's normal pixels at or above a score are ``s`` times its cells there less its
    defect pixels there: both counts are read off the sorted scores (a binary search) and the few cells with
    defect pixels, which are sorted by score (ties in storage order, as ``sort_candidate`` orders them). A row
    then sorts its scores (a plain ``np.sort``: no positions, no gathers, no running sum over its cells).

    Attributes:
        keys: uint32, (n, cells) ``descending_keys`` of the scores of the n stored images, in storage order.
        images: int, (n,) each stored image's index in the image table.
        size: pixels per cell.
        defect_at: int, (P,) storage positions (image row x cells + cell) of the cells holding defect pixels.
        defect: float32, (P,) their defect pixels.
        pro: float64, (P,) their PRO weights.
    """

    keys: np.ndarray
    images: np.ndarray
    size: float
    defect_at: np.ndarray
    defect: np.ndarray
    pro: np.ndarray

    @functools.cached_property
    def all_sorted(self) -> np.ndarray:
        """Every stored cell's key, ascending."""
        return np.sort(self.keys, axis=None)

    def metrics(self, chosen: np.ndarray | None, n_regions: float, fpr_limit: float = 0.3) -> PooledMetrics:
        """``row_metrics`` of the images ``chosen`` (bool over the image table; None: every image).

        Args:
            chosen: (n_images,) bool.
            n_regions: the chosen images' regions.
            fpr_limit: upper end of the AUPRO integral, in (0, 1].
        """
        rows = np.ones(self.images.shape[0], bool) if chosen is None else np.take(chosen, self.images)
        keys = self.all_sorted if rows.all() else np.sort(self.keys[rows], axis=None)
        mine = np.take(rows, self.defect_at // self.keys.shape[1])
        at = self.defect_at[mine]
        cell_keys, order = _packed_sort(np.take(self.keys, at))  # by score, ties in storage order (``at`` ascends)
        starts, group_keys = _groups(cell_keys)
        defect = self.defect[mine][order].astype(np.float64)
        gp = np.add.reduceat(defect, starts) if starts.size else np.zeros(0)
        first = np.searchsorted(keys, group_keys, "left")
        last = first.copy()  # a score's last cell: its first one, unless the next cell ties with it
        tied = np.flatnonzero(np.take(keys, np.minimum(first + 1, keys.shape[0] - 1)) == group_keys)
        tied = tied[first[tied] + 1 < keys.shape[0]]
        last[tied] = np.searchsorted(keys, group_keys[tied], "right") - 1
        tp = np.cumsum(gp)
        n_pos = float(tp[-1]) if tp.shape[0] else 0.0
        n_neg = self.size * keys.shape[0] - n_pos
        fp = self.size * (last + 1) - tp  # integers: exact, as the running sum of every cell's normal pixels
        above = self.size * first - (tp - gp)

        def gpro() -> np.ndarray:
            return np.add.reduceat(self.pro[mine][order], starts) if starts.size else np.zeros(0)

        return _curves(group_keys, gp, fp, above, first, n_neg, n_regions, fpr_limit, gpro,
                       lambda: _crossing_uniform(keys, self.size, first, last, tp, n_neg, fpr_limit))


def _crossing_uniform(keys: np.ndarray, size: float, first: np.ndarray, last: np.ndarray, tp: np.ndarray,
                      n_neg: float, fpr_limit: float) -> tuple[int, float, float]:
    """``_crossing`` of a row of cells of ``size`` pixels each, from its sorted ``keys`` and its scores holding
    defect pixels (their ``first`` and ``last`` cells, ``tp`` the defect pixels cumulated).

    Along the cells, the normal pixels so far are known at each such score's last cell, and grow by ``size`` a
    cell between two of them (a stretch). They never fall, so the first such score past the limit, ``j``, bounds
    the crossing: it lies in the stretch before ``j`` (found by arithmetic, checked on the same division), or
    at ``j``.
    """
    n = keys.shape[0]
    at_last = size * (last + 1) - tp  # normal pixels up to each such score's last cell
    passed = at_last / n_neg > fpr_limit
    j = int(np.argmax(passed)) if passed.any() else last.shape[0]
    before = float(tp[j - 1]) if j else 0.0  # defect pixels above stretch j
    lo = int(last[j - 1]) + 1 if j else 0  # its first cell
    hi = int(first[j]) if j < last.shape[0] else n  # its end: defect score j's first cell
    if lo < hi:
        guess = int((fpr_limit * n_neg + before) // size)  # the first cell past the limit, to rounding
        start = max(lo, guess - 2)  # the stretch's first cell where it starts past the limit
        past = [c for c in range(start, min(hi, max(start, guess + 2) + 1))
                if (size * (c + 1) - before) / n_neg > fpr_limit]
        if past:  # a score of the stretch: its cells
            c = past[0]
            cross_first = int(np.searchsorted(keys, keys[c], "left"))
            end = int(np.searchsorted(keys, keys[c], "right")) - 1
            x_a = (size * cross_first - before) / n_neg if cross_first else 0.0
            return cross_first, float(x_a), float((size * (end + 1) - before) / n_neg)
    if j == last.shape[0]:
        return -1, float(n_neg) / n_neg, float("nan")
    cross_first = int(first[j])
    x_a = (size * cross_first - before) / n_neg if cross_first else 0.0
    return cross_first, float(x_a), float(at_last[j] / n_neg)


def row_metrics(cells: CandidateCells, weights: np.ndarray | None, n_regions: float,
                fpr_limit: float = 0.3) -> PooledMetrics:
    """Pooled AUROC, AUPRO, AP and best F1 of a candidate's cells over some images, each image weighted (a row of
    ``dataset_metrics``, a bootstrap draw of one).

    The values of ``metrics.pooled.group_metrics`` over the distinct scores of the weighted cells, read from the
    cells that hold defect pixels: every curve changes only where one of them is (the true positives, the PRO
    weight), and between two of them only the normal pixels add up, whose running sum is one cumulative sum
    over the cells. So a row costs that sum and a lookup per defect cell, not a pass per distinct score. The
    terms are the same; sums of them group otherwise (last-bit differences).

    Args:
        cells: a candidate's sorted cells (``sort_candidate``).
        weights: (n_images,) each image's weight: bool (in the row or not) or a multiplicity (a bootstrap
            draw's count); None: every image once.
        n_regions: the weighted regions.
        fpr_limit: upper end of the AUPRO integral, in (0, 1].

    Returns:
        ``PooledMetrics``; a field is NaN where it is undefined (as ``group_metrics``).
    """
    # keys and cumulated normal pixels of the row's cells (sorted); its defect cells' positions there, their
    # sorted positions among all cells (``at``), their weights (None: 1) and weighted defect pixels
    if weights is None or bool((weights[cells.present] == 1).all()):
        keys, negatives, positive = cells.keys, cells.negatives, cells.positive
        at, scale = positive, None
    else:
        w = np.take(weights, cells.image)
        binary = weights.dtype == bool or bool(np.isin(weights[cells.present], (0, 1)).all())
        if 2 * np.count_nonzero(weights[cells.present]) > cells.present.shape[0]:
            # most images weigh (a bootstrap draw): every cell, a weightless one adding nothing
            keys = cells.keys
            positive = cells.positive[w[cells.positive] != 0]
            negatives = np.multiply(cells.normal, w, dtype=np.float64)
            np.cumsum(negatives, out=negatives)
            at = positive
        else:  # few images (a defect type's row): their cells alone, still sorted
            chosen = np.flatnonzero(w)
            keys = cells.keys[chosen]
            normal = cells.normal[chosen]
            negatives = np.cumsum(normal if binary else normal * w[chosen])
            positive = np.flatnonzero(cells.defect[chosen] > 0)
            at = chosen[positive]
        scale = None if binary else w[at].astype(np.float64)
    defect = cells.defect[at].astype(np.float64)
    if scale is not None:
        defect *= scale
    n_neg = float(negatives[-1]) if negatives.shape[0] else 0.0
    # the row's distinct scores that hold defect pixels, with their counts
    starts, group_keys = _groups(keys[positive])
    gp = np.add.reduceat(defect, starts) if starts.size else np.zeros(0)
    first = np.searchsorted(keys, group_keys, "left")  # each such score's cells in the row
    last = np.searchsorted(keys, group_keys, "right") - 1
    fp = negatives[last] if last.size else np.zeros(0)  # normal pixels scoring >= each such score
    above = np.where(first > 0, negatives[np.maximum(first - 1, 0)], 0.0) if first.size else np.zeros(0)

    def gpro() -> np.ndarray:
        pro = cells.pro[cells.order[at]]
        return np.add.reduceat(pro * scale if scale is not None else pro, starts) if starts.size else np.zeros(0)

    return _curves(group_keys, gp, fp, above, first, n_neg, n_regions, fpr_limit, gpro,
                   lambda: _crossing(keys, negatives, n_neg, fpr_limit))


def _groups(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The runs of equal values of ascending ``sorted_keys``: each run's first index, and its key."""
    start = np.ones(sorted_keys.shape[0], dtype=bool)
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=start[1:])
    starts = np.flatnonzero(start)
    return starts, sorted_keys[starts]


def _curves(group_keys: np.ndarray, gp: np.ndarray, fp: np.ndarray, above: np.ndarray, first: np.ndarray,
            n_neg: float, n_regions: float, fpr_limit: float, gpro: Callable[[], np.ndarray],
            crossing: Callable[[], tuple[int, float, float]]) -> PooledMetrics:
    """The pooled metrics from the row's distinct scores that hold defect pixels (``row_metrics``).

    Args:
        group_keys: (G,) those scores' keys, ascending (scores descending).
        gp: (G,) float64 defect pixels at each; ``fp``, ``above``: normal pixels scoring at or above, and above,
            each; ``first``: each one's first cell among the row's sorted cells.
        n_neg: the row's normal pixels.
        gpro: () -> (G,) PRO weight at each (asked for only where AUPRO is defined).
        crossing: () -> ``_crossing``'s (cross_first, x_a, x_b).
    """
    nan = float("nan")
    aupro = nan
    if n_regions > 0 and n_neg > 0:
        aupro = _aupro(n_neg, fp, above, np.cumsum(gpro()) / n_regions, first, fpr_limit, *crossing())
    tp = np.cumsum(gp)
    n_pos = float(tp[-1]) if tp.shape[0] else 0.0
    if n_pos == 0:
        return PooledMetrics(nan, aupro, nan, nan, nan)
    auroc = nan
    if n_neg > 0:
        # each defect pixel beats the normal pixels below its score and ties half of those at it
        auroc = float(np.dot(gp, (n_neg - fp) + 0.5 * (fp - above))) / (n_pos * n_neg)
    ap = float(np.dot(gp, tp / (tp + fp))) / n_pos  # tp > 0 at every such score
    f1 = tp / ((tp + fp) + n_pos)  # 2TP / (2TP + FP + FN) over 2; elsewhere TP stays and FP grows: no higher
    best = int(np.argmax(f1))
    threshold = float(_flip(group_keys[best:best + 1]).view(np.float32)[0])
    return PooledMetrics(auroc, aupro, ap, 2.0 * float(f1[best]), threshold)


def _crossing(keys: np.ndarray, negatives: np.ndarray, n_neg: float, fpr_limit: float) -> tuple[int, float, float]:
    """Where the row's FPR first passes ``fpr_limit``, along its sorted cells (``keys``; ``negatives``: the normal
    pixels cumulated): the first cell of that cell's score (-1: FPR never passes it), the FPR of the scores above
    that one, and the FPR at that score (NaN where none)."""
    # the first cell past the limit: its score is the first point with FPR > limit (checked on the division)
    c = int(np.searchsorted(negatives, fpr_limit * n_neg, side="right"))
    while c < negatives.shape[0] and negatives[c] / n_neg <= fpr_limit:
        c += 1
    while c > 0 and negatives[c - 1] / n_neg > fpr_limit:
        c -= 1
    if c == negatives.shape[0]:
        return -1, float(negatives[-1]) / n_neg, float("nan")
    cross_first = int(np.searchsorted(keys, keys[c], "left"))
    x_a = float(negatives[cross_first - 1]) / n_neg if cross_first else 0.0  # the last point inside
    x_b = float(negatives[int(np.searchsorted(keys, keys[c], "right")) - 1]) / n_neg
    return cross_first, x_a, x_b


def _aupro(n_neg: float, fp: np.ndarray, above: np.ndarray, y: np.ndarray, first: np.ndarray, fpr_limit: float,
           cross_first: int, x_a: float, x_b: float) -> float:
    """Normalised area under PRO(FPR) up to ``fpr_limit``, as ``metrics.pooled._aupro``.

    The curve's points are the row's distinct scores; PRO changes only at the scores holding defect pixels
    (``fp``, ``above``: the normal pixels at or above and strictly above each; ``y`` its PRO there;
    ``first``: its first cell in the row's sorted cells). Between two of them the curve is flat, so the
    trapezoids between them add up to one rectangle. ``cross_first``, ``x_a``, ``x_b``: ``_crossing``'s.
    """
    if cross_first >= 0:
        inside = int(np.searchsorted(first, cross_first, "left"))  # defect scores before the crossing one
    else:
        inside = fp.shape[0]
    x, x_before = fp[:inside] / n_neg, above[:inside] / n_neg
    area = 0.0
    if inside:
        y_in = y[:inside]
        y_prev = np.concatenate([[0.0], y_in[:-1]])
        x_next = np.concatenate([x_before[1:], [x_a]])
        area = 0.5 * float(np.dot(x - x_before, y_prev + y_in) + np.dot(2.0 * y_in, x_next - x))
    if cross_first >= 0:
        y_a = float(y[inside - 1]) if inside else 0.0
        y_b = float(y[inside]) if inside < first.shape[0] and first[inside] == cross_first else y_a
        y_lim = y_a + (y_b - y_a) * (fpr_limit - x_a) / (x_b - x_a)
        area += 0.5 * (y_a + y_lim) * (fpr_limit - x_a)
    return area / fpr_limit
