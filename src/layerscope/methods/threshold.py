"""Turning a map into a mask."""
from __future__ import annotations

import torch


def keep_mass(attn: torch.Tensor, mass: float) -> torch.Tensor:
    """DINO's threshold: keep the largest values that together hold ``mass`` of the total.

    Sort ascending, normalise by the sum, take the cumulative sum, keep the entries where it
    exceeds ``1 - mass``, and scatter the decision back to the original order (the algorithm
    of DINO's ``visualize_attention.py``, batched over leading dimensions).

    Args:
        attn: non-negative scores, (..., N).
        mass: fraction of the total to keep, in [0, 1].

    Returns:
        bool mask, same shape as ``attn``.
    """
    if not 0.0 <= mass <= 1.0:
        raise ValueError(f"threshold={mass}: keep-mass threshold must be in [0, 1]")
    values, order = torch.sort(attn, dim=-1)
    cum = torch.cumsum(values / values.sum(dim=-1, keepdim=True), dim=-1)
    keep_sorted = cum > (1 - mass)
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def keep_mass_maps(maps: torch.Tensor, mass: float) -> torch.Tensor:
    """``keep_mass`` over each map's grid, shifting maps with negative values to start at 0.

    Args:
        maps: (..., h, w).
        mass: fraction of the total to keep.

    Returns:
        bool, (..., h, w).
    """
    flat = maps.flatten(-2)
    low = flat.amin(dim=-1, keepdim=True)
    flat = torch.where(low < 0, flat - low, flat)  # PCA maps are signed; attention is not
    return keep_mass(flat, mass).view_as(maps)


def above_fraction(maps: torch.Tensor, level: float) -> torch.Tensor:
    """Keep where the min-max normalised map exceeds ``level`` (in [0, 1]).

    Args:
        maps: (..., h, w).
        level: threshold on the map rescaled to [0, 1] per map.

    Returns:
        bool, (..., h, w); all False for a constant map.
    """
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"threshold={level}: min-max threshold must be in [0, 1]")
    flat = maps.flatten(-2)
    low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    scaled = (flat - low) / (high - low).clamp_min(torch.finfo(flat.dtype).tiny)
    return ((scaled > level) & (high > low)).view_as(maps)


RULES = {"keep_mass": keep_mass_maps, "minmax": above_fraction}


def threshold_maps(maps: torch.Tensor, value: float, rule: str = "keep_mass") -> torch.Tensor:
    """Apply the named threshold ``rule`` (``keep_mass`` or ``minmax``) to maps (..., h, w)."""
    if rule not in RULES:
        raise ValueError(f"threshold_rule={rule!r}: expected one of {', '.join(RULES)}")
    return RULES[rule](maps, value)
