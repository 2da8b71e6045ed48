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

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Cells:
    """Pixel counts per cell of one image's ground truth at one grid size."""

    pos: torch.Tensor  # (n,) float64
    neg: torch.Tensor  # (n,) float64
    regions: torch.Tensor  # (n, R) float64, pixels of each connected region

    @property
    def n_pos(self) -> float:
        return float(self.pos.sum())

    @property
    def n_neg(self) -> float:
        return float(self.neg.sum())


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
    shape = tuple(mask.shape)
    if (h, w) == shape:
        index = torch.arange(h * w)
    else:
        cells = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
        index = F.interpolate(cells, size=shape, mode="nearest").long().flatten()
    m = mask.flatten().bool()
    v = valid.flatten().bool() if valid is not None else torch.ones_like(m)
    pos = torch.bincount(index[m & v], minlength=h * w).double()
    neg = torch.bincount(index[~m & v], minlength=h * w).double()
    labels = torch.from_numpy(label((mask & (valid if valid is not None else True)).numpy(), connectivity=2))
    labels = labels.flatten().long()
    n_regions = int(labels.max())
    regions = torch.zeros(h * w, n_regions, dtype=torch.float64)
    if n_regions:
        inside = labels > 0
        regions.index_put_((index[inside], labels[inside] - 1), torch.ones(int(inside.sum()), dtype=torch.float64),
                           accumulate=True)
    return Cells(pos, neg, regions)


def _nan(lead: torch.Size) -> torch.Tensor:
    return torch.full(tuple(lead), float("nan"))


def _descending_groups(row: torch.Tensor, *weights: torch.Tensor) -> list[torch.Tensor]:
    """Sum each weight over groups of equal scores, groups ordered from the highest score."""
    values, order = torch.sort(row, descending=True)
    _, group = torch.unique_consecutive(values, return_inverse=True)
    n = int(group[-1]) + 1
    return [torch.zeros(n, dtype=torch.float64).index_add_(0, group, w[order]) for w in weights]


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


def iou_oracle_counts(scores: torch.Tensor, cells: Cells) -> torch.Tensor:
    """The best IoU any threshold on ``scores`` can reach (the oracle threshold), (...,).

    Cells are added from the highest score down, a tie group at a time; NaN without mask pixels.
    """
    lead = scores.shape[:-1]
    if cells.n_pos == 0:
        return _nan(lead)
    out = torch.empty(int(np.prod(lead)) if lead else 1, dtype=torch.float64)
    for r, row in enumerate(scores.reshape(-1, scores.shape[-1]).double()):
        gp, gn = _descending_groups(row, cells.pos, cells.neg)
        out[r] = (torch.cumsum(gp, 0) / (cells.n_pos + torch.cumsum(gn, 0))).max()
    return out.float().reshape(lead)


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
    lead = scores.shape[:-1]
    n_regions = cells.regions.shape[1]
    if n_regions == 0 or cells.n_neg == 0:
        return _nan(lead)
    pro_weight = (cells.regions / cells.regions.sum(0, keepdim=True)).sum(1) / n_regions  # (n,)
    fpr_weight = cells.neg / cells.n_neg
    out = torch.empty(int(np.prod(lead)) if lead else 1, dtype=torch.float64)
    for r, row in enumerate(scores.reshape(-1, scores.shape[-1]).double()):
        gp, gf = _descending_groups(row, pro_weight, fpr_weight)
        pro = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(gp, 0)])
        fpr = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(gf, 0)])
        out[r] = _area_until(fpr, pro, fpr_limit) / fpr_limit
    return out.float().reshape(lead)


def _area_until(x: torch.Tensor, y: torch.Tensor, limit: float) -> float:
    """Trapezoid area under the polyline (x, y), x non-decreasing from 0, up to x = limit."""
    area = 0.0
    for i in range(1, len(x)):
        x0, x1, y0, y1 = float(x[i - 1]), float(x[i]), float(y[i - 1]), float(y[i])
        if x0 >= limit:
            break
        if x1 > limit:  # interpolate the last segment at the limit
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area


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
    if not 0 < fraction <= 1:
        raise ValueError(f"image_topk={fraction}: expected a fraction in (0, 1]")
    k = max(1, int(round(fraction * scores.shape[-1])))
    return scores.float().topk(k, dim=-1).values.mean(-1)


def aupro(scores: torch.Tensor, target: torch.Tensor, fpr_limit: float = 0.3) -> torch.Tensor:
    """Pixel AUPRO of maps (..., H, W) against a bool mask (H, W); see ``aupro_counts``."""
    if scores.shape[-2:] != target.shape:
        raise ValueError(f"aupro: scores {tuple(scores.shape)} do not end with target shape {tuple(target.shape)}")
    cells = cells_from_mask(target, tuple(target.shape))
    return aupro_counts(scores.flatten(-2), cells, fpr_limit)
