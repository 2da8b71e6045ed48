"""Bringing grid maps to image resolution."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MODES = ("nearest", "bilinear")


def upsample(maps: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """Resize maps (..., h, w) to (..., H, W).

    ``nearest`` repeats each patch (the DINO pictures); ``bilinear`` smooths between patch
    centres. Bool masks are always resized nearest.
    """
    import torch  # here: ``layerscope.methods`` re-exports this function and imports without torch
    import torch.nn.functional as F

    if mode not in MODES:
        raise ValueError(f"upsample={mode!r}: expected one of {', '.join(MODES)}")
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    x = maps.reshape(-1, 1, h, w)
    if maps.dtype == torch.bool:
        return F.interpolate(x.float(), size=size, mode="nearest").bool().reshape(*lead, *size)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(x.float(), size=size, mode=mode, **kwargs).reshape(*lead, *size)
