"""Metrics: pure functions on tensors, shapes in their docstrings."""
from .distribution import normalized_entropy
from .ranking import auroc
from .segmentation import iou

__all__ = ["auroc", "iou", "normalized_entropy"]
