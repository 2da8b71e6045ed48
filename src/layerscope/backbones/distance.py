"""Mean attention distance per head (Dosovitskiy et al. 2020, Fig. 7), from a block's own q and k.

For every query patch, the attention-weighted mean Euclidean distance (input pixels) between its
centre and the key patches' centres, averaged over query patches. Prefix tokens (CLS, registers)
are left out as queries and as keys, by one of two rules (``metrics.attention_distance_rule``):

- ``renormalised``: each query's softmax runs over the patch keys only, which is the model's own
  attention row restricted to the patches and renormalised to sum to 1 (a distribution over patches);
- ``raw``: the model's attention rows as they are (softmax over every key), the patch rows and
  columns kept, the prefix columns' mass dropped and not renormalised (``A[..., 1:, 1:]`` of the widely
  copied implementation, e.g. of Dosovitskiy et al.'s figure and Walmer et al. 2023). Where the prefix
  tokens draw most of the attention (DINOv2's early blocks) it is far smaller than ``renormalised``.

The unit is input pixels here; ``metrics.attention_distance_unit=fraction`` divides by the image side
(Walmer et al. 2023's [0, 1] grid) where the run writes its rows.
"""
from __future__ import annotations

import torch

from ..config.schema import DistanceRule, DistanceUnit, choices
from .attention import attention_blocks

CHUNK_FLOATS = 1 << 21  # floats of one (B, H, chunk, P) block: 8 MB in float32 (cache-sized blocks run faster)


def patch_distances(grid: tuple[int, int], patch_size: float, device: torch.device | None = None) -> torch.Tensor:
    """Euclidean distances between patch centres on a (h, w) grid, in input pixels.

    Args:
        grid: patch grid (h, w), patches in raster order.
        patch_size: side of a patch in input pixels.

    Returns:
        (h w, h w) float32.
    """
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], -1) * float(patch_size)
    return torch.cdist(centres, centres).float().to(device)


RULES = choices(DistanceRule)  # renormalised, raw
UNITS = choices(DistanceUnit)  # pixels, fraction
# the pass's capture of each rule, in pixels (a name each: a cached entry of one rule never serves the other)
EXTRAS = {"renormalised": "attention_distance", "raw": "attention_distance_raw"}


def check_conventions(rule: str, unit: str) -> None:
    """ValueError naming the option when ``metrics.attention_distance_rule`` or ``_unit`` is unknown."""
    if rule not in RULES:
        raise ValueError(f"metrics.attention_distance_rule={rule}: expected one of {', '.join(RULES)}")
    if unit not in UNITS:
        raise ValueError(f"metrics.attention_distance_unit={unit}: expected one of {', '.join(UNITS)}")


def attention_distance(q: torch.Tensor, k: torch.Tensor, scale: float, num_prefix: int, grid: tuple[int, int],
                       patch_size: float, chunk: int | None = None, rule: str = "renormalised") -> torch.Tensor:
    """Mean attention distance of every head, patch queries over patch keys.

    Builds the attention rows of ``chunk`` queries at a time, so at most a (B, H, chunk, P) block
    exists, never the (B, H, N, N) matrix.

    Args:
        q: queries after any q-norm, (B, H, N, D).
        k: keys after any k-norm, (B, H, N, D).
        scale: the model's attention scale (usually D ** -0.5).
        num_prefix: leading non-patch tokens (1 for CLS, 5 for CLS + 4 registers).
        grid: patch grid (h, w) with h * w = N - num_prefix.
        patch_size: patch side in input pixels (the distance unit).
        chunk: query rows per block; default: as many as fit ``CHUNK_FLOATS``.
        rule: ``renormalised`` (a_ij the softmax over the patch keys) or ``raw`` (a_ij the softmax over
            every key, its patch columns kept as they are).

    Returns:
        (B, H) float32: mean over query patches of sum_j a_ij d_ij over the patch keys j.
    """
    if rule not in RULES:
        raise ValueError(f"metrics.attention_distance_rule={rule}: expected one of {', '.join(RULES)}")
    if q.ndim != 4 or q.shape != k.shape:
        raise ValueError(f"expected q and k as (B, H, N, D), got {tuple(q.shape)} and {tuple(k.shape)}")
    b, h, n, _ = q.shape
    p = grid[0] * grid[1]
    if n - num_prefix != p:
        raise ValueError(f"{n} tokens minus {num_prefix} prefix tokens do not fill a {grid[0]}x{grid[1]} patch grid")
    dist = patch_distances(grid, patch_size, q.device)
    keys = k[:, :, num_prefix:] if rule == "renormalised" else k  # the softmax over patch keys only, or every key
    step = int(chunk) if chunk else max(1, CHUNK_FLOATS // max(1, b * h * keys.shape[2]))
    drop = 0 if rule == "renormalised" else num_prefix
    total = torch.zeros(b, h, dtype=torch.float64, device=q.device)
    for start, attn in attention_blocks(q[:, :, num_prefix:], keys, scale, step):  # patch queries
        total += (attn[..., drop:] * dist[start:start + step]).sum(-1).sum(-1, dtype=torch.float64)
    return (total / p).float()
