"""Small helpers the benchmarks share: a median with its spread, durations as text."""
from __future__ import annotations

import statistics
from typing import Sequence


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max); NaNs when empty."""
    vals = [v for v in values if v == v]
    if not vals:
        return float("nan"), float("nan"), float("nan")
    return statistics.median(vals), min(vals), max(vals)


def minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"
