"""Metrics: pure functions on tensors, shapes in their docstrings."""
from .distribution import normalized_entropy
from .ranking import auroc, auroc_counts, cell_counts
from .segmentation import iou

__all__ = ["auroc", "auroc_counts", "cell_counts", "iou", "normalized_entropy"]
