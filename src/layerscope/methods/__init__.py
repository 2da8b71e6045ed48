"""Map methods: maps on the patch or feature grid, (B, K, h, w), and masks made from them.

The Python API's map function is ``layerscope.maps`` (``layerscope.api.maps``); this package holds the
methods it and the study run.
"""
from ..backbones.attention import cls_attention
from .reduce import reduce_features
from .threshold import keep_mass, threshold_maps
from .upsample import upsample

__all__ = ["cls_attention", "keep_mass", "reduce_features", "threshold_maps", "upsample"]
