"""Convolutional backbones from timm; layers are the stages timm lists in ``feature_info``."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .base import Backbone, Hook, capped_cells
from .weights import check_source, timm_state_dict


class TimmCNN(Backbone):
    """A timm CNN (ResNet-50, EfficientNet-Lite0, ...).

    Layer ``i`` is the output of the i-th entry of ``model.feature_info`` (stem, then each
    stage that changes stride), NCHW. Maps are reductions of it over channels.

    Args:
        name: config name, e.g. ``resnet50``.
        arch: timm architecture, e.g. ``resnet50``.
        img_size, mean, std, pretrained, weights: as for ``TimmViT``.
        num_classes: classifier size (0 = no head).
        model_kwargs: extra ``timm.create_model`` arguments.
    """

    kind = "cnn"
    captures = ("features",)
    representation_kinds = ("mean", "patches")  # of each stage's output: global average pool, its cells

    def __init__(self, name: str, arch: str, img_size: int, mean: Sequence[float], std: Sequence[float],
                 pretrained: bool = True, weights: Mapping[str, Any] | None = None, num_classes: int = 1000,
                 model_kwargs: Mapping[str, Any] | None = None):
        import timm

        super().__init__(name, img_size, mean, std)
        self.weights_cfg = dict(weights or {})
        self.pretrained = pretrained
        check_source(name, self.weights_cfg, pretrained)
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **dict(model_kwargs or {}))
        self._adopt(model, arch)

    @classmethod
    def from_model(cls, model: nn.Module, name: str, img_size: int, mean: Sequence[float],
                   std: Sequence[float]) -> "TimmCNN":
        """Wrap an existing timm CNN (its weights as they are; put in eval mode).

        Raises:
            ValueError: a model without timm's ``feature_info``.
        """
        self = cls.__new__(cls)
        Backbone.__init__(self, name, img_size, mean, std)
        self.weights_cfg, self.pretrained = {}, False
        self._adopt(model, getattr(model, "default_cfg", {}).get("architecture", type(model).__name__))
        return self

    def _adopt(self, model: nn.Module, arch: str) -> None:
        """Take ``model`` as this backbone's network and find its stages."""
        self.model = model
        self.model.eval()
        if not getattr(self.model, "feature_info", None):
            raise ValueError(f"model {self.name}: {arch} lists no stages (timm feature_info); wrap it with "
                             "layers=[module names]")
        self.stages = [info["module"] for info in self.model.feature_info]
        self.strides = [info["reduction"] for info in self.model.feature_info]
        modules = dict(self.model.named_modules())
        missing = [s for s in self.stages if s not in modules]
        if missing:
            raise ValueError(f"model {self.name}: feature_info names modules {missing} that {arch} does not have")
        self._modules_by_stage = [modules[s] for s in self.stages]
        if self.img_size < max(self.strides):
            raise ValueError(f"model.img_size={self.img_size}: expected at least {max(self.strides)} px "
                             f"(the deepest stage of {arch} has stride {max(self.strides)})")
        self._check_layout(arch)
        if int(self.model.num_classes) == 1000:
            from timm.data import ImageNetInfo

            info = ImageNetInfo()
            self.labels = [info.index_to_description(i) for i in range(1000)]

    @torch.no_grad()
    def _check_layout(self, arch: str) -> None:
        """One forward pass of a blank image: every stage must give (B, C, h, w) feature maps.

        A timm transformer that is not a ``VisionTransformer`` (EVA-02, BEiT: tokens (B, N, C); Swin:
        (B, h, w, C)) also lists its blocks in ``feature_info``; read as a CNN its maps would be wrong.

        Raises:
            ValueError: one line naming the stage, its output and what to do instead.
        """
        from .base import forward_hooks

        shapes: dict[int, tuple[int, ...]] = {}

        def hook_for(i: int):
            def keep(_m, _i, out):
                shapes[i] = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
            return keep

        p = next(self.model.parameters(), None)
        x = torch.zeros(1, 3, self.img_size, self.img_size, device=p.device if p is not None else "cpu",
                        dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
        try:
            with forward_hooks([(m, hook_for(i)) for i, m in enumerate(self._modules_by_stage)]):
                self.model(x)
        except Exception as e:  # noqa: BLE001 - a model built for another input size asserts, others raise
            raise ValueError(f"model {self.name}: {arch} ({type(self.model).__name__}) fails on a {self.img_size} px "
                             f"image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); is "
                             "model.img_size one it takes?") from None
        for i, info in enumerate(self.model.feature_info):
            shape = shapes.get(i)
            if shape is None or len(shape) != 4 or shape[1] != info["num_chs"]:
                raise ValueError(f"model {self.name}: {arch} ({type(self.model).__name__}) is neither a ViT whose "
                                 f"attention layerscope reads nor a CNN: its stage {self.stages[i]} gives "
                                 f"{shape or 'no tensor'}, not (B, {info['num_chs']}, h, w) feature maps; from "
                                 "Python, layerscope.wrap(model, layers=[module names]) reads its blocks' tokens "
                                 "for features and the CAM methods")

    def layer_names(self) -> list[str]:
        """The stage module names, by layer index (``act1``, ``layer1``, ... for a ResNet)."""
        return list(self.stages)

    @property
    def num_layers(self) -> int:
        return len(self.stages)

    def capture(self, layers: Sequence[int], what: str) -> tuple[list[tuple[nn.Module, Hook]], dict[int, torch.Tensor]]:
        store: dict[int, torch.Tensor] = {}

        def hook_for(layer: int) -> Hook:
            def keep(_m, _i, out):
                store[layer] = out
            return keep

        return [(self._modules_by_stage[layer], hook_for(layer)) for layer in layers], store

    def capture_grad(self, layers: Sequence[int], what: str) -> tuple[list[tuple[nn.Module, Hook]], dict[int, object]]:
        """The stage outputs themselves, (B, C, h, w), kept in the graph (see ``Backbone.capture_grad``)."""
        return self.capture(layers, what)

    def extra_hooks(self, layers: Sequence[int], extras: Sequence[str]
                    ) -> tuple[list[tuple[nn.Module, Hook]], dict[str, dict[int, torch.Tensor]]]:
        """``rep_mean``: each stage's output (B, C, h, w) globally average-pooled, (B, C); ``rep_patches``: its
        cells (B, h, w, C) (``base.capped_cells``)."""
        if unknown := [e for e in extras if e not in ("rep_mean", "rep_patches")]:
            raise ValueError(f"model {self.name} ({self.kind}) cannot capture {', '.join(unknown)}")
        store: dict[str, dict[int, torch.Tensor]] = {e: {} for e in extras}

        def hook_for(layer: int) -> Hook:
            def pool(_m, _i, out):
                if "rep_mean" in store:
                    store["rep_mean"][layer] = out.detach().float().mean((2, 3))
                if "rep_patches" in store:
                    store["rep_patches"][layer] = capped_cells(out.detach().float())
            return pool

        return ([(self._modules_by_stage[layer], hook_for(layer)) for layer in layers] if extras else []), store

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def embedding_score(self, x: torch.Tensor, how: str) -> torch.Tensor:
        if how != "norm":
            raise ValueError(f"method.embedding_target={how}: model {self.name} is a CNN without a CLS token; use norm")
        feats = self.model.forward_features(x)
        return self.model.forward_head(feats, pre_logits=True).float().norm(dim=-1)  # pooled features

    def load_weights(self) -> None:
        if not self.pretrained:
            return
        sd = timm_state_dict(self.name, self.weights_cfg)
        self._load_checked(self.model, sd)

    def logits(self, x: torch.Tensor) -> torch.Tensor | None:
        out = self.model(x)
        return out if self.model.num_classes else None

    def forward_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
