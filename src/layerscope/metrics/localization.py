"""Localisation metrics computed on "cells" that carry pixel counts.

A cell is a grid position of a map. With nearest upsampling every image pixel copies one
cell, so a metric over pixels equals the same metric over cells weighted by how many
positive and negative pixels each cell covers. Scoring on cells is exact and costs
O(h w) instead of O(H W). Passing one cell per pixel (counts 0/1) gives the plain pixel
metric, which is how bilinear maps are scored.

Shapes: ``scores`` (..., n) with n cells; ``pos``, ``neg`` (n,) counts of positive and
negative pixels per cell (ignored pixels in neither); ``regions`` (n, R) pixels of each
of the R connected ground-truth regions per cell.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from ..runtime import serial
from .bools import any_true
from .rank_groups import group_sums, rank_rows


@dataclass
class Cells:
    """Pixel counts per cell of one image's ground truth at one grid size."""

    pos: torch.Tensor  # (n,) float64
    neg: torch.Tensor  # (n,) float64
    regions: torch.Tensor  # (n, R) float64, pixels of each connected region

    @cached_property
    def n_pos(self) -> float:
        return float(self.pos.sum())  # cached: every map and row of an image asks

    @cached_property
    def n_neg(self) -> float:
        return float(self.neg.sum())


@serial
def cells_from_mask(mask: torch.Tensor, grid: tuple[int, int], valid: torch.Tensor | None = None) -> Cells:
    """Count, for each cell of ``grid``, the mask pixels that nearest upsampling maps onto it.

    Args:
        mask: bool (H, W) ground truth.
        grid: (h, w) of the maps; (H, W) itself gives one cell per pixel.
        valid: bool (H, W), False for ignored pixels (VOC's 255 border), or None.

    Returns:
        ``Cells`` with connected regions labelled with 8-connectivity.
    """
    from skimage.measure import label

    h, w = grid
    H, W = mask.shape
    # nearest upsampling picks a source row per output row and a source column per output column, so the
    # cell of pixel (i, j) is rows[i] * w + cols[j]: pixel counts are block sums along each axis, no (H W) index map
    rows = _nearest_index(h, H)
    cols = _nearest_index(w, W)
    m = mask.bool()
    v = valid.bool() if valid is not None else None
    inside = m & v if v is not None else m

    def per_cell(pixels: torch.Tensor) -> torch.Tensor:
        return _block_sums(_block_sums(pixels.long(), rows, h, 0), cols, w, 1).flatten().double()

    pos = per_cell(inside)
    neg = per_cell(~m & v if v is not None else ~m)
    labels = torch.from_numpy(label(inside.numpy(), connectivity=2))
    n_regions = int(labels.max())
    regions = torch.zeros(h * w, n_regions, dtype=torch.float64)
    if n_regions:
        i, j = torch.nonzero(labels, as_tuple=True)  # region pixels only (few, for defects)
        slot = (rows[i] * w + cols[j]) * n_regions + labels[i, j].long() - 1
        regions = torch.bincount(slot, minlength=h * w * n_regions).view(h * w, n_regions).double()
    return Cells(pos, neg, regions)


