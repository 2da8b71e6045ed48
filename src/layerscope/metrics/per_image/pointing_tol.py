"""The pointing game with a tolerance (Zhang et al. 2016, 15 px): a hit where the map's maximum, upsampled to
the image, lies within ``metrics.pointing_tolerance`` pixels of a mask pixel."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..facts import Metric

if TYPE_CHECKING:
    import torch

    from ..scored_maps import ScoredMaps

# NaN without a mask or without mask pixels as well, which notes do not name: the notes' lists predate this
# column, and naming it would change the notes of every such row of results.csv
METRIC = Metric("pointing_tol", "pointing (tolerance)",
                "pointing accuracy within metrics.pointing_tolerance px (0–1)", order=80)


def compute(maps: ScoredMaps) -> torch.Tensor:
    """(B', R) float32 on the CPU: 1.0 hit, 0.0 miss; NaN where the mask is empty."""
    import torch

    from ..tolerant_pointing import pointing_game_tolerance_batch

    b, r = len(maps.with_target), maps.maps.shape[1]
    out = torch.full((b, r), float("nan"))
    if maps.pointed:
        grid = maps.maps[maps.with_target][maps.pointed].flatten(-2).float()
        out[maps.pointed] = pointing_game_tolerance_batch(grid, maps.masks, maps.grid, maps.opts.pointing_tolerance,
                                                          fast=None if maps.shortcuts else False, sums=maps.mask_sums)
    return out
