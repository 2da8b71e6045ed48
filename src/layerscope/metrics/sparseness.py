"""Cheap per-map shape columns from the explanation-quality literature, on a map's cells.

- ``gini``: Gini index of the absolute cell values (Chalasani et al. 2020, "Concise explanations of
  neural networks using adversarial training"; Quantus' ``Sparseness``): 0 for a uniform map, ``(n - 1) / n``
  for a single non-zero cell. Higher = sparser.
- ``complexity``: Shannon entropy (nats) of the absolute values as a distribution over the cells
  (Bhatt et al. 2020, "Evaluating and aggregating feature-based model explanations"; Quantus'
  ``Complexity``): 0 for one cell, ``log n`` for a uniform map. Lower = simpler. Unlike the ``entropy``
  column it is not divided by ``log n`` and takes absolute values (``entropy`` shifts signed maps).

Both are taken on the grid's cells (the saved maps), so ``layerscope-rescore`` computes them without
the model. A map without mass (all zero) has neither (NaN).
"""
from __future__ import annotations

import torch


def gini(maps: torch.Tensor) -> torch.Tensor:
    """Gini index of |map| over the cells: (..., h, w) -> (...) float32; NaN for an all-zero map.

    ``G = sum_i (2 i - n - 1) a_(i) / (n sum_i a_i)`` with ``a_(1) <= ... <= a_(n)`` the sorted values.
    """
    a = maps.flatten(-2).double().abs().sort(dim=-1).values
    n = a.shape[-1]
    i = torch.arange(1, n + 1, dtype=a.dtype, device=a.device)
    total = a.sum(-1)
    g = ((2 * i - n - 1) * a).sum(-1) / (n * total.clamp_min(torch.finfo(a.dtype).tiny))
    return torch.where(total > 0, g, torch.full_like(g, float("nan"))).float()


def complexity(maps: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of |map| / sum |map| over the cells: (..., h, w) -> (...) float32; NaN for an all-zero map."""
    a = maps.flatten(-2).double().abs()
    total = a.sum(-1, keepdim=True)
    p = a / total.clamp_min(torch.finfo(a.dtype).tiny)
    h = -(p * torch.log(p.clamp_min(torch.finfo(a.dtype).tiny))).sum(-1)
    return torch.where(total.squeeze(-1) > 0, h, torch.full_like(h, float("nan"))).float()
