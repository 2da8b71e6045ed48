"""Overlap between predicted and ground-truth masks."""
from __future__ import annotations

import torch


def iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Jaccard index |pred & target| / |pred | target| over the last two dims.

    Args:
        pred: bool, (..., H, W).
        target: bool, (H, W) or broadcastable to ``pred``.

    Returns:
        float, (...,); NaN where both masks are empty (the overlap is undefined there).
    """
    if pred.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"iou: mask sizes differ, pred {tuple(pred.shape[-2:])} vs target {tuple(target.shape[-2:])}")
    pred, target = pred.bool(), target.bool()
    inter = (pred & target).sum(dim=(-2, -1)).double()
    union = (pred | target).sum(dim=(-2, -1)).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, float("nan"))).float()
