"""ROAD and AOPC: removal with noisy linear imputation (Rong et al. 2022, "A Consistent and Efficient
Evaluation Strategy for Attribution Methods").

Deletion (``metrics.faithfulness``) shows a blurred image on removed cells; the classifier may then
react to the blur's shape, which leaks where the map pointed. ROAD fills removed pixels instead with
**noisy linear imputation**: each removed pixel is the weighted mean of its 8 neighbours (weight 1/6
for the 4 side neighbours, 1/12 for the diagonals; neighbours outside the image are left out and the
weights renormalised), all removed pixels solved together as one sparse linear system per channel,
then Gaussian noise of standard deviation ``noise`` (0.01) is added to the imputed pixels only.

For a map over n cells (each covering its nearest-upsampled pixels), at each removal fraction q of
the paper (10 %, 20 %, ..., 90 %):

- **MoRF**: the ``round(q n)`` most relevant cells are removed; ``road_morf`` is the mean target class
  probability over the fractions (lower = more faithful);
- **LeRF**: the ``round(q n)`` least relevant cells are removed; ``road_lerf`` is that mean (higher =
  more faithful);
- **AOPC** (Samek et al. 2017) over the MoRF curve: ``mean_{k=0..L} (p(x) - p(x_k))`` with ``x_0 = x``
  and ``x_k`` the k-th MoRF image (higher = more faithful). It uses the same forwards as ``road_morf``.

Tied cells are ordered as deletion orders them (``faithfulness.cell_ranks``): where equal values
straddle a fraction's cut, the values are the mean over ``tie_orders`` seeded random orders among them.

The linear system is symmetric positive definite (every removed region borders a kept pixel while a
fraction < 1 is removed); it is solved for every image of a batch at once by Jacobi-preconditioned
conjugate gradients in float64, from a coarse-to-fine fill of the holes, to a relative residual of
``1e-8`` (pixel errors far below the 0.01 noise).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .faithfulness import cell_ranks, check_perturbation
from ..runtime import one_thread

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the paper's removal percentiles
NOISE = 0.01  # the paper's imputation noise (standard deviation, in the units of the image given)
_SIDE, _DIAGONAL = 1 / 6, 1 / 12  # neighbour weights of the paper's imputation


def _neighbour_sum(v: torch.Tensor) -> torch.Tensor:
    """sum_j w_ij v_j over each pixel's in-image neighbours: (..., H, W) -> (..., H, W).

    Eight shifted adds of a zero-padded copy (a float64 depthwise convolution is far slower on CPUs)."""
    h, w = v.shape[-2:]
    p = F.pad(v, (1, 1, 1, 1))
    side = p[..., :h, 1:w + 1] + p[..., 2:, 1:w + 1] + p[..., 1:h + 1, :w] + p[..., 1:h + 1, 2:]
    diagonal = p[..., :h, :w] + p[..., :h, 2:] + p[..., 2:, :w] + p[..., 2:, 2:]
    return _SIDE * side + _DIAGONAL * diagonal


def _coarse_fill(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """A first guess for the removed pixels: the mean of the known ones at ever coarser scales, brought back
    to full size (push-pull). x (N, C, H, W), known (N, 1, H, W) float 0/1 -> (N, C, H, W)."""
    if known.shape[-1] <= 1 and known.shape[-2] <= 1 or bool((known > 0).all()):
        return x
    w = F.avg_pool2d(known, 2, ceil_mode=True)
    v = F.avg_pool2d(x * known, 2, ceil_mode=True) / w.clamp_min(1e-12)
    coarse = _coarse_fill(v, (w > 0).to(known.dtype))
    up = F.interpolate(coarse, size=x.shape[-2:], mode="nearest")
    return torch.where(known > 0, x, up)


def linear_impute(x: torch.Tensor, removed: torch.Tensor, rtol: float = 1e-8, max_iter: int | None = None
                  ) -> torch.Tensor:
    """The paper's linear imputation (without noise) of the removed pixels of each image.

    Each removed pixel equals the weighted mean of its in-image neighbours (side 1/6, diagonal 1/12,
    renormalised over the neighbours that exist); kept pixels are unchanged.

    Args:
        x: (N, C, H, W) images.
        removed: (N, H, W) bool, pixels to impute; no image may have every pixel removed.
        rtol: relative residual at which conjugate gradients stop.
        max_iter: iterations at most (default ``4 (H + W)``).

    Returns:
        (N, C, H, W) in ``x``'s dtype.

    Raises:
        ValueError: an image with every pixel removed (nothing to impute from), or mismatched shapes.
    """
    if removed.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(f"linear_impute: expected removed (N, H, W) = {(x.shape[0], *x.shape[-2:])}, "
                         f"got {tuple(removed.shape)}")
    if bool(removed.flatten(1).all(1).any()):
        raise ValueError("linear_impute: an image has every pixel removed; nothing to impute from")
    if x.device.type == "cpu":  # many small element-wise ops: extra OpenMP threads on busy cores cost more
        with one_thread():
            return _solve(x, removed, rtol, max_iter)
    return _solve(x, removed, rtol, max_iter)


def _solve(x: torch.Tensor, removed: torch.Tensor, rtol: float, max_iter: int | None) -> torch.Tensor:
    n, c, h, w = x.shape
    dtype = torch.float64
    xs = x.to(dtype)
    unknown = removed.to(dtype).unsqueeze(1)  # (N, 1, H, W)
    known = 1 - unknown
    neighbours = _neighbour_sum
    degree = neighbours(torch.ones(1, 1, h, w, dtype=dtype, device=x.device))  # sum of in-image weights

    def apply(v: torch.Tensor) -> torch.Tensor:  # (D - W_uu) v on the unknowns, 0 elsewhere
        return (degree * v - neighbours(v * unknown)) * unknown

    rhs = neighbours(xs * known) * unknown  # W_uk x_k
    v = _coarse_fill(xs * known, known) * unknown
    r = rhs - apply(v)
    z = r / degree
    p = z.clone()
    rz = (r * z).sum((2, 3), keepdim=True)
    bound = (rtol * rhs.norm(dim=(2, 3), keepdim=True)) ** 2
    for _ in range(max_iter if max_iter is not None else 4 * (h + w)):
        if bool(((r * r).sum((2, 3), keepdim=True) <= bound).all()):
            break
        ap = apply(p)
        alpha = rz / (p * ap).sum((2, 3), keepdim=True).clamp_min(1e-300)
        v = v + alpha * p
        r = r - alpha * ap
        z = r / degree
        rz_new = (r * z).sum((2, 3), keepdim=True)
        p = z + rz_new / rz.clamp_min(1e-300) * p
        rz = rz_new
    return torch.where(unknown > 0, v, xs).to(x.dtype)


def noisy_linear_impute(x: torch.Tensor, removed: torch.Tensor, noise: float = NOISE,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """``linear_impute`` plus Gaussian noise of std ``noise`` on the imputed pixels (ROAD's imputation).

    Args:
        x: (N, C, H, W) images; removed: (N, H, W) bool.
        noise: standard deviation, in the units of ``x``.
        generator: a CPU generator for the noise (drawn on the CPU, so the same on every device).

    Returns:
        (N, C, H, W).
    """
    out = linear_impute(x, removed)
    if noise:
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
        out = out + noise * eps * removed.unsqueeze(1).to(x.dtype)
    return out


def removed_counts(n: int, fractions: Sequence[float]) -> torch.Tensor:
    """Cells removed at each fraction: ``round(q n)``, at most ``n - 1`` (a tiny grid keeps one cell to impute
    from: 0.9 of 4 cells removes 3), (F,) int64."""
    return torch.round(torch.tensor(list(fractions), dtype=torch.float64) * n).long().clamp_max(max(n - 1, 0))


def _tied_at(flat: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Maps (..., n) whose order among equal values decides which cells some cut removes: (...) bool.
    A MoRF cut after c cells and a LeRF cut after n - c cells, in the descending order."""
    n = flat.shape[-1]
    values = flat.sort(dim=-1, descending=True).values
    cuts = torch.cat([counts, n - counts])
    cuts = cuts[(cuts > 0) & (cuts < n)].to(values.device)
    if not cuts.numel():
        return torch.zeros(flat.shape[:-1], dtype=torch.bool, device=flat.device)
    return (values[..., cuts - 1] == values[..., cuts]).any(-1)


@torch.no_grad()
def road(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, maps: torch.Tensor, target: torch.Tensor,
         fractions: Sequence[float] = FRACTIONS, batch_size: int = 16, softmax: bool = True, noise: float = NOISE,
         tie_orders: int = 4, seed: int = 0, curves: bool = False) -> torch.Tensor:
    """ROAD MoRF and LeRF and AOPC of every map of a batch.

    Args:
        forward: (B', 3, H, W) images as ``x`` is given -> logits (B', C) (or probabilities, ``softmax=False``).
        x: (B, 3, H, W) images; the imputation is linear, so it commutes with a per-channel normalisation;
            the noise is in ``x``'s units.
        maps: (B, K, h, w) maps on their grid.
        target: (B,) class per image.
        fractions: removal fractions in (0, 1) (the paper's 0.1..0.9).
        batch_size: perturbed images imputed and evaluated at once.
        softmax: apply a softmax to ``forward``'s output.
        noise: imputation noise (std).
        tie_orders: random orders averaged for maps with ties across a cut (>= 1), or 0 for raster order.
        seed: seed of the tie orders and of the noise.
        curves: return the curves instead of their summaries.

    Returns:
        (B, K, 3) float32: ``road_morf``, ``road_lerf``, ``aopc``; or with ``curves``, (B, K, 2, F):
        the probabilities after MoRF and LeRF removal at each fraction (mean over tie orders).

    Raises:
        ValueError: fractions outside (0, 1), a bad ``tie_orders``, mismatched shapes.

    Example:
        >>> forward = lambda z: z.mean(dim=(2, 3))
        >>> tuple(road(forward, torch.rand(1, 3, 8, 8), torch.rand(1, 2, 4, 4), torch.tensor([0])).shape)
        (1, 2, 3)
    """
    fractions = [float(q) for q in fractions]
    if not fractions or not all(0 < q < 1 for q in fractions):
        raise ValueError(f"road: fractions={fractions}: expected fractions in (0, 1)")
    check_perturbation("road", x, maps, target, tie_orders)
    b, k, h, w = maps.shape
    size = tuple(x.shape[-2:])
    n = h * w
    target = target.long().to(x.device)
    flat = maps.reshape(b * k, n).float()
    counts = removed_counts(n, fractions)

    def prob(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        out = forward(images).float()
        out = out.softmax(-1) if softmax else out
        return out.gather(1, classes[:, None])[:, 0].cpu().double()

    first = 0 if tie_orders == 0 else 1
    ranks, owner = [cell_ranks(flat, first, seed)], [torch.arange(b * k)]
    tied = _tied_at(flat, counts).cpu() if tie_orders > 1 else torch.zeros(b * k, dtype=torch.bool)
    if tied.any():
        which = tied.nonzero()[:, 0]
        for order in range(2, tie_orders + 1):
            ranks.append(cell_ranks(flat[which.to(flat.device)], order, seed))
            owner.append(which)
    rank, owner = torch.cat(ranks), torch.cat(owner)  # (V, n) ranks, (V,) map index of each variant
    v_img = owner // k
    nf = len(fractions)
    mode, vi, fi = (t.reshape(-1) for t in torch.meshgrid(torch.arange(2), torch.arange(rank.shape[0]),
                                                             torch.arange(nf), indexing="ij"))
    values = torch.empty(mode.numel(), dtype=torch.float64)
    generator = torch.Generator().manual_seed(int(seed))
    for start in range(0, mode.numel(), batch_size):
        sl = slice(start, start + batch_size)
        m_, v_, f_ = mode[sl], vi[sl], fi[sl]
        c = counts[f_].to(rank.device)[:, None]
        r = rank[v_.to(rank.device)]
        cut = torch.where(m_.to(rank.device)[:, None] == 0, r < c, r >= n - c)  # MoRF: the top c; LeRF: the last c
        removed = F.interpolate(cut.view(-1, 1, h, w).float(), size=size, mode="nearest")[:, 0].bool().to(x.device)
        img = v_img[v_].to(x.device)
        images = noisy_linear_impute(x[img], removed, noise, generator)
        values[sl] = prob(images, target[img])
    curve = torch.zeros(2, b * k, nf, dtype=torch.float64)
    curve.index_put_((mode, owner[vi], fi), values, accumulate=True)
    used = torch.zeros(b * k, dtype=torch.float64).index_add_(0, owner, torch.ones(len(owner), dtype=torch.float64))
    curve = curve / used.view(1, -1, 1)
    if curves:
        return curve.float().view(2, b, k, nf).permute(1, 2, 0, 3).contiguous()
    p_x = prob(x, target)[torch.arange(b * k) // k]
    morf, lerf = curve[0].mean(-1), curve[1].mean(-1)
    aopc = (p_x[:, None] - curve[0]).sum(-1) / (nf + 1)  # the k = 0 term, p(x) - p(x), is 0
    return torch.stack([morf, lerf, aopc], -1).float().view(b, k, 3)
