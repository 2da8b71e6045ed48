"""Metrics: pure functions on tensors, shapes in their docstrings."""
from .distribution import normalized_entropy
from .localization import (Cells, aupro, aupro_counts, cells_from_mask, iou_counts, iou_oracle_counts,
                           mass_in_mask_counts, pointing_game_counts, top_score)
from .rank_groups import auroc, auroc_counts
from .segmentation import iou

__all__ = ["Cells", "aupro", "aupro_counts", "auroc", "auroc_counts", "cells_from_mask", "iou", "iou_counts",
           "iou_oracle_counts", "mass_in_mask_counts", "normalized_entropy", "pointing_game_counts", "top_score"]
