"""The per-image metrics: one module each, holding the column's facts and its batched computation.

Each module defines ``METRIC`` (a ``facts.Metric``: column name, label, direction, needs a mask, option,
place among the columns, when undefined) and ``compute(maps: ScoredMaps) -> Tensor``: the values of a batch
of maps on one grid, (B, R) for a mask-free metric, (B', R) over the B' images with a ground truth for a
metric that needs one, with a trailing threshold axis T for a threshold-dependent one; NaN where undefined.
This package finds its modules itself: a new metric is a new module here, nothing else to edit.

Torch-free on import (each ``compute`` imports what it computes with), so the metric table
(``results.catalog``) reads the facts without a model.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..facts import CONDITIONS, Metric

if TYPE_CHECKING:
    import torch

    from ..scored_maps import ScoredMaps


@dataclass(frozen=True)
class PerImage:
    """A per-image metric: its facts and its computation."""

    metric: Metric
    compute: Callable[["ScoredMaps"], "torch.Tensor"]

    def enabled(self, opts: Any) -> bool:
        """Whether the scoring options ask for this column (a metric with an ``option`` only when it is on)."""
        return not self.metric.option or bool(getattr(opts, self.metric.option.removeprefix("metrics.")))


def _discover() -> tuple[PerImage, ...]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.append(PerImage(module.METRIC, module.compute))
    return tuple(sorted(found, key=lambda p: (p.metric.order, p.metric.name)))


SCORED = _discover()  # in results.csv's column order
BY_NAME = {p.metric.name: p for p in SCORED}
FACTS = tuple(p.metric for p in SCORED)


@functools.lru_cache(maxsize=None)
def notes(conditions: tuple[str, ...]) -> str:
    """The ``notes`` of a row: for each condition that holds (``facts.CONDITIONS``, in that order), the
    metrics it leaves undefined, those of the map alone first, each group in column order.

    Args:
        conditions: the conditions that hold for the row's image and map.
    """
    parts = []
    for condition in (c for c in CONDITIONS if c in conditions):
        names = [m.name for m in sorted(FACTS, key=lambda m: (m.needs_mask, m.order)) if condition in m.undefined_when]
        if names:
            parts.append(f"{condition}: {', '.join(names)} undefined")
    return "; ".join(parts)
