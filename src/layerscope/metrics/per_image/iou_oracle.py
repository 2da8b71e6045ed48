"""The oracle IoU: the best IoU any threshold on the map reaches (cells added from the highest score down,
a tie group at a time)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..facts import NO_DEFECT, NO_MASK, Metric

if TYPE_CHECKING:
    import torch

    from ..scored_maps import ScoredMaps

METRIC = Metric("iou_oracle", "oracle IoU", "oracle IoU (0–1)", order=20, undefined_when=(NO_MASK, NO_DEFECT))


def compute(maps: ScoredMaps) -> torch.Tensor:
    """(B', R) float32; NaN without mask pixels."""
    from ..localization import iou_oracle_from_cumsums

    g = maps.group_sums
    rows = g.shape[1] // len(maps.cells)
    oracle = iou_oracle_from_cumsums(g[0], g[1], maps.count_cumsums,
                                     maps.n_pos.repeat_interleave(rows).unsqueeze(-1)).float()
    return maps.per_image([c.n_pos > 0 for c in maps.cells], maps.rows_per_image(oracle))
