"""The pointing game (Zhang et al. 2016): 1 where the map's maximum falls on a mask pixel, else 0."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..facts import NO_DEFECT, NO_MASK, Metric

if TYPE_CHECKING:
    import torch

    from ..scored_maps import ScoredMaps

METRIC = Metric("pointing", "pointing", "pointing accuracy (0–1)", order=70, undefined_when=(NO_MASK, NO_DEFECT),
                shown=True)


def compute(maps: ScoredMaps) -> torch.Tensor:
    """(B', R) float32: the maximum cell holds mask pixels; NaN without mask pixels."""
    import math

    import torch

    s = maps.scored
    # (B', R): in float32 as in float64 (exact), the first maximum; NumPy's argmax (several times faster on a CPU)
    # finds the same one where every value is finite (then so are the largest and the smallest: a NaN reaches both)
    if s.device.type == "cpu" and s.dtype in (torch.float32, torch.float64) and math.isfinite(s.amax()) \
            and math.isfinite(s.amin()):
        top = torch.from_numpy(s.numpy().argmax(-1))
    else:
        top = s.argmax(-1)
    hit = (maps.pos.gather(1, top) > 0).float()
    return torch.where((maps.n_pos > 0).unsqueeze(-1), hit, torch.tensor(float("nan"), device=hit.device))