class MaskCells:
    """One ground truth's ``Cells`` at any grid: ``cells_from_mask``'s counts, with the image-sized work done once.

    The mask's pixels and their connected regions are found once; each grid then costs one pass over the mask
    pixels (a cell's mask pixels and each region's are counts of the pixels that fall in it) and, with ignored
    pixels, O(h w) lookups in the valid pixels' 2-D cumulative sums (a cell's pixels are a rectangle of the
    image, so its count is four corners of the sums). The counts are integers, so they equal
    ``cells_from_mask``'s.

    Args:
        mask: bool (H, W) ground truth.
        valid: bool (H, W), False for ignored pixels, or None.
    """

    def __init__(self, mask: torch.Tensor, valid: torch.Tensor | None = None):
        from skimage.measure import label

        m = mask.bool()
        v = valid.bool() if valid is not None else None
        inside = m & v if v is not None else m
        self.shape = tuple(m.shape)
        # background = counted pixels - mask pixels: the counted ones are every pixel (a cell's area), or the valid
        # ones (their integral image)
        self._valid_sums = None if v is None else \
            F.pad(v.to(torch.int32).cumsum(0, dtype=torch.int32).cumsum(1, dtype=torch.int32), (1, 0, 1, 0))
        self._i, self._j = torch.nonzero(inside, as_tuple=True)  # mask pixels only (few, for defects), raster order
        self.pixels = self._i.numel()  # the mask pixels counted (valid ones)
        self._n_regions, self._region = 0, torch.zeros(0, dtype=torch.long)  # each mask pixel's region
        if self._i.numel():
            # labelled within the mask's bounding box: the same pixels in the same raster order, so the same labels
            top, left = int(self._i[0]), int(self._j.min())
            box = inside[top:int(self._i[-1]) + 1, left:int(self._j.max()) + 1]
            labels = torch.from_numpy(label(box.numpy(), connectivity=2))
            self._region = labels[self._i - top, self._j - left].long() - 1
            self._n_regions = int(labels.max())

    def at(self, grid: tuple[int, int]) -> Cells:
        """The counts for maps of ``grid`` (h, w), as ``cells_from_mask(mask, grid, valid)``."""
        h, w = grid
        big_h, big_w = self.shape
        rows, r = _cell_runs(h, big_h)
        cols, c = _cell_runs(w, big_w)
        if self._valid_sums is None:
            counted = (torch.diff(r)[:, None] * torch.diff(c)[None, :]).flatten()
        else:
            corner = self._valid_sums[r][:, c]  # (h + 1, w + 1)
            counted = (corner[1:, 1:] - corner[:-1, 1:] - corner[1:, :-1] + corner[:-1, :-1]).flatten()
        cell = rows[self._i] * w + cols[self._j]
        inside = torch.bincount(cell, minlength=h * w)
        regions = torch.bincount(cell * self._n_regions + self._region, minlength=h * w * self._n_regions) \
            .view(h * w, self._n_regions).double()
        return Cells(inside.double(), (counted - inside).double(), regions)


