"""How well a continuous map ranks mask pixels above background pixels."""
from __future__ import annotations

import torch


def auroc_counts(scores: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """AUROC where item ``i`` stands for ``pos[i]`` positive and ``neg[i]`` negative pixels.

    This is the Mann-Whitney U statistic with ties counted one half. With nearest
    upsampling every pixel copies one grid cell, so scoring the grid with per-cell pixel
    counts gives exactly the pixel AUROC at a fraction of the cost.

    Args:
        scores: float, (..., n).
        pos: non-negative counts, (n,).
        neg: non-negative counts, (n,).

    Returns:
        float, (...,); NaN where there are no positives or no negatives (undefined).
    """
    lead, n = scores.shape[:-1], scores.shape[-1]
    if pos.shape != (n,) or neg.shape != (n,):
        raise ValueError(f"auroc_counts: scores end with {n} items, counts are {tuple(pos.shape)} and {tuple(neg.shape)}")
    pos, neg = pos.double(), neg.double()
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return torch.full(lead, float("nan"))
    rows = scores.reshape(-1, n).double()
    out = torch.empty(rows.shape[0], dtype=torch.float64)
    for r, row in enumerate(rows):
        values, order = torch.sort(row)
        _, group, _ = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
        n_groups = int(group[-1]) + 1
        gp = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group, pos[order])
        gn = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group, neg[order])
        neg_below = torch.cumsum(gn, 0) - gn
        out[r] = (gp * (neg_below + 0.5 * gn)).sum() / (n_pos * n_neg)
    return out.float().reshape(lead)


def auroc(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel AUROC of ``scores`` for the binary ``target``; equals scikit-learn's ``roc_auc_score``.

    Args:
        scores: float, (..., H, W) (any trailing shape equal to ``target``'s).
        target: bool, (H, W).

    Returns:
        float, (...,); NaN where the target is all positive or all negative (undefined).
    """
    if scores.shape[scores.ndim - target.ndim:] != target.shape:
        raise ValueError(f"auroc: scores {tuple(scores.shape)} do not end with target shape {tuple(target.shape)}")
    t = target.reshape(-1).bool()
    flat = scores.reshape(*scores.shape[: scores.ndim - target.ndim], -1)
    return auroc_counts(flat, t.double(), (~t).double())
