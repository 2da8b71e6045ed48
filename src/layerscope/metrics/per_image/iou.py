"""IoU of the thresholded map with the mask, one value per threshold (the DINO protocol's number).

``|kept ∩ mask| / |kept ∪ mask|`` over valid pixels, the kept pixels those ``methods.threshold_maps`` keeps at
each threshold under the run's rule. The ``best`` row of a layer is the head with the highest IoU.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..facts import NO_MASK, Metric

if TYPE_CHECKING:
    import torch

    from ..scored_maps import ScoredMaps

METRIC = Metric("iou", "IoU", "IoU (0–1)", threshold_dependent=True, order=10, undefined_when=(NO_MASK,), shown=True)


def compute(maps: ScoredMaps) -> torch.Tensor:
    """(B', R, T) float32; NaN where nothing is kept and the mask is empty (an empty union)."""
    from ..localization import iou_from_kept_counts

    inter, kept_neg, _ = maps.kept
    return iou_from_kept_counts(inter, kept_neg, maps.n_pos.view(-1, 1, 1))
