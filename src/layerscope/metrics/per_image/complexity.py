"""Complexity: the entropy of |map| / sum |map| over the cells (Bhatt et al. 2020; Quantus' Complexity), with
``metrics.sparseness``: the shape of the map alone."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..facts import Metric

if TYPE_CHECKING:
    import torch

    from ..scored_maps import ScoredMaps

# NaN for an all-zero map too, which notes do not name (their lists predate the column)
METRIC = Metric("complexity", "complexity", "entropy of |map| over cells (nats, lower = simpler)",
                higher_is_better=False, needs_mask=False, option="metrics.sparseness", order=160)


def compute(maps: ScoredMaps) -> torch.Tensor:
    """(B, R) float32."""
    from ..sparseness import complexity

    return complexity(maps.maps)
