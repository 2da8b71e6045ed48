"""Pointing game with a tolerance in pixels, as in the TorchRay benchmark (Zhang et al. 2016, EBP)."""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .bools import any_true


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


@functools.lru_cache(maxsize=64)
def _runs_reading(n: int, size: int, device: torch.device) -> torch.Tensor:
    """(n, m) long per cell of an axis of ``n`` cells resized to ``size`` pixels, the runs of ``_axis`` whose
    pixels read it (at most 3: a run with its cell below, one with it above, one on it alone), -1 past them."""
    lo, hi, _, _, start, _ = _axis(n, size, device)
    cell = torch.arange(n, device=device)[:, None]
    reads = (lo[start] == cell) | (hi[start] == cell)  # (n, A)
    runs = torch.arange(start.numel(), device=device).expand_as(reads)
    return torch.where(reads, runs, -1).sort(1, descending=True).values[:, :max(1, int(reads.sum(1).max()))]


@functools.lru_cache(maxsize=64)
def _heaviest_pixel(n: int, size: int, device: torch.device) -> torch.Tensor:
    """(n,) per cell of an axis of ``n`` cells resized to ``size`` pixels, the first pixel that weighs it the most
    (``_axis``' weights; computed once per axis, not per map)."""
    lo, hi, w_lo, w_hi = _axis(n, size, device)[:4]
    cell = torch.arange(n, device=device)[:, None]
    return torch.where(lo == cell, w_lo, torch.where(hi == cell, w_hi, -1.0)).argmax(1)


def pointing_game_tolerance_fast(scores: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int],
                                 tolerance_px: float = 15) -> torch.Tensor:
    """``pointing_game_tolerance`` without upsampling every map to the mask's size: the same values, exactly.

    A bilinear pixel is a weighted mean of at most 4 cells, and over a block of pixels that read the same
    4 cells it peaks at a corner of the block. So per map: blocks whose largest cell falls below the value
    near the largest cell are dropped, the corners of the others bound them, and only the pixels of blocks
    that can still hold the maximum are evaluated (in float64, with the kernel's own weights). Every pixel
    within the kernel's rounding of the best one is a possible maximum: when they all hit (or all miss),
    that is the answer; otherwise (a near tie across the disc's edge, a flat map, a non-finite value) the
    map is scored by upsampling it, as ``pointing_game_tolerance`` does.

    Args:
        scores: (..., n) maps on their grid cells, raster order.
        mask: (H, W) bool ground truth.
        grid: (h, w) of the maps.
        tolerance_px: tolerance in pixels, >= 0.

    Returns:
        (...,) float32, as ``pointing_game_tolerance``.
    """
    _check(scores, mask[None] if mask.ndim == 2 else mask, grid, tolerance_px)
    return pointing_game_tolerance_batch(scores.reshape(1, -1, scores.shape[-1]), mask[None], grid, tolerance_px,
                                         fast=True).reshape(scores.shape[:-1])


