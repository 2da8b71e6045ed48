"""Maps on the patch or feature grid, (B, K, h, w), and masks made from them.

The package is also ``layerscope.maps(backbone, images, ...)``, the Python API's map function
(``layerscope.api.maps``): calling the module calls it.
"""
import sys

from .. import CallableMaps

from .attention import cls_attention
from .reduce import reduce_features
from .threshold import keep_mass, threshold_maps
from .upsample import upsample

__all__ = ["cls_attention", "keep_mass", "reduce_features", "threshold_maps", "upsample"]


sys.modules[__name__].__class__ = CallableMaps
