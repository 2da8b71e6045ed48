"""Normalised entropy of the map over its cells (1 = uniform): how spread out it is, mask or no mask."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..facts import NO_MASS, Metric

if TYPE_CHECKING:
    import torch

    from ..scored_maps import ScoredMaps

METRIC = Metric("entropy", "entropy", "normalised entropy (0–1, 1 = uniform)", higher_is_better=False,
                needs_mask=False, order=90, undefined_when=(NO_MASS,), shown=True)


def compute(maps: ScoredMaps) -> torch.Tensor:
    """(B, R) float32."""
    from ..distribution import normalized_entropy

    return normalized_entropy(maps.maps, maps.masses)
