"""What every publication figure reads: the saved study, the folder it writes into, the images and the colours
it shows (``figures.paper``)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..results import catalog
from ..results.layout import PAPER_FIGURES
from ..analysis.saved import Study
from .style import PALETTE

METRICS = catalog.DEFAULT_CURVES  # the metrics the curves draw unless told


def as_study(source: Study | Path | str) -> Study:
    return source if isinstance(source, Study) else Study(source)


def figure_dir(study: Study, out: Path | str | None) -> Path:
    return Path(out) if out is not None else study.root / PAPER_FIGURES


def pick_images(images: pd.DataFrame, n: int) -> list[str]:
    """Up to ``n`` image ids: masked defects first, spread over categories (round robin)."""
    if images.empty or n <= 0:
        return []
    images = images.assign(good=images["category"].isin(["good", ""]))
    images = images.sort_values(["has_mask", "good", "category", "image"], ascending=[False, True, True, True])
    queues = [list(part["image"]) for _, part in images.groupby(["has_mask", "good", "category"], sort=False)]
    picked: list[str] = []
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def series_colours(study: Study) -> dict[str, str]:
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(study.series())}
