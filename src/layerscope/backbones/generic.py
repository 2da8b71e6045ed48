"""Any ``nn.Module``: layers given by module name, maps from their outputs (feature maps or tokens)."""
from __future__ import annotations

import difflib
import math
from typing import Sequence

import torch
from torch import nn

from .base import Backbone, Hook


def _first_tensor(out: object) -> torch.Tensor:
    """A module's output as one tensor: itself, or the first entry of a tuple or model output."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if hasattr(out, "to_tuple") and isinstance(out.to_tuple()[0], torch.Tensor):  # transformers ModelOutput
        return out.to_tuple()[0]
    raise ValueError(f"expected a tensor output, got {type(out).__name__}")


def find_modules(model: nn.Module, names: Sequence[str], what: str = "layers") -> list[nn.Module]:
    """The submodules of ``model`` called ``names`` (``"layer4"``, ``"blocks.11.norm1"``).

    Raises:
        ValueError: one line naming an unknown module and the closest names the model has.
    """
    modules = dict(model.named_modules())
    out = []
    for name in names:
        if not isinstance(name, str) or name not in modules or not name:
            close = difflib.get_close_matches(str(name), [n for n in modules if n], n=4, cutoff=0.5)
            top = [n for n in modules if n and "." not in n][:8]
            hint = f"closest: {', '.join(close)}" if close else f"top-level modules: {', '.join(top)}"
            raise ValueError(f"{what}={name!r}: {type(model).__name__} has no module of that name ({hint})")
        out.append(modules[name])
    return out


class ModuleBackbone(Backbone):
    """Any ``nn.Module`` whose named submodules are the layers; their outputs serve ``features`` and the CAMs.

    A layer's output may be a feature map ``(B, C, h, w)`` (used as it is) or tokens ``(B, N, C)``
    (the leading ``num_prefix`` tokens dropped, the rest laid on a square grid; by default
    ``num_prefix = N - isqrt(N)^2``, e.g. 1 CLS token of 197, 5 prefix tokens of 261). Tuples and
    transformers outputs give their first tensor. Attention methods need a model whose attention
    layerscope reads (``wrap`` a timm or transformers ViT without ``layers``).

    The model's output is its classifier's logits when it is a ``(B, C)`` tensor or has
    ``.logits``; otherwise the model has no classifier (gradient methods then explain the L2 norm
    of the output, or a callable target).

    Args:
        model: the network (its weights as they are; put in eval mode).
        layers: module names, in the order of the layer indices.
        name: the model's name in results.
        img_size, mean, std: input side and RGB normalisation.
        num_prefix: leading non-patch tokens of token outputs, or None to infer them.

    Raises:
        ValueError: an unknown module name, or (from ``probe``) a layer whose output is not a map.
    """

    kind = "module"
    captures = ("features",)

    def __init__(self, model: nn.Module, layers: Sequence[str], name: str, img_size: int, mean: Sequence[float],
                 std: Sequence[float], num_prefix: int | None = None):
        super().__init__(name, img_size, mean, std)
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names:
            raise ValueError("layers=[]: name at least one module of the model (e.g. layers=['layer4'])")
        self.model = model
        self.model.eval()
        self.names = names
        self._layer_modules = find_modules(model, names)
        self.num_prefix = num_prefix
        self._num_classes = 0

    @property
    def num_layers(self) -> int:
        return len(self.names)

    def check_capture(self, capture: str, method: str | None = None) -> None:
        if capture not in self.captures:
            raise ValueError(f"method={method or capture} needs attention that layerscope can read; model {self.name} "
                             f"is a module wrapped with layers=[...], which serve features and the CAM methods "
                             "(wrap a timm or transformers ViT without layers= for attention)")

    def layer_names(self) -> list[str]:
        return list(self.names)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @torch.no_grad()
    def probe(self) -> dict[int, tuple[int, ...]]:
        """One forward pass on a blank batch of one: checks every layer yields a map, reads the classifier size.

        Returns:
            layer -> shape of its map, (1, C, h, w).

        Raises:
            ValueError: a layer that never ran or whose output is not a map, naming it.
        """
        device = self.mean.device
        hooks, store = self.capture(list(range(self.num_layers)), "features", raw=True)
        from .base import forward_hooks

        with forward_hooks(hooks):
            blank = self.normalize(torch.zeros(1, 3, self.img_size, self.img_size, device=device))
            out = self.forward_output(blank.to(self.model_dtype()))  # a model cast with .half() takes half input
        logits = out.logits if hasattr(out, "logits") else out
        self._num_classes = int(logits.shape[-1]) if isinstance(logits, torch.Tensor) and logits.ndim == 2 else 0
        shapes = {}
        for layer, name in enumerate(self.names):
            if layer not in store:
                raise ValueError(f"layers={name!r}: the module never ran in the model's forward pass")
            try:
                shapes[layer] = tuple(self._to_grid(store[layer], name).shape)
            except ValueError as e:
                raise ValueError(f"layers={name!r}: {e}") from None
        return shapes

    def _to_grid(self, out: object, name: str = "") -> torch.Tensor:
        """A layer's output -> (B, C, h, w): a feature map as it is, tokens on their square grid."""
        t = _first_tensor(out)
        if t.ndim == 4:
            return t
        if t.ndim == 3:
            b, n, c = t.shape
            prefix = self.num_prefix if self.num_prefix is not None else n - math.isqrt(n) ** 2
            side = math.isqrt(n - prefix) if n > prefix else 0
            if not side or side * side != n - prefix:
                raise ValueError(f"output {tuple(t.shape)}: {n} tokens minus {prefix} prefix tokens do not fill a "
                                 "square grid (give num_prefix=)")
            return t[:, prefix:].transpose(1, 2).reshape(b, c, side, side)
        raise ValueError(f"output {tuple(t.shape)} is not a map: expected (B, C, h, w) feature maps or (B, N, C) "
                         "tokens")

    def capture(self, layers: Sequence[int], what: str,
                raw: bool = False) -> tuple[list[tuple[nn.Module, Hook]], dict[int, torch.Tensor]]:
        store: dict[int, torch.Tensor] = {}

        def hook_for(layer: int) -> Hook:
            def keep(_m, _i, out):
                store[layer] = out if raw else self._to_grid(out, self.names[layer])
            return keep

        return [(self._layer_modules[layer], hook_for(layer)) for layer in layers], store

    def capture_grad(self, layers: Sequence[int], what: str) -> tuple[list[tuple[nn.Module, Hook]], dict[int, object]]:
        """The layers' outputs themselves, in the graph (tokens are laid on the grid after the backward)."""
        store: dict[int, object] = {}

        def hook_for(layer: int) -> Hook:
            def keep(_m, _i, out):
                store[layer] = _first_tensor(out)
            return keep

        return [(self._layer_modules[layer], hook_for(layer)) for layer in layers], store

    def grad_captures(self, kept: object, grad: torch.Tensor, what: str) -> tuple[torch.Tensor, ...]:
        return self._to_grid(kept.detach()), self._to_grid(grad)

    def forward_output(self, x: torch.Tensor) -> object:
        return self.model(x)

    def output_logits(self, out: object) -> torch.Tensor | None:
        if not self._num_classes:
            return None
        return out.logits if hasattr(out, "logits") else out

    def logits(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.output_logits(self.forward_output(x))

    def embedding_score(self, x: torch.Tensor, how: str) -> torch.Tensor:
        if how != "norm":
            raise ValueError(f"method.embedding_target={how}: model {self.name} is a wrapped module; use norm or a "
                             "callable target")
        return _first_tensor(self.forward_output(x)).float().flatten(1).norm(dim=-1)

    def load_weights(self) -> None:
        """A wrapped module keeps its own weights."""
