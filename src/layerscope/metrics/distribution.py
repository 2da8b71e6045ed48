"""Properties of a map seen as a distribution over its grid."""
from __future__ import annotations

import math

import torch


def normalized_entropy(maps: torch.Tensor, masses: torch.Tensor | None = None) -> torch.Tensor:
    """Shannon entropy of each map as a distribution over its h x w cells, divided by log(h w).

    1 means uniform (attention everywhere), near 0 means concentrated on one cell. Maps
    with negative values are shifted to start at 0 first.

    Args:
        maps: (..., h, w).
        masses: ``shifted_masses(maps)`` where the caller has it already.

    Returns:
        float, (...,) in [0, 1]; NaN for a map whose values are all equal to its minimum and
        zero (no mass), and for a 1-cell grid (entropy undefined).
    """
    flat = masses if masses is not None else shifted_masses(maps.flatten(-2))
    n = flat.shape[-1]
    total = flat.sum(-1, keepdim=True)
    p = flat / total.clamp_min(torch.finfo(flat.dtype).tiny)
    h = -(p * torch.log(p.clamp_min(torch.finfo(flat.dtype).tiny))).sum(-1)
    out = h / math.log(n) if n > 1 else torch.full_like(h, float("nan"))
    return torch.where(total.squeeze(-1) > 0, out, torch.full_like(out, float("nan"))).float()


def shifted_masses(flat: torch.Tensor) -> torch.Tensor:
    """(..., n) maps in float64, each shifted to start at 0 where it has a negative value (a map's masses)."""
    flat = flat.double()
    low = flat.amin(-1, keepdim=True)
    shifted = low < 0
    return torch.where(shifted, flat - low, flat) if bool(shifted.any()) else flat
