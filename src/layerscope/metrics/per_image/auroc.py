"""Pixel AUROC of the map against its image's mask: the probability that a mask pixel scores above a
background pixel, ties counting one half (Mann-Whitney U / (n_pos n_neg))."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..facts import FULL_MASK, NO_DEFECT, NO_MASK, Metric

if TYPE_CHECKING:
    import torch

    from ..scored_maps import ScoredMaps

METRIC = Metric("auroc", "AUROC", "pixel AUROC (0–1)", order=30, undefined_when=(NO_MASK, NO_DEFECT, FULL_MASK),
                shown=True)


def compute(maps: ScoredMaps) -> torch.Tensor:
    """(B', R) float32; NaN without mask pixels or without background pixels."""
    from ..rank_groups import auroc_from_groups

    g = maps.group_sums
    # (B', R) summed over pixel pairs
    pairs = maps.rows_per_image(auroc_from_groups(g[0], g[1], 1.0, 1.0, maps.count_cumsums[1]))
    auroc = (pairs / (maps.n_pos * maps.n_neg).unsqueeze(-1)).float()
    return maps.per_image([c.n_pos > 0 and c.n_neg > 0 for c in maps.cells], auroc)
