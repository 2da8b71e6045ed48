"""The map's maximum: a per-image anomaly score (the dataset protocol's image AUROC ranks images by it)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..facts import Metric

if TYPE_CHECKING:
    import torch

    from ..scored_maps import ScoredMaps

METRIC = Metric("score_max", "max score", "map maximum", needs_mask=False, kind="image_score", fmt=".4g", order=130,
                shown=True)


def compute(maps: ScoredMaps) -> torch.Tensor:
    """(B, R) float32."""
    return maps.flat.amax(-1)
