"""AUPRO as in the MVTec AD evaluation (Bergmann et al.): the area under PRO (the mean over connected mask
regions of the share of the region kept) against FPR, up to ``metrics.aupro_fpr_limit``, over the limit."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..facts import FULL_MASK, NO_DEFECT, NO_MASK, Metric

if TYPE_CHECKING:
    import torch

    from ..scored_maps import ScoredMaps

METRIC = Metric("aupro", "AUPRO", "AUPRO (0–1)", order=40, undefined_when=(NO_MASK, NO_DEFECT, FULL_MASK), shown=True)


def compute(maps: ScoredMaps) -> torch.Tensor:
    """(B', R) float32; NaN without mask regions or without background pixels."""
    from ..kept_pixels import close_up
    from ..localization import aupro_segments

    g = maps.group_sums  # each tie group's sum at its last item: its segment sits there in the area row
    area = close_up(*aupro_segments(g[2], g[3], maps.opts.fpr_limit), maps.kept[2])
    aupro = maps.rows_per_image((area.sum(-1) / maps.opts.fpr_limit).float())  # ``aupro_from_groups``' sum
    return maps.per_image([c.n_pos > 0 and c.regions.shape[1] > 0 and c.n_neg > 0 for c in maps.cells], aupro)
