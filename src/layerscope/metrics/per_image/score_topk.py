"""Mean of the top ``metrics.image_topk`` share of the map's cells (at least one): a per-image anomaly score
less sensitive to one hot cell than the maximum."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..facts import Metric

if TYPE_CHECKING:
    import torch

    from ..scored_maps import ScoredMaps

METRIC = Metric("score_topk", "top-k score", "mean of the top cells", needs_mask=False, kind="image_score",
                fmt=".4g", order=140)


def compute(maps: ScoredMaps) -> torch.Tensor:
    """(B, R) float32."""
    from ..localization import top_count, top_score

    ascending = maps.sorted_flat
    if ascending is None:
        return top_score(maps.flat, maps.opts.topk)
    # the threshold's sort has them: the top k in topk's descending order, whatever order ties took
    return ascending[..., ascending.shape[-1] - top_count(ascending.shape[-1], maps.opts.topk):].flip(-1).mean(-1)
