"""The tidy results table: one row per (image, model, layer, head-or-map, method, threshold)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from .catalog import PER_IMAGE
from .layout import RESULTS

METRICS = tuple(PER_IMAGE)  # the metric columns, in the catalog's order
COLUMNS = (
    "image", "group", "category", "dataset", "model", "kind", "num_layers", "img_size", "layer", "grid_h", "grid_w",
    "method", "head", "threshold_rule", "threshold", *METRICS,
    "mask_fraction", "best_head", "pred_label", "pred_prob", "notes",
)


class ResultsWriter:
    """Appends rows to ``results.csv`` as images finish, so an interrupted run keeps them."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows = 0
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
        if new:
            self._writer.writeheader()

    def write(self, rows: Iterable[Mapping[str, object]]) -> None:
        """Append one image's rows and flush them to disk.

        Raises:
            OSError: naming ``results.csv`` (a full disk, a read-only folder).
        """
        try:
            for row in rows:
                self._writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
                self.rows += 1
            self._file.flush()
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:  # the failed write was already reported
            pass


def _fmt(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"  # NaN (undefined) -> empty cell
    return value


def load_results(folder: Path, name: str = RESULTS) -> pd.DataFrame:
    """Every ``name`` below ``folder`` concatenated, with a ``job`` column (the relative folder).

    Raises:
        FileNotFoundError: none found.
    """
    folder = Path(folder)
    files = sorted(folder.rglob(name)) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{folder}: no {name} found below it (expected a run or multirun folder)")
    frames = []
    for f in files:
        df = pd.read_csv(f, dtype={"head": str, "image": str, "group": str, "category": str})
        df["job"] = str(f.parent.relative_to(folder)) if f.parent != folder else "."
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
