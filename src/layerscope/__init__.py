"""layerscope: what each layer and head of a vision backbone looks at, measured against masks.

From Python (``import layerscope as ls``): ``ls.load`` (a model by config name), ``ls.wrap`` (any timm,
transformers or torch model), ``ls.maps`` (every layer's maps, a ``Maps``), ``ls.score`` (the rows of
``results.csv``). They are imported on first use, so ``import layerscope`` itself stays cheap (no torch);
a type checker and an editor see their real signatures (the ``TYPE_CHECKING`` import below).
The map methods themselves live in the subpackage ``layerscope.methods``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Maps, load, maps, score, wrap

__all__ = ["Maps", "load", "maps", "score", "wrap"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'layerscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
