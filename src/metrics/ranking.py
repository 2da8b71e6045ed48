"""How well a continuous map ranks mask pixels above background pixels."""
from __future__ import annotations

import torch


def auroc(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of ``scores`` for the binary ``target`` (pixel AUROC).

    Computed exactly as the Mann-Whitney U statistic with average ranks for ties, so it
    equals scikit-learn's ``roc_auc_score``.

    Args:
        scores: float, (..., H, W) (any trailing shape matching ``target``).
        target: bool, same trailing shape as ``scores``.

    Returns:
        float, (...,); NaN where the target is all positive or all negative (undefined).
    """
    if scores.shape[-target.ndim:] != target.shape:
        raise ValueError(f"auroc: scores {tuple(scores.shape)} do not end with target shape {tuple(target.shape)}")
    lead = scores.shape[: scores.ndim - target.ndim]
    s = scores.reshape(-1, target.numel()).double()
    t = target.reshape(-1).bool()
    n_pos, n = int(t.sum()), t.numel()
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return torch.full(lead, float("nan"))
    out = torch.empty(s.shape[0], dtype=torch.float64)
    for i, row in enumerate(s):
        sorted_vals, order = torch.sort(row)
        # average rank of each tie group
        _, inverse, counts = torch.unique_consecutive(sorted_vals, return_inverse=True, return_counts=True)
        ends = torch.cumsum(counts, 0).double()
        avg_rank = ends - (counts.double() - 1) / 2
        ranks = torch.empty_like(row)
        ranks[order] = avg_rank[inverse]
        out[i] = (ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out.float().reshape(lead)
