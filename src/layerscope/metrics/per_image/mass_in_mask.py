"""Share of the map's mass on mask pixels (a map with negative values shifted to start at 0); its chance
level is the mask's area share (``mass_ratio``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..facts import NO_MASK, NO_MASS, Metric

if TYPE_CHECKING:
    import torch

    from ..scored_maps import ScoredMaps

METRIC = Metric("mass_in_mask", "mass in mask", "map mass in mask (0–1)", order=50,
                undefined_when=(NO_MASK, NO_MASS))


def compute(maps: ScoredMaps) -> torch.Tensor:
    """(B', R) float32; NaN for a map with no mass."""
    import torch

    s = maps.scored_masses
    inside = (s * maps.pos.unsqueeze(1)).sum(-1)
    total = (s * (maps.pos + maps.neg).unsqueeze(1)).sum(-1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.full_like(total, float("nan"))).float()
