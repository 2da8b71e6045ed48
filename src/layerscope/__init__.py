"""layerscope: what each layer and head of a vision backbone looks at, measured against masks.

From Python (``import layerscope as ls``): ``ls.load`` (a model by config name), ``ls.wrap`` (any timm,
transformers or torch model), ``ls.maps`` (every layer's maps, a ``Maps``), ``ls.score`` (the rows of
``results.csv``). They are imported on first use, so ``import layerscope`` itself stays cheap (no torch).
``ls.maps`` is the subpackage ``layerscope.maps``, which calling runs ``layerscope.api.maps``.
"""
from __future__ import annotations

import types
from typing import Any

__all__ = ["Maps", "load", "maps", "score", "wrap"]


def __getattr__(name: str) -> Any:
    if name == "maps":  # the subpackage layerscope.maps, callable as the API's maps()
        import importlib

        return importlib.import_module(".maps", __name__)
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'layerscope' has no attribute {name!r}")


class CallableMaps(types.ModuleType):
    """The class of the subpackage ``layerscope.maps``: calling it runs ``layerscope.api.maps``.

    It lives here, at the top of the package beside the other API names, so that ``maps`` (a low layer)
    never imports the API (the top layer) that is built on it.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .api import maps

        return maps(*args, **kwargs)

    @property
    def __signature__(self):
        import inspect

        from .api import maps

        return inspect.signature(maps)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
