"""Backbones: model construction, weight sources, and one-pass capture of per-layer maps."""
from .base import Backbone, forward_hooks, select_indices
from .cnn import TimmCNN
from .vit import HFViT, TimmViT
from .weights import WeightsError

__all__ = ["Backbone", "HFViT", "TimmCNN", "TimmViT", "WeightsError", "forward_hooks", "select_indices"]
