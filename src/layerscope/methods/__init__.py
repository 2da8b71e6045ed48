"""Map methods: maps on the patch or feature grid, (B, K, h, w), and masks made from them.

The Python API's map function is ``layerscope.maps`` (``layerscope.api.maps``); this package holds the
methods it and the study run: ``base.MapMethod``, one module per method (``cam.py`` for the gradient and
CAM family), the map helpers below, and ``registry``: what each method is (map axis, gradients, ViT-only,
defaults), read from its YAML without torch. So this package imports without torch: the helpers other
than ``upsample`` (whose module imports torch on first call) load on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# eager: the module of the same name would otherwise shadow the function once imported
from .upsample import upsample

if TYPE_CHECKING:
    from ..backbones.attention import cls_attention
    from .reduce import reduce_features
    from .threshold import keep_mass, threshold_maps

__all__ = ["cls_attention", "keep_mass", "reduce_features", "threshold_maps", "upsample"]
_LAZY = {"cls_attention": "..backbones.attention", "reduce_features": ".reduce", "keep_mass": ".threshold",
         "threshold_maps": ".threshold"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
