"""Maps on the patch or feature grid, (B, K, h, w), and masks made from them.

The package is also ``layerscope.maps(backbone, images, ...)``, the Python API's map function
(``layerscope.api.maps``): calling the module calls it.
"""
import sys
import types

from .attention import cls_attention
from .reduce import reduce_features
from .threshold import keep_mass, threshold_maps
from .upsample import upsample

__all__ = ["cls_attention", "keep_mass", "reduce_features", "threshold_maps", "upsample"]


class _CallableModule(types.ModuleType):
    """This package, callable as ``layerscope.maps(...)`` (the name the API gives its map function)."""

    def __call__(self, *args, **kwargs):
        from ..api import maps

        return maps(*args, **kwargs)

    @property
    def __signature__(self):
        import inspect

        from ..api import maps

        return inspect.signature(maps)


sys.modules[__name__].__class__ = _CallableModule
