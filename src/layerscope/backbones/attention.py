"""CLS-token attention from a block's own queries and keys, without the N x N matrix."""
from __future__ import annotations

from typing import Iterator

import torch


def cls_attention(q: torch.Tensor, k: torch.Tensor, scale: float, num_prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """Attention of the CLS token (token 0) to every patch token, per head.

    This is row 0 of ``softmax(q k^T * scale)``: the same numbers the model's eager
    attention holds, at O(H x N) cost instead of O(H x N^2). The softmax runs over all
    tokens (prefix tokens included, as in the model); prefix columns (CLS, registers) are
    dropped afterwards without renormalising, as in DINO's ``visualize_attention.py``.

    Args:
        q: queries after any q-norm, (B, H, N, D).
        k: keys after any k-norm, (B, H, N, D).
        scale: the model's attention scale (usually D ** -0.5).
        num_prefix: leading non-patch tokens (1 for CLS, 5 for CLS + 4 registers).
        grid: patch grid (h, w) with h * w = N - num_prefix.

    Returns:
        (B, H, h, w) float32.
    """
    if q.ndim != 4 or q.shape != k.shape:
        raise ValueError(f"expected q and k as (B, H, N, D), got {tuple(q.shape)} and {tuple(k.shape)}")
    b, h, n, _ = q.shape
    if n - num_prefix != grid[0] * grid[1]:
        raise ValueError(f"{n} tokens minus {num_prefix} prefix tokens do not fill a {grid[0]}x{grid[1]} patch grid")
    logits = (q[:, :, :1].float() * scale) @ k.float().transpose(-2, -1)  # (B, H, 1, N)
    return logits.softmax(dim=-1)[:, :, 0, num_prefix:].reshape(b, h, *grid)


def attention_blocks(q: torch.Tensor, k: torch.Tensor, scale: float, chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``softmax(q k^T * scale)`` a block of ``chunk`` query rows at a time, never the whole (B, H, N, N) matrix.

    Args:
        q: queries (B, H, N, D); k: keys (B, H, M, D) (any dtype; computed in float32).
        scale: the model's attention scale.
        chunk: query rows per block (>= 1).

    Yields:
        (first query row of the block, its (B, H, c, M) attention probabilities).
    """
    kt = k.float().transpose(-2, -1)
    for start in range(0, q.shape[2], chunk):
        yield start, (q[:, :, start:start + chunk].float() * scale @ kt).softmax(-1)
