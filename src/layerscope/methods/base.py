"""The map method's base class: from what a backbone captured to maps (B, K, h, w) with K names per layer.

Each method says what it needs captured (``cls_attention``, ``qk`` or ``features``) and turns one
batch's captures into maps; its options (their one default each) are its family's dataclass in
``layerscope.methods.registry``, which the method's YAML names too.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Sequence

import torch

from ..config.method_options import NoOptions

if TYPE_CHECKING:
    from ..backbones import Backbone


class MapMethod:
    """Base class: ``name``, what to ``capture``, and ``maps`` from one batch's captures.

    Its facts for readers without torch (map axis, gradients, ViT-only) are its family's, in
    ``layerscope.methods.registry`` (its YAML names the family); ``tests/test_method_registry.py`` checks that
    the class agrees.

    Args:
        backbone: the model the method will run on; a method that does not apply to it
            raises ValueError naming both.
        **options: the method's options (``Options``' fields); the rest keep their defaults.
    """

    name: ClassVar[str] = ""
    capture: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions  # the options' dataclass, with their defaults
    head_mean: ClassVar[bool] = False  # add the mean over all K maps as a map named "mean"
    needs_references: ClassVar[bool] = False
    needs_grad: ClassVar[bool] = False  # maps need gradients: the map source calls Backbone.extract_grad

    def __init__(self, backbone: Backbone, **options: Any) -> None:
        backbone.check_capture(self.capture, self.name)
        self.backbone = backbone
        self.options = self.Options(**options)

    def num_maps(self) -> int:
        return len(self.map_names())

    def map_names(self) -> list[str]:
        raise NotImplementedError

    def maps(self, captured: dict[int, Any]) -> dict[int, torch.Tensor]:
        """captured[layer] (B, C, h, w) -> maps[layer] (B, K, h, w) float32."""
        raise NotImplementedError

    def fit(self, batches: Iterable[torch.Tensor], layers: Sequence[int], extract: Callable) -> None:
        """Learn from normal images (only methods with ``needs_references``)."""

    def capture_layers(self, layers: Sequence[int]) -> list[int]:
        """Which layers the backbone must capture to produce maps for ``layers``."""
        return list(layers)

    def extra_map_names(self, layer: int) -> list[str]:
        """Maps the method adds at ``layer`` after its K maps (and their mean): ``patch_knn``'s fused candidates."""
        return []
