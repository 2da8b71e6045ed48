"""Mass in mask over the mask's area share: 1 is chance, higher is a map concentrated on the mask."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..facts import NO_DEFECT, NO_MASK, Metric

if TYPE_CHECKING:
    import torch

    from ..scored_maps import ScoredMaps

# also NaN where mass_in_mask is (an all-zero map), which the notes leave to mass_in_mask
METRIC = Metric("mass_ratio", "mass ratio", "mass in mask / mask area (1 = chance)", fmt=".2f", order=60,
                undefined_when=(NO_MASK, NO_DEFECT), shown=True)


def compute(maps: ScoredMaps) -> torch.Tensor:
    """(B', R) float32; NaN where the mask has no area."""
    import torch

    from . import mass_in_mask

    mass = maps.value(mass_in_mask.METRIC.name, mass_in_mask.compute).cpu()
    # each image's division by a Python float (float32 arithmetic), one image at a time
    return torch.stack([mass[j] / f if f > 0 else torch.full_like(mass[j], float("nan"))
                        for j, f in enumerate(maps.fractions)])
