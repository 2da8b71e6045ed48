"""Gini sparseness of |map| over its cells (Chalasani et al. 2020; Quantus' Sparseness), with
``metrics.sparseness``: the shape of the map alone."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..facts import Metric

if TYPE_CHECKING:
    import torch

    from ..scored_maps import ScoredMaps

# NaN for an all-zero map too, which notes do not name (their lists predate the column)
METRIC = Metric("gini", "Gini", "Gini sparseness of |map| (0–1, higher = sparser)", needs_mask=False,
                option="metrics.sparseness", order=150)


def compute(maps: ScoredMaps) -> torch.Tensor:
    """(B, R) float32."""
    from ..sparseness import gini

    return gini(maps.maps)