@functools.lru_cache(maxsize=64)
def _cell_runs(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(size,) each pixel's cell (``_nearest_index``) and (n + 1,) each cell's first pixel, and the end."""
    index = _nearest_index(n, size)
    return index, torch.searchsorted(index, torch.arange(n + 1))


def _block_sums(x: torch.Tensor, index: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """Sum ``x`` along ``dim`` over the runs of the non-decreasing ``index`` (n blocks, empty ones 0).

    Differences of one cumulative sum at the block bounds: exact for integer counts.
    """
    bounds = torch.searchsorted(index, torch.arange(n + 1))  # where each block starts, and the end
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    total = torch.cat([zero, torch.cumsum(x, dim)], dim)
    return total.index_select(dim, bounds[1:]) - total.index_select(dim, bounds[:-1])


def _nearest_index(n: int, size: int) -> torch.Tensor:
    """(size,) long, non-decreasing: the source index ``F.interpolate(mode="nearest")`` reads per output position."""
    if n == size:
        return torch.arange(n)
    src = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1)
    return F.interpolate(src, size=(size, 1), mode="nearest").long().flatten()


def _nan(lead: torch.Size) -> torch.Tensor:
    return torch.full(tuple(lead), float("nan"))


def iou_counts(kept: torch.Tensor, cells: Cells) -> torch.Tensor:
    """IoU of kept cells with the mask: |kept & mask| / |kept | mask| in pixels.

    Args:
        kept: bool (..., n).

    Returns:
        (...,); NaN where both the prediction and the mask are empty.
    """
    k = kept.double()
    inter = (k * cells.pos).sum(-1)
    union = (k * cells.neg).sum(-1) + cells.n_pos
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.full_like(union, float("nan"))).float()


def iou_from_kept_counts(inter: torch.Tensor, kept_neg: torch.Tensor, n_pos: float) -> torch.Tensor:
    """``iou_counts`` from the mask and background pixels a prediction keeps (any shape), float32."""
    union = kept_neg + n_pos
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.full_like(union, float("nan"))).float()


def iou_oracle_from_groups(gp: torch.Tensor, gn: torch.Tensor, n_pos: float) -> torch.Tensor:
    """The oracle IoU from tie-group pixel counts in ascending score order.

    A threshold keeps every group from the highest down to some group ``g``: the kept mask and
    background pixels are the suffix sums of ``gp`` and ``gn`` from ``g``.

    Args:
        gp, gn: (R, G) mask and background pixels per tie group (trailing zero groups allowed).
        n_pos: mask pixels, > 0.

    Returns:
        (R,) float64.
    """
    inter = torch.flip(torch.cumsum(torch.flip(gp, [-1]), -1), [-1])
    kept_neg = torch.flip(torch.cumsum(torch.flip(gn, [-1]), -1), [-1])
    return (inter / (n_pos + kept_neg)).amax(-1)


def iou_oracle_from_cumsums(gp: torch.Tensor, gn: torch.Tensor, cumsums: torch.Tensor,
                            n_pos: torch.Tensor) -> torch.Tensor:
    """``iou_oracle_from_groups`` from the groups' running sums: what a threshold keeps from a group up is the
    total less what lies below the group, the same integers as the suffix sums (pixel counts: exact).

    Args:
        gp, gn: (R, G) mask and background pixels per tie group (zero groups allowed anywhere).
        cumsums: (2, R, G) ``torch.cumsum`` of ``gp`` and ``gn`` along the groups.
        n_pos: (R, 1) mask pixels, > 0.

    Returns:
        (R,) float64.
    """
    # in place where an operand is a fresh tensor: the same operations (a sum commutes), fewer (R, G) buffers
    inter = cumsums[0, :, -1:] - cumsums[0]
    inter += gp
    kept_neg = cumsums[1, :, -1:] - cumsums[1]
    kept_neg += gn
    kept_neg += n_pos
    return inter.div_(kept_neg).amax(-1)


def aupro_from_groups(g_pro: torch.Tensor, g_fpr: torch.Tensor, fpr_limit: float) -> torch.Tensor:
    """Normalised area under PRO(FPR) up to ``fpr_limit`` from tie-group weights in ascending score order.

    The curve starts at (0, 0) and adds one tie group at a time from the highest score; it is
    linear between those points and interpolated at the limit (a vectorised trapezoid).

    Args:
        g_pro, g_fpr: (R, G) each group's share of PRO and of FPR (trailing zero groups allowed).
        fpr_limit: in (0, 1].

    Returns:
        (R,) float64.
    """
    return aupro_segments(g_pro, g_fpr, fpr_limit)[0].sum(-1) / fpr_limit


def aupro_segments(g_pro: torch.Tensor, g_fpr: torch.Tensor, fpr_limit: float) -> tuple[torch.Tensor, int]:
    """The area each segment of the PRO(FPR) curve adds below ``fpr_limit`` (``aupro_from_groups`` sums them).

    Args:
        g_pro, g_fpr: (R, G) each group's share of PRO and of FPR, ascending score order (zero groups allowed
            anywhere: they add zero-width segments).
        fpr_limit: in (0, 1].

    Returns:
        (area, m): (R, G) float64, entry ``[r, s]`` the segment that adds group ``G - 1 - s`` (from the
        highest); every segment from ``m`` on adds nothing.
    """
    rows, n = g_fpr.shape

    def curve(g: torch.Tensor) -> torch.Tensor:
        """0, then the running sums of ``g`` from its last group down: (R, G + 1), summed into place."""
        points = g.new_zeros(rows, g.shape[1] + 1)
        torch.cumsum(torch.flip(g, [-1]), -1, out=points[:, 1:])
        return points

    # from the highest group down; the trailing zero groups come first and add zero-width segments at (0, 0)
    fpr = curve(g_fpr)
    # a segment that starts at or past the limit adds nothing: only those before the last one that starts below
    # it in some row are computed (FPR rises fast: about the limit's share of the groups)
    below = any_true(fpr[:, :-1] < fpr_limit, 0)
    m = int(torch.nonzero(below).max()) + 1 if bool(below.any()) else 0
    pro = curve(g_pro[:, n - m:])  # the first m + 1 points
    x0, x1, y0, y1 = fpr[:, :m], fpr[:, 1:m + 1].clone(), pro[:, :-1], pro[:, 1:].clone()
    # the segment that crosses the limit ends there, interpolated (x1 > limit > x0: never 0 / 0); one a row at
    # most, so only those are rewritten (a segment that starts past the limit adds nothing, whatever its ends)
    row, col = torch.nonzero((x1 > fpr_limit) & (x0 < fpr_limit), as_tuple=True)
    a0, a1, b0, b1 = x0[row, col], x1[row, col], y0[row, col], y1[row, col]
    y1[row, col] = b0 + (b1 - b0) * (fpr_limit - a0) / (a1 - a0)
    x1[row, col] = fpr_limit
    area = torch.zeros_like(g_fpr)
    area[:, :m] = torch.where(x0 < fpr_limit, (x1 - x0) * (y0 + y1) / 2, torch.zeros_like(x0))
    return area, m


def pro_fpr_weights(cells: Cells) -> tuple[torch.Tensor, torch.Tensor]:
    """Each cell's share of PRO (mean over regions of the region's share) and of FPR, (n,) each."""
    n_regions = cells.regions.shape[1]
    pro = (cells.regions / cells.regions.sum(0, keepdim=True)).sum(1) / n_regions
    return pro, cells.neg / cells.n_neg


def iou_oracle_counts(scores: torch.Tensor, cells: Cells) -> torch.Tensor:
    """The best IoU any threshold on ``scores`` can reach (the oracle threshold), (...,).

    Cells are added from the highest score down, a tie group at a time; NaN without mask pixels.
    """
    lead, n = scores.shape[:-1], scores.shape[-1]
    if cells.n_pos == 0:
        return _nan(lead)
    g = group_sums(rank_rows(scores.reshape(-1, n).double()), torch.stack([cells.pos, cells.neg], 1))
    return iou_oracle_from_groups(g[..., 0], g[..., 1], cells.n_pos).float().reshape(lead)


def aupro_counts(scores: torch.Tensor, cells: Cells, fpr_limit: float = 0.3) -> torch.Tensor:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by the limit.

    As in the MVTec AD evaluation (Bergmann et al.): for each threshold, PRO is the mean
    over connected ground-truth regions of the share of the region predicted anomalous,
    and FPR the share of negative pixels predicted anomalous; the PRO(FPR) curve, linear
    between thresholds, is integrated from 0 to ``fpr_limit`` and normalised to [0, 1].

    Returns:
        (...,); NaN without regions or without negative pixels.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"aupro fpr_limit={fpr_limit}: expected a value in (0, 1]")
    lead, n = scores.shape[:-1], scores.shape[-1]
    if cells.regions.shape[1] == 0 or cells.n_neg == 0:
        return _nan(lead)
    g = group_sums(rank_rows(scores.reshape(-1, n).double()), torch.stack(pro_fpr_weights(cells), 1))
    return aupro_from_groups(g[..., 0], g[..., 1], fpr_limit).float().reshape(lead)


def mass_in_mask_counts(scores: torch.Tensor, cells: Cells) -> torch.Tensor:
    """Share of the map's mass on mask pixels, (...,); maps with negative values are shifted to start at 0.

    Its chance level is the mask's area share (see ``mass_ratio``). NaN for a map with no mass.
    """
    s = scores.double()
    low = s.amin(-1, keepdim=True)
    s = torch.where(low < 0, s - low, s)
    inside = (s * cells.pos).sum(-1)
    total = (s * (cells.pos + cells.neg)).sum(-1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.full_like(total, float("nan"))).float()


def pointing_game_counts(scores: torch.Tensor, cells: Cells) -> torch.Tensor:
    """1.0 where the map's maximum cell covers mask pixels, else 0.0; NaN without mask pixels. (...,)"""
    lead = scores.shape[:-1]
    if cells.n_pos == 0:
        return _nan(lead)
    top = scores.argmax(-1)
    return (cells.pos[top] > 0).float()


def top_score(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the top ``fraction`` of a map's cells (at least one): an image-level anomaly score. (...,)"""
    return scores.float().topk(top_count(scores.shape[-1], fraction), dim=-1).values.mean(-1)


def top_count(cells: int, fraction: float) -> int:
    """The cells ``top_score`` averages: the top ``fraction`` of ``cells``, at least one."""
    if not 0 < fraction <= 1:
        raise ValueError(f"image_topk={fraction}: expected a fraction in (0, 1]")
    return max(1, int(round(fraction * cells)))


def aupro(scores: torch.Tensor, target: torch.Tensor, fpr_limit: float = 0.3) -> torch.Tensor:
    """Pixel AUPRO of maps (..., H, W) against a bool mask (H, W); see ``aupro_counts``."""
    if scores.shape[-2:] != target.shape:
        raise ValueError(f"aupro: scores {tuple(scores.shape)} do not end with target shape {tuple(target.shape)}")
    cells = cells_from_mask(target, tuple(target.shape))
    return aupro_counts(scores.flatten(-2), cells, fpr_limit)