def pointing_game_tolerance_batch(scores: torch.Tensor, masks: torch.Tensor, grid: tuple[int, int],
                                  tolerance_px: float = 15, fast: bool | None = None,
                                  sums: tuple | None = None) -> torch.Tensor:
    """``pointing_game_tolerance`` of B images' R maps at once, each image with its own mask: the same values.

    Args:
        scores: (B, R, n) maps on their grid cells, raster order, on any device.
        masks: (B, H, W) bool ground truths.
        grid: (h, w) of the maps.
        tolerance_px: tolerance in pixels, >= 0.
        fast: find each maximum as ``pointing_game_tolerance_fast`` does (True), by upsampling every map
            (False), or by the cheaper of the two for these shapes and this device (None: the fast way on a
            CPU where the pixels far outnumber the cells, e.g. a ViT's 84 maps at 448 px; a GPU upsamples).
        sums: ``mask_sums(masks, tolerance_px)``, when the same masks serve maps of several grids.

    Returns:
        (B, R) float32 on the CPU: 1.0 hit, 0.0 miss, NaN for every map of an image whose mask is empty.
    """
    _check(scores, masks, grid, tolerance_px)
    b, r, n = scores.shape
    device = scores.device
    masks = masks.bool().to(device)
    big_h, big_w = masks.shape[-2:]
    v = scores.reshape(b * r, n).float()
    image = torch.arange(b, device=device).repeat_interleave(r)
    if fast is None:
        # the fast way's cost grows with the cells (up to about 12 ns each) from a floor of many small ops (about
        # 0.9 ms), the upsample's with the pixels (about 2 ns each with NumPy's argmax; measured on 2 cores): the
        # fast way where the pixels outnumber 6 times the cells by 2^18, e.g. 12 maps of 224 px on a grid of 56
        # cells or fewer
        fast = device.type == "cpu" and b * r * (big_h * big_w - 6 * n) >= 2 ** 18
    result = torch.full((b * r,), float("nan"), device=device)
    sums = sums if sums is not None else mask_sums(masks, tolerance_px)
    todo = (sums[0][:, :, -1].amax(1) > 0)[image]  # the maps of images with mask pixels (in their rows' totals)
    if not bool(todo.any()):
        return result.view(b, r).cpu()
    maps = torch.nonzero(todo).flatten()
    slow = maps
    if fast:
        hit, done = _fast_argmax_hits(v[maps], image[maps], sums, grid, (big_h, big_w), float(tolerance_px))
        result[maps[done]] = hit[done]
        slow = maps[~done]
    if slow.numel():
        result[slow] = _upsampled_hits(v[slow], image[slow], sums, grid, (big_h, big_w), float(tolerance_px))
    return result.view(b, r).cpu()


def _check_tolerance(tolerance_px: float) -> None:
    if isinstance(tolerance_px, bool) or not isinstance(tolerance_px, (int, float)) or not tolerance_px >= 0:
        raise ValueError(f"metrics.pointing_tolerance={tolerance_px!r}: expected a distance in pixels >= 0")


def _check(scores: torch.Tensor, masks: torch.Tensor, grid: tuple[int, int], tolerance_px: float) -> None:
    _check_tolerance(tolerance_px)
    h, w = grid
    if scores.shape[-1] != h * w or masks.ndim != 3:
        raise ValueError(f"pointing_game_tolerance: expected scores (..., {h * w}) and a mask (H, W); got "
                         f"{tuple(scores.shape)} and {tuple(masks.shape[1:])}")


