"""Pointing game with a tolerance in pixels, as in the TorchRay benchmark (Zhang et al. 2016, EBP)."""
from __future__ import annotations

import functools
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
    hit = _hits(mask, top // big_w, top % big_w, tolerance_px)
    return hit.float().reshape(lead).cpu()


# A bound on how far the bilinear kernel's float32 value of a pixel may lie from the exact weighted sum of its
# (at most 4) source cells, as a multiple of float32's unit roundoff times the map's largest |value|: a 4-term
# convex combination rounds at most ~4 times (measured: <= 3.2), so 32 leaves a wide margin. The same bound
# covers the weights' own rounding (their sum is 1 within a unit roundoff), which lets a block of pixels that
# reads the same cells peak at one of its corners up to 4 units.
_ROUNDING = 32 * 2.0 ** -24
_MAX_CANDIDATES = 8192  # pixels per map evaluated exactly before a flat map falls back to the full upsample


@functools.lru_cache(maxsize=64)
def _axis(n: int, size: int, device: torch.device) -> tuple[torch.Tensor, ...] | None:
    """One axis of a bilinear resize from ``n`` cells to ``size`` pixels, read from the kernel itself.

    The weights come from resizing one-hot inputs along this axis (the other axis kept at size 1, where
    products by 1 and sums with 0 are exact), so they are the weights the kernel uses.

    Returns:
        (lo, hi, w_lo, w_hi, start, length): per pixel its two source cells (``hi == lo`` where one
        cell has all the weight) and their float64 weights, (size,) each; then the runs of pixels that
        read the same cells: their first pixel and length, (A,) each. None when the kernel is not a
        2-tap interpolation with weights summing to 1 and the upper weight non-decreasing along a run.
    """
    eye = torch.eye(n, device=device).view(n, 1, n, 1)
    weights = F.interpolate(eye, size=(size, 1), mode="bilinear", align_corners=False).view(n, size).t()
    nonzero = weights != 0
    if int(nonzero.sum(1).max()) > 2 or not bool(nonzero.any(1).all()):
        return None
    cells = torch.arange(n, device=device).expand(size, n)
    lo = torch.where(nonzero, cells, n).amin(1)
    hi = torch.where(nonzero, cells, -1).amax(1)
    pixels = torch.arange(size, device=device)
    w_lo, w_hi = weights[pixels, lo].double(), torch.where(hi != lo, weights[pixels, hi], 0).double()
    change = torch.ones(size, dtype=torch.bool, device=device)
    change[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    start = torch.nonzero(change).flatten()
    length = torch.diff(start, append=torch.tensor([size], device=device))
    run = torch.cumsum(change.long(), 0) - 1
    same_run = run[1:] == run[:-1]
    if bool(((w_lo + w_hi - 1).abs() > 2.0 ** -23).any()) or bool((same_run & (w_hi[1:] < w_hi[:-1])).any()):
        return None
    return lo, hi, w_lo, w_hi, start, length


def pointing_game_tolerance_fast(scores: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int],
                                 tolerance_px: float = 15) -> torch.Tensor:
    """``pointing_game_tolerance`` without upsampling every map to the mask's size: the same values, exactly.

    A bilinear pixel is a weighted mean of at most 4 cells, and over a block of pixels that read the same
    4 cells it peaks at a corner of the block. So per map: blocks whose largest cell falls below the value
    near the largest cell are dropped, the corners of the others bound them, and only the pixels of blocks
    that can still hold the maximum are evaluated (in float64, with the kernel's own weights). Every pixel
    within the kernel's rounding of the best one is a possible maximum: when they all hit (or all miss),
    that is the answer; otherwise (a near tie across the disc's edge, a flat map, a non-finite value) the
    map is scored by ``pointing_game_tolerance`` itself.

    Args:
        scores: (..., n) maps on their grid cells, raster order.
        mask: (H, W) bool ground truth.
        grid: (h, w) of the maps.
        tolerance_px: tolerance in pixels, >= 0.

    Returns:
        (...,) float32, as ``pointing_game_tolerance``.
    """
    if isinstance(tolerance_px, bool) or not isinstance(tolerance_px, (int, float)) or not tolerance_px >= 0:
        raise ValueError(f"metrics.pointing_tolerance={tolerance_px!r}: expected a distance in pixels >= 0")
    h, w = grid
    if scores.shape[-1] != h * w or mask.ndim != 2:
        raise ValueError(f"pointing_game_tolerance: expected scores (..., {h * w}) and a mask (H, W); got "
                         f"{tuple(scores.shape)} and {tuple(mask.shape)}")
    lead, device = scores.shape[:-1], scores.device
    mask = mask.bool().to(device)
    if not mask.any():
        return torch.full(lead, float("nan"))
    big_h, big_w = mask.shape
    v = scores.reshape(-1, h * w).float()
    ys, xs = _axis(h, big_h, device), _axis(w, big_w, device)
    if ys is None or xs is None or v.shape[0] == 0:
        return pointing_game_tolerance(scores, mask, grid, tolerance_px)
    (ylo, yhi, wy_lo, wy_hi, y_start, y_len), (xlo, xhi, wx_lo, wx_hi, x_start, x_len) = ys, xs
    maps = v.shape[0]
    flat = v.double().flatten()
    finite = torch.isfinite(v).all(1)
    delta = _ROUNDING * v.abs().amax(1).double().nan_to_num(0.0)  # (P,)

    def value(p: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The exact weighted sum at pixels (y, x) of maps p, float64."""
        base = p * (h * w)
        r_lo, r_hi = base + ylo[y] * w, base + yhi[y] * w
        top = flat[r_lo + xlo[x]] * wx_lo[x] + flat[r_lo + xhi[x]] * wx_hi[x]
        bottom = flat[r_hi + xlo[x]] * wx_lo[x] + flat[r_hi + xhi[x]] * wx_hi[x]
        return top * wy_lo[y] + bottom * wy_hi[y]

    def per_map_max(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return torch.full((maps,), float("-inf"), dtype=torch.float64, device=device).scatter_reduce(0, p, r, "amax")

    # a lower bound on each map's maximum: the pixel that weighs its largest cell the most
    cell = v.nan_to_num(float("-inf")).argmax(1)
    ci, cj = cell // w, cell % w
    y0 = torch.where(ylo == ci[:, None], wy_lo, torch.where(yhi == ci[:, None], wy_hi, -1.0)).argmax(1)
    x0 = torch.where(xlo == cj[:, None], wx_lo, torch.where(xhi == cj[:, None], wx_hi, -1.0)).argmax(1)
    floor = value(torch.arange(maps, device=device), y0, x0) - 3 * delta
    # 1. blocks whose largest cell reaches that bound
    rows = torch.maximum(v.view(-1, h, w)[:, ylo[y_start], :], v.view(-1, h, w)[:, yhi[y_start], :])  # (P, A, w)
    top = torch.maximum(rows[:, :, xlo[x_start]], rows[:, :, xhi[x_start]])  # (P, A, C)
    p, a, c = torch.nonzero((top.double() >= floor[:, None, None]) & finite[:, None, None], as_tuple=True)
    # 2. their corners: a block peaks at one of them within the weights' rounding
    y_last, x_last = y_start + y_len - 1, x_start + x_len - 1
    corners = torch.stack([value(p, y_start[a], x_start[c]), value(p, y_start[a], x_last[c]),
                           value(p, y_last[a], x_start[c]), value(p, y_last[a], x_last[c])], 1).amax(1)
    best = per_map_max(p, corners)
    keep = corners + delta[p] >= best[p] - 2 * delta[p]
    p, a, c = p[keep], a[keep], c[keep]
    pixels = torch.zeros(maps, dtype=torch.long, device=device).index_add_(0, p, y_len[a] * x_len[c])
    fast = finite & (pixels > 0) & (pixels <= _MAX_CANDIDATES)
    sel = fast[p]
    p, a, c = p[sel], a[sel], c[sel]
    result = torch.zeros(maps, dtype=torch.float32, device=device)
    if p.numel():
        # 3. every pixel of the blocks left: those within rounding of the best are the possible maxima
        bh, bw = int(y_len.max()), int(x_len.max())
        dy, dx = torch.arange(bh, device=device), torch.arange(bw, device=device)
        inside = (dy[None, :, None] < y_len[a][:, None, None]) & (dx[None, None, :] < x_len[c][:, None, None])
        y = (y_start[a][:, None, None] + dy[None, :, None]).expand_as(inside)[inside]
        x = (x_start[c][:, None, None] + dx[None, None, :]).expand_as(inside)[inside]
        p = p[:, None, None].expand_as(inside)[inside]
        r = value(p, y, x)
        near = r >= per_map_max(p, r)[p] - 2 * delta[p]
        p, y, x = p[near], y[near], x[near]
        hit = _hits(mask, y, x, tolerance_px).float()
        result = torch.zeros(maps, dtype=torch.float32, device=device).scatter_reduce(0, p, hit, "amax")
        lowest = torch.ones(maps, dtype=torch.float32, device=device).scatter_reduce(0, p, hit, "amin")
        fast = fast & (result == lowest)
    slow = torch.nonzero(~fast).flatten()
    if slow.numel():
        result[slow] = pointing_game_tolerance(v[slow], mask, grid, tolerance_px).to(device)
    return result.reshape(lead).cpu()


@functools.lru_cache(maxsize=16)
def _disc_rows(tolerance_px: float, device: torch.device) -> tuple[int, torch.Tensor, torch.Tensor]:
    """The pointing game's accepted offsets (dy^2 + dx^2 < tolerance^2; only (0, 0) at 0) row by row: a row
    dy of the disc is the run dx in [-half, half]. Returns r = ceil(tolerance) and (m,) dy, half of the rows."""
    r = int(math.ceil(tolerance_px))
    d = torch.arange(-r, r + 1, device=device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    near = (dy ** 2 + dx ** 2 < tolerance_px ** 2) if tolerance_px > 0 else (dy == 0) & (dx == 0)
    half = torch.where(near, dx.abs(), -1).amax(1)  # (2r + 1,), -1 where the row holds no offset
    rows = half >= 0
    return r, d[rows], half[rows]


def _hits(mask: torch.Tensor, y: torch.Tensor, x: torch.Tensor, tolerance_px: float) -> torch.Tensor:
    """Whether a mask pixel lies strictly within ``tolerance_px`` of each point (y, x), as the pointing game asks.

    Per row of the disc, the mask pixels of a run of columns are a difference of two row-wise cumulative
    sums: 2 r + 1 lookups per point instead of one per pixel of the disc. Outside the image: no mask.
    """
    r, dy, half = _disc_rows(float(tolerance_px), mask.device)
    side = r + 1  # columns of padding: a run's start and end stay inside the sums
    padded = F.pad(mask[None].float(), (side, side, r, r))[0]  # (H + 2r, W + 2 side)
    sums = F.pad(torch.cumsum(padded, 1), (1, 0))  # sums[:, j] = mask pixels left of padded column j
    rows = y[:, None] + r + dy  # (P, m)
    right, left = x[:, None] + side + half + 1, x[:, None] + side - half
    return (sums[rows, right] - sums[rows, left] > 0).any(-1)


def tolerant_pointing(scores: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int],
                      tolerance_px: float = 15) -> torch.Tensor:
    """``pointing_game_tolerance`` by the cheaper of two exact routes for these shapes and this device.

    Upsampling every map costs maps x H x W pixels; on a CPU, past about a million of them (a ViT's 84
    maps at 448 px: 17 million), ``pointing_game_tolerance_fast`` evaluates a few hundred pixels per map
    instead. On a GPU the full upsample is cheap and needs no host round trips.
    """
    maps = scores.numel() // max(scores.shape[-1], 1)
    if scores.device.type == "cpu" and maps * mask.shape[-2] * mask.shape[-1] >= 2 ** 20:
        return pointing_game_tolerance_fast(scores, mask, grid, tolerance_px)
    return pointing_game_tolerance(scores, mask, grid, tolerance_px)
