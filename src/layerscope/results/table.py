"""The tidy results table: one row per (image, model, layer, head-or-map, method, threshold)."""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from .catalog import CANDIDATE, PER_IMAGE
from .layout import RESULTS, is_complete, read_done

log = logging.getLogger(__name__)

METRICS = tuple(PER_IMAGE)  # the metric columns, in the catalog's order
COLUMNS = (
    "image", "group", "category", "dataset", "source", "model", "kind", "num_layers", "img_size", "layer", "grid_h", "grid_w",
    "method", "head", "threshold_rule", "threshold", *METRICS,
    "attention_distance_rule", "attention_distance_unit", "mask_fraction", "best_head", "pred_label", "pred_prob", "notes",
)


class ResultsWriter:
    """Appends rows to ``results.csv`` as images finish, so an interrupted run keeps them."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows = 0
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file, lineterminator="\n")  # LF, also after a resume
        if new:
            self._writer.writerow(COLUMNS)

    def write(self, rows: Iterable[Mapping[str, object]]) -> None:
        """Append one image's rows and flush them to disk.

        Raises:
            OSError: naming ``results.csv`` (a full disk, a read-only folder).
        """
        try:
            for row in rows:  # a list in COLUMNS order: what csv.DictWriter wrote, without its per-row dict
                self._writer.writerow([_fmt(row.get(k)) for k in COLUMNS])
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


REQUIRED = ("image", "category", *CANDIDATE, "threshold")


def read_results(path: Path) -> pd.DataFrame:
    """One ``results.csv``, checked: its rows, or a ValueError naming the file and what was expected.

    Rows of a run that did not finish are kept only for the images it finished (``done.txt``),
    so a ranking never includes an image cut off half-way.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file; expected a layerscope results table (did the run stop before "
                         "its first image?)")
    header, rows, _ = read_rows(path)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ValueError(f"{path}: not a layerscope results table: no column {', '.join(missing)}")
    df = pd.DataFrame(rows, columns=header)
    if path.name == RESULTS and not is_complete(path.parent):
        done = read_done(path.parent)
        partial = df[~df["image"].isin(list(done))]
        if len(partial):
            log.warning("%s: unfinished run; %d rows of images it did not finish are left out", path, len(partial))
        df = df[df["image"].isin(list(done))]
    return read_table(io.StringIO(df.to_csv(index=False)))


# Columns that hold names: read as text, so an empty category stays "" (a folder run's images) and a
# name such as "NA", "null" or "1" stays that name. In OPTIONAL an empty cell means "not given" (NaN).
NAMES = ("image", "category", "dataset", "source", "model", "kind", "method", "head", "notes", "pred_label", "job",
         "upsample")
OPTIONAL = ("group", "best_head", "threshold_rule", "attention_distance_rule", "attention_distance_unit")
# pandas' default missing-value spellings, kept for the number columns only
NA_NUMBERS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
              "NA", "NULL", "NaN", "None", "n/a", "nan", "null")


def read_table(source: Path | str | io.StringIO) -> pd.DataFrame:
    """A results or dataset table (``results.csv``, ``dataset_metrics.csv``, ``all_results.csv``), the one
    way every tool reads them: name columns (``NAMES``) as str with empty cells as ``""``, ``OPTIONAL``
    ones as str with empty cells as NaN, every other column as pandas reads numbers.

    Args:
        source: a CSV file, or its text in a ``StringIO``.
    """
    if isinstance(source, io.StringIO):
        header = next(csv.reader(io.StringIO(source.getvalue().split("\n", 1)[0])), [])
    else:
        with open(source, newline="", encoding="utf-8", errors="replace") as f:
            header = next(csv.reader(f), [])
    dtype = {c: str for c in header if c in NAMES or c in OPTIONAL}
    na = {c: [""] if c in OPTIONAL else [] if c in NAMES else list(NA_NUMBERS) for c in header}
    return pd.read_csv(source, dtype=dtype, keep_default_na=False, na_values=na)


def load_results(folder: Path, name: str = RESULTS) -> pd.DataFrame:
    """Every ``name`` below ``folder`` concatenated, with a ``job`` column (the relative folder).

    Tables without rows (a job that failed before its first image) are left out with a warning.

    Raises:
        FileNotFoundError: none found.
        ValueError: a file that is not a results table, or no rows at all; the message names it.
    """
    folder = Path(folder)
    files = sorted(folder.rglob(name)) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{folder}: no {name} found below it (expected a run or multirun folder)")
    frames = []
    for f in files:
        df = read_results(f)
        if df.empty:
            log.warning("%s: no rows (the run stopped before its first image?); left out", f)
            continue
        df["job"] = str(f.parent.relative_to(folder)) if f.parent != folder else "."
        frames.append(df)
    if not frames:
        raise ValueError(f"{folder}: no rows in {', '.join(str(f) for f in files[:3])}: no run below it finished "
                         "an image")
    return pd.concat(frames, ignore_index=True)


def read_rows(path: Path) -> tuple[list[str], list[list[str]], bool]:
    """The header and complete rows of a ``results.csv`` that may have been cut at any byte.

    Returns:
        (header, rows, intact): rows are the lines that ended with a newline and hold as many
        fields as the header; ``intact`` is False when anything was dropped.
    """

    data = Path(path).read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    reader = csv.reader(io.StringIO(complete.decode("utf-8", errors="replace"), newline=""))
    header = next(reader, [])
    rows = [r for r in reader if len(r) == len(header)]
    intact = complete == data and len(rows) == complete.count(b"\n") - 1
    return header, rows, intact