def _upsampled_hits(v: torch.Tensor, image: torch.Tensor, sums: tuple, grid: tuple[int, int],
                    size: tuple[int, int], tolerance_px: float, chunk_pixels: int = 2 ** 24) -> torch.Tensor:
    """``pointing_game_tolerance``'s way for maps v (P, n) of images ``image`` (P,): upsample, argmax, hit."""
    h, w = grid
    big_h, big_w = size
    step = max(1, chunk_pixels // (big_h * big_w))  # bounds the upsampled block's memory
    # NumPy's argmax (vectorised: several times torch's on a CPU) gives the same first maximum where every value
    # is finite (then so are the largest and the smallest: a NaN reaches both); a bilinear mix of finite values is
    # finite
    numpy_argmax = v.device.type == "cpu" and math.isfinite(v.amax()) and math.isfinite(v.amin())
    out = []
    for i in range(0, v.shape[0], step):
        up = F.interpolate(v[i:i + step].reshape(-1, 1, h, w), size=size, mode="bilinear", align_corners=False)
        top = torch.from_numpy(up.flatten(1).numpy().argmax(-1)) if numpy_argmax else up.flatten(1).argmax(-1)
        out.append(_hits_at(sums, image[i:i + step], top // big_w, top % big_w).float())
    return torch.cat(out)


def _fast_argmax_hits(v: torch.Tensor, image: torch.Tensor, sums: tuple, grid: tuple[int, int],
                      size: tuple[int, int], tolerance_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The hit of each map's upsampled maximum without the upsample (``pointing_game_tolerance_fast``).

    Args:
        v: (P, n) float32 maps; image: (P,) their images' rows in ``sums``.

    Returns:
        (hit, done): (P,) float32 hits, and (P,) bool where the hit is certain (the rest need the upsample).
    """
    h, w = grid
    big_h, big_w = size
    device = v.device
    maps = v.shape[0]
    ys, xs = _axis(h, big_h, device), _axis(w, big_w, device)
    if ys is None or xs is None or maps == 0:
        return torch.zeros(maps, device=device), torch.zeros(maps, dtype=torch.bool, device=device)
    (ylo, yhi, wy_lo, wy_hi, y_start, y_len), (xlo, xhi, wx_lo, wx_hi, x_start, x_len) = ys, xs
    flat = v.double().flatten()
    largest = v.abs().amax(1)  # NaN or infinite where a map is not finite
    finite = torch.isfinite(largest)
    delta = _ROUNDING * largest.double().nan_to_num(0.0)  # (P,)

    def value(p: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The exact weighted sums at pixels (y, x) of maps p, float64: y (K, m) and x (K, l) pixels of a block
        each (reading the cells of its first pixel; past a block's end: meaningless) -> (K, m, l). The block's
        two rows of cells are mixed along x once per column, then along y."""
        base, first = p * (h * w), y[:, 0]
        r_lo, r_hi = (base + ylo.take(first) * w)[:, None], (base + yhi.take(first) * w)[:, None]
        c_lo, c_hi = xlo.take(x[:, :1]), xhi.take(x[:, :1])
        left, right = wx_lo.take(x), wx_hi.take(x)
        top = flat.take(r_lo + c_lo) * left + flat.take(r_lo + c_hi) * right  # (K, l)
        bottom = flat.take(r_hi + c_lo) * left + flat.take(r_hi + c_hi) * right
        return top[:, None, :] * wy_lo.take(y)[:, :, None] + bottom[:, None, :] * wy_hi.take(y)[:, :, None]

    def per_map_max(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return torch.full((maps,), float("-inf"), dtype=torch.float64, device=device).scatter_reduce(0, p, r, "amax")

    # a lower bound on each map's maximum: the pixel that weighs its largest cell the most
    if device.type == "cpu" and bool(finite.all()):  # NumPy's argmax: the same first maximum, several times faster
        cell = torch.from_numpy(v.numpy().argmax(1))
    else:
        cell = v.nan_to_num(float("-inf")).argmax(1)
    ci, cj = cell // w, cell % w
    y0, x0 = _heaviest_pixel(h, big_h, device).take(ci), _heaviest_pixel(w, big_w, device).take(cj)
    # no pixel whose cells are all below it
    floor = value(torch.arange(maps, device=device), y0[:, None], x0[:, None]).flatten() - 3 * delta
    # 1. blocks of pixels reading the same 2 x 2 cells whose largest cell reaches that bound: the blocks that read
    # a cell reaching it (few: the cells near the peak), each block once, in (map, row, column) order
    # compared in float32 with the bound rounded up to a float32 (t >= bound exactly where t >= that, for a
    # float32 t), NaN for a map that is not finite (no block)
    bound = floor.float()
    bound = torch.where(bound.double() < floor, torch.nextafter(bound, torch.full_like(bound, float("inf"))), bound)
    bound = torch.where(finite, bound, torch.full_like(bound, float("nan")))
    p, cell = torch.nonzero(v >= bound[:, None], as_tuple=True)
    ry = _runs_reading(h, big_h, device).index_select(0, cell // w)  # (H, m) each
    rx = _runs_reading(w, big_w, device).index_select(0, cell % w)
    n_a, n_c = y_start.numel(), x_start.numel()
    block = (p[:, None, None] * n_a + ry[:, :, None]) * n_c + rx[:, None, :]
    reached = torch.zeros(maps * n_a * n_c, dtype=torch.bool, device=device)
    reached[block[(ry >= 0)[:, :, None] & (rx >= 0)[:, None, :]]] = True
    block = torch.nonzero(reached).flatten()
    p, a, c = block // (n_a * n_c), block // n_c % n_a, block % n_c
    # 2. their corners: a block peaks at one of them within the weights' rounding
    y_last, x_last = y_start + y_len - 1, x_start + x_len - 1
    corners = value(p, torch.stack([y_start.take(a), y_last.take(a)], 1),
                    torch.stack([x_start.take(c), x_last.take(c)], 1)).flatten(1).amax(1)
    best, margin = per_map_max(p, corners), delta.take(p)
    keep = corners + margin >= best.take(p) - 2 * margin
    p, a, c = p[keep], a[keep], c[keep]
    pixels = torch.zeros(maps, dtype=torch.long, device=device).index_add_(0, p, y_len.take(a) * x_len.take(c))
    done = finite & (pixels > 0) & (pixels <= _MAX_CANDIDATES)
    sel = done.take(p)
    p, a, c = p[sel], a[sel], c[sel]
    hit = torch.zeros(maps, dtype=torch.float32, device=device)
    if p.numel():
        # 3. every pixel of the blocks left: those within rounding of the best are the possible maxima
        rows, columns = y_len.take(a)[:, None], x_len.take(c)[:, None]  # (K, 1) each
        dy, dx = torch.arange(int(rows.max()), device=device), torch.arange(int(columns.max()), device=device)
        y = (y_start.take(a)[:, None] + dy).clamp_max(big_h - 1)  # (K, bh): padded past a block's end (then masked)
        x = (x_start.take(c)[:, None] + dx).clamp_max(big_w - 1)  # (K, bw)
        r = value(p, y, x)  # (K, bh, bw)
        r = torch.where((dy < rows)[:, :, None] & (dx < columns)[:, None, :], r, float("-inf"))
        best = per_map_max(p, r.flatten(1).amax(1))
        k, dy, dx = torch.nonzero(r >= (best.take(p) - 2 * delta.take(p))[:, None, None], as_tuple=True)
        p = p.take(k)
        hits = _hits_at(sums, image.take(p), y[k, dy], x[k, dx]).float()
        hit = torch.zeros(maps, dtype=torch.float32, device=device).scatter_reduce(0, p, hits, "amax")
        lowest = torch.ones(maps, dtype=torch.float32, device=device).scatter_reduce(0, p, hits, "amin")
        done = done & (hit == lowest)
    return hit, done


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


def mask_sums(masks: torch.Tensor, tolerance_px: float) -> tuple:
    """What ``pointing_game_tolerance_batch`` reads of masks (B, H, W): their row-wise cumulative sums, padded
    so that every disc row's run of columns stays inside, with the disc's rows; computed once per batch."""
    _check_tolerance(tolerance_px)
    r, dy, half = _disc_rows(float(tolerance_px), masks.device)
    side = r + 1
    # (B, H + 2r, 1 + W + 2 side) bytes, their running sums in float32 (exact counts): [:, :, j] the mask pixels left
    # of column j of the padded (B, H + 2r, W + 2 side) masks
    padded = F.pad(masks.bool().to(torch.uint8), (side + 1, side, r, r))
    return torch.cumsum(padded, 2, dtype=torch.float32), r, side, dy, half


def _hits_at(sums: tuple, image: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Whether a mask pixel of ``image`` lies strictly within the tolerance of each point (y, x), (P,) bool.

    A row of the disc is a run of columns, whose mask pixels are a difference of two row-wise cumulative
    sums: 2 r + 1 lookups per point instead of one per pixel of the disc. Outside the image: no mask.
    """
    table, r, side, dy, half = sums
    _, rows, columns = table.shape
    start = ((image * rows + y + r)[:, None] + dy) * columns + x[:, None] + side  # (P, m) each disc row's centre
    flat = table.view(-1)  # one gather per end of the runs (indexing the (B, H, W) table is slower)
    return any_true(flat.take(start + half + 1) - flat.take(start - half) > 0, -1)


def _hits(mask: torch.Tensor, y: torch.Tensor, x: torch.Tensor, tolerance_px: float) -> torch.Tensor:
    """Whether a mask pixel lies strictly within ``tolerance_px`` of each point (y, x), as the pointing game asks."""
    sums = mask_sums(mask[None], tolerance_px)
    return _hits_at(sums, torch.zeros_like(y), y, x)
