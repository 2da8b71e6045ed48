"""Reductions of bool tensors faster than torch's own on a CPU."""
from __future__ import annotations

import torch


def any_true(mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``mask.any(dim)`` (``dim`` None: over every element) of a bool tensor, as the maximum of its bytes.

    The same values; torch's ``any`` over bools is 10-40x slower on a CPU (the scorer's and the dataset-level
    pass's tie tests, mask tests and hit tests run it on every batch). An empty tensor has no true element.
    """
    if dim is None and not mask.numel():
        return torch.zeros((), dtype=torch.bool, device=mask.device)
    flat = mask.view(torch.uint8)
    return (flat.amax() if dim is None else flat.amax(dim)) > 0
