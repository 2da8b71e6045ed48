"""``features``: channel reductions of each layer's features; ``auto``: ``cls_attention`` or ``features`` by model."""
from __future__ import annotations

from typing import Any

import torch

from ..config.method_options import FeaturesOptions
from .attention_maps import ClsAttention
from .base import MapMethod
from .reduce import reduce_features


class Features(MapMethod):
    """Channel reductions of each layer's features: ViT patch tokens or CNN stage outputs.

    Options (``FeaturesOptions``):
        reductions: any of ``l2``, ``mean_abs``, ``pca``.
    """

    name = "features"
    capture = "features"
    Options = FeaturesOptions

    def __init__(self, backbone: Any, **options: Any) -> None:
        super().__init__(backbone, **options)
        self.reductions = list(self.options.reductions)
        reduce_features(torch.zeros(1, 2, 2, 2), self.reductions)  # validates the names

    def map_names(self) -> list[str]:
        return list(self.reductions)

    def maps(self, captured: dict[int, Any]) -> dict[int, torch.Tensor]:
        return {layer: reduce_features(t, self.reductions) for layer, t in captured.items()}


def auto(backbone: Any, **options: Any) -> MapMethod:
    """``cls_attention`` for ViTs with a CLS token, ``features`` (with ``options``) for CNNs and ViTs without one:
    one sweep can span both kinds."""
    with_cls = backbone.kind == "vit" and getattr(backbone, "has_cls", True)
    return ClsAttention(backbone) if with_cls else Features(backbone, **options)
