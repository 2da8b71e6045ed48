"""What every backbone answers, ViT or CNN, and the hook context manager that captures layers."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

Hook = Callable[[nn.Module, tuple, object], None]


@contextmanager
def forward_hooks(hooks: Sequence[tuple[nn.Module, Hook]]) -> Iterator[None]:
    """Register forward hooks for the duration of a ``with`` block; always removed after."""
    handles = [module.register_forward_hook(fn) for module, fn in hooks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def select_indices(spec: object, n: int, what: str) -> list[int]:
    """Resolve a user's layer/head selection to sorted, unique, non-negative indices.

    Args:
        spec: ``"all"``/``None``, an int, or a list of ints; negative ints count from the end.
        n: how many there are.
        what: the option's name for error messages (``"layer"``, ``"head"``).

    Raises:
        ValueError: an index outside ``[-n, n)`` or a value that is not an int; the message
            names the option and the valid range.
    """
    if spec is None or spec == "all":
        return list(range(n))
    items = list(spec) if isinstance(spec, (list, tuple)) or hasattr(spec, "__iter__") and not isinstance(spec, str) else [spec]
    if not items:
        raise ValueError(f"{what}=[]: select at least one {what} (0..{n - 1}, negative from the end, or all)")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"{what}={item!r}: expected an int in [{-n}, {n - 1}] or 'all'")
        if not -n <= item < n:
            raise ValueError(f"{what}={item} is out of range: this model has {n} {what}s, valid {-n}..{n - 1} (or all)")
        out.append(item % n)
    return sorted(set(out))


class Backbone(nn.Module):
    """A vision model that yields per-layer maps ``(B, K, h, w)`` from one forward pass.

    Subclasses build the network in ``__init__`` (random init, cheap) so that layer and head
    selections are checked before weights load; ``load_weights`` then fills it.

    Attributes:
        name: the model config's name (``dino_vits8``).
        kind: ``"vit"`` or ``"cnn"``.
        img_size: square input side in pixels.
        mean, std: per-channel normalisation of RGB in [0, 1].
        labels: class names when the model has a classifier head, else None.
    """

    kind: str = ""
    captures: tuple[str, ...] = ()  # what ``capture`` can hook: "cls_attention", "features"

    def __init__(self, name: str, img_size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.name = name
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= 0:
            raise ValueError(f"model.img_size={img_size}: expected a positive int (pixels)")
        self.img_size = int(img_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.labels: list[str] | None = None

    @property
    def num_layers(self) -> int:
        raise NotImplementedError

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], (B, 3, H, W) -> the model's input."""
        return (x - self.mean) / self.std

    def logits(self, x: torch.Tensor) -> torch.Tensor | None:
        """Forward pass on a normalised batch; class logits (B, C) or None without a head."""
        raise NotImplementedError

    def capture(self, layers: Sequence[int], what: str) -> tuple[list[tuple[nn.Module, Hook]], dict[int, torch.Tensor]]:
        """Hooks that fill a dict ``layer -> (B, C_or_H, h, w)`` during one forward pass.

        For ``cls_attention``: the CLS row of each head over the patch tokens, (B, H, h, w).
        For ``features``: the layer's patch features on its grid, (B, C, h, w).
        """
        raise NotImplementedError

    def _load_checked(self, module: nn.Module, sd: dict[str, torch.Tensor]) -> None:
        """Load ``sd`` into ``module``; a checkpoint for another architecture is a WeightsError naming keys."""
        from .errors import WeightsError

        own = module.state_dict()
        wrong = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in sd.items()
                 if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            raise WeightsError(f"model {self.name}: checkpoint tensors of the wrong shape for {type(module).__name__}: "
                               f"{', '.join(wrong[:3])}{'...' if len(wrong) > 3 else ''}; is it another model size?")
        missing, unexpected = module.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise WeightsError(f"model {self.name}: checkpoint does not fit {type(module).__name__}: "
                               f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                               f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")

    def check_capture(self, capture: str, method: str | None = None) -> None:
        """Raise ValueError naming the method and model when this model cannot capture ``capture``."""
        if capture not in self.captures:
            need = "attention (a ViT)" if capture in ("cls_attention", "qk") else capture
            raise ValueError(f"method={method or capture} does not apply to model {self.name} ({self.kind}): "
                             f"it needs {need}")

    @torch.no_grad()
    def extract(self, x: torch.Tensor, layers: Sequence[int], capture: str) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        """Run one forward pass and capture every requested layer.

        Args:
            x: RGB in [0, 1], (B, 3, S, S) with S = ``img_size``.
            layers: non-negative layer indices (see ``select_indices``).
            capture: ``cls_attention`` (ViT) or ``features``.

        Returns:
            (captured, logits): ``captured[layer]`` is (B, K, h, w) float32; logits (B, C) or None.

        Raises:
            RuntimeError: a requested layer produced nothing (the hook never fired).
        """
        self.check_capture(capture)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(x.shape)}")
        hooks, store = self.capture(layers, capture)
        with forward_hooks(hooks):
            logits = self.logits(self.normalize(x))
        missing = [layer for layer in layers if layer not in store]
        if missing:
            raise RuntimeError(f"model {self.name}: layers {missing} were not captured during the forward pass")
        return {layer: store[layer] for layer in layers}, logits
