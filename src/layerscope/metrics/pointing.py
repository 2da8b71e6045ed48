"""Pointing game with a tolerance in pixels, as in the TorchRay benchmark (Zhang et al. 2016, EBP)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pointing_game_tolerance(scores: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int],
                            tolerance_px: float = 15) -> torch.Tensor:
    """1.0 where a map's maximum point lies within ``tolerance_px`` of a mask pixel, else 0.0.

    TorchRay's definition: the map is upsampled to the mask's resolution (bilinear,
    ``align_corners=False``), its maximum pixel (the first in raster order on ties) is the point,
    and it hits when some mask pixel lies at a Euclidean distance strictly below the tolerance
    (``du^2 + dv^2 < tolerance^2``). A tolerance of 0 asks for the point itself to be on the mask.

    Args:
        scores: maps on their grid cells, (..., n) with n = h * w in raster order.
        mask: (H, W) bool, the ground truth at pixel resolution.
        grid: (h, w) of the maps.
        tolerance_px: tolerance in pixels, >= 0 (15 in TorchRay's benchmark).

    Returns:
        (...,) float32: 1.0 hit, 0.0 miss; NaN for every map when the mask is empty.

    Raises:
        ValueError: a negative tolerance (naming ``metrics.pointing_tolerance``) or mismatched shapes.
    """
    if isinstance(tolerance_px, bool) or not isinstance(tolerance_px, (int, float)) or not tolerance_px >= 0:
        raise ValueError(f"metrics.pointing_tolerance={tolerance_px!r}: expected a distance in pixels >= 0")
    h, w = grid
    if scores.shape[-1] != h * w or mask.ndim != 2:
        raise ValueError(f"pointing_game_tolerance: expected scores (..., {h * w}) and a mask (H, W); got "
                         f"{tuple(scores.shape)} and {tuple(mask.shape)}")
    lead = scores.shape[:-1]
    mask = mask.bool().to(scores.device)
    if not mask.any():
        return torch.full(lead, float("nan"))
    big_h, big_w = mask.shape
    up = F.interpolate(scores.reshape(-1, 1, h, w).float(), size=(big_h, big_w), mode="bilinear", align_corners=False)
    top = up.flatten(1).argmax(-1)  # (P,)
    py, px = top // big_w, top % big_w
    r = int(math.ceil(tolerance_px))
    d = torch.arange(-r, r + 1, device=scores.device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    near = (dy ** 2 + dx ** 2 < tolerance_px ** 2) if tolerance_px > 0 else (dy == 0) & (dx == 0)
    dy, dx = dy[near], dx[near]  # the disc of accepted offsets, (m,)
    padded = F.pad(mask[None, None].float(), (r, r, r, r))[0, 0].bool()  # outside the image: no mask
    hit = padded[py[:, None] + r + dy, px[:, None] + r + dx].any(-1)
    return hit.float().reshape(lead).cpu()
