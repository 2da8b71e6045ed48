"""Reducing a feature tensor (B, C, h, w) to maps (B, K, h, w)."""
from __future__ import annotations

import torch

from ..runtime import serial


def mean_abs(feat: torch.Tensor) -> torch.Tensor:
    """Mean absolute activation over channels: (B, C, h, w) -> (B, 1, h, w)."""
    return feat.abs().mean(dim=1, keepdim=True)


def l2(feat: torch.Tensor) -> torch.Tensor:
    """L2 norm over channels: (B, C, h, w) -> (B, 1, h, w)."""
    return feat.norm(dim=1, keepdim=True)


def pca(feat: torch.Tensor) -> torch.Tensor:
    """First principal component of each image's positions in channel space: (B, C, h, w) -> (B, 1, h, w).

    The projection of the centred positions on the top eigenvector of their C x C scatter matrix (or,
    with fewer positions than channels, the top eigenvector of the hw x hw Gram matrix scaled by its
    singular value): the SVD's first component, from a small eigendecomposition in float64 instead of an
    SVD of the whole (hw, C) matrix (which LAPACK took up to a second for on 2 cores).

    The sign of a principal component is arbitrary; it is fixed so that the map correlates
    positively with the L2-norm map, so that "high" means "strong response" across images.
    """
    b, c, h, w = feat.shape
    x = feat.double().flatten(2)  # (B, C, hw)
    x = x - x.mean(dim=2, keepdim=True)
    if c <= h * w:
        _, vectors = torch.linalg.eigh(x @ x.transpose(1, 2))  # ascending eigenvalues of (B, C, C)
        comp = (vectors[..., -1:].transpose(1, 2) @ x).squeeze(1)  # (B, hw)
    else:
        values, vectors = torch.linalg.eigh(x.transpose(1, 2) @ x)  # (B, hw, hw): x v = s u, s^2 its eigenvalue
        comp = vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()
    comp = comp.float()
    norm = l2(feat).flatten(1).float()
    sign = torch.sign(((comp - comp.mean(1, keepdim=True)) * (norm - norm.mean(1, keepdim=True))).sum(1, keepdim=True))
    comp = comp * torch.where(sign == 0, torch.ones_like(sign), sign)
    return comp.view(b, 1, h, w)


REDUCTIONS = {"l2": l2, "mean_abs": mean_abs, "pca": pca}


@serial  # small tensors: 2 threads on 2 busy cores took 4x longer (the backbone keeps every thread)
def reduce_features(feat: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Stack the named reductions: (B, C, h, w) -> (B, len(names), h, w).

    Raises:
        ValueError: an unknown reduction name; the message lists the valid ones.
    """
    if feat.ndim != 4:
        raise ValueError(f"expected features (B, C, h, w), got {tuple(feat.shape)}")
    bad = [n for n in names if n not in REDUCTIONS]
    if bad or not names:
        raise ValueError(f"method.reductions={list(names)}: expected a non-empty list from {', '.join(REDUCTIONS)}")
    feat = feat.float()  # reductions in fp32, also after bf16/fp16 autocast
    return torch.cat([REDUCTIONS[n](feat) for n in names], dim=1)
