"""Saved results of a run or sweep folder, read back for the figures and the report page (no model, no torch).

- ``Study``: every ``results.csv`` below a folder, grouped into series (model · method [· size] [· job]),
  with the saved maps beside each; jobs that repeat an earlier job's results are left out (``identical_jobs``).
- The analysis both readers share: ``smallest_threshold``, ``per_image`` (objects of one image averaged
  first), ``layer_head_scores`` (mean and 95% bootstrap CI per layer and head, ``leaderboard.bootstrap_mean``),
  ``line_head`` (the map a metric-vs-layer line follows), ``head_order``, ``relative_depth``, ``num_layers``
  and ``distance_table`` (mean attention distance per head over images, with its 95% interval).

Series: rows are grouped by (model, method), plus the input size when one model was run at
several sizes, plus the job when two jobs repeat the same (image, layer, head, threshold) rows
with other values (e.g. a sweep over some other option); jobs that split the layers of one model
are merged, and so are jobs that hold identical results (``method=auto`` and ``method=features``
on a CNN compute the same maps): the first is kept, the others are dropped (``Study.merged``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..results import catalog
from ..results.axes import HEADS, map_axis
from ..results.layout import inside, map_file
from ..results.maps_io import load_maps
from .leaderboard import bootstrap_mean
from ..results.table import load_results

log = logging.getLogger(__name__)

SEP = " · "  # between the parts of a series label: model · method [· size] [· job]


class Study:
    """The results of a run or multirun folder, with their saved maps.

    Attributes:
        root: the folder.
        df: every ``results.csv`` row below it, with ``job`` (relative folder), ``series`` (the line
            label: model · method [· size] [· job]), ``group`` and ``category`` filled in; the rows
            of jobs identical to an earlier job are left out.
        images: one row per (series, job, image) with ``path`` (its ``.npz``, may be absent).
        merged: job -> the earlier job holding the same results (left out of ``df``).
    """

    def __init__(self, root: Path | str):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such folder")
        df = load_results(self.root)
        df["head"] = df["head"].fillna("").astype(str)
        df["category"] = df["category"].fillna("").astype(str)
        df["group"] = df["group"].fillna(df["image"]).astype(str)
        df["threshold_rule"] = df.get("threshold_rule", pd.Series("keep_mass", index=df.index)).fillna("keep_mass")
        df["kind"] = df["kind"].fillna("").astype(str)
        self.merged = identical_jobs(df)
        if self.merged:
            for job, kept in self.merged.items():
                log.info("jobs %s and %s hold identical results (%s · %s): drawn once, as job %s", kept, job,
                         *df.loc[df["job"] == job, ["model", "method"]].iloc[0], kept)
            df = df[~df["job"].isin(list(self.merged))].reset_index(drop=True)
        df["series"] = _series_labels(df)
        self.df = df
        images = df.drop_duplicates(["series", "job", "image"])[
            ["series", "job", "image", "category", "dataset", "kind", "model", "method", "mask_fraction"]].copy()
        images["path"] = [map_file(self.root / job, image) for job, image in zip(images["job"], images["image"])]
        images["saved"] = [p.is_file() and _readable(p, self.root / job)
                           for p, job in zip(images["path"], images["job"])]
        images["has_mask"] = images["mask_fraction"].fillna(0) > 0
        self.images = images.reset_index(drop=True)
        self._cache: dict[tuple[str, str], dict | None] = {}

    def series(self) -> list[str]:
        return sorted(self.df["series"].unique())

    def info(self, series: str) -> dict:
        """model, method and kind of a series (its first row)."""
        row = self.df[self.df["series"] == series].iloc[0]
        return {"model": row["model"], "method": row["method"], "kind": row["kind"]}

    def saved_images(self, series: str) -> pd.DataFrame:
        """One row per image of ``series`` that has saved maps (image, category, dataset, has_mask)."""
        part = self.images[(self.images["series"] == series) & self.images["saved"]]
        return part.drop_duplicates("image")[["image", "category", "dataset", "has_mask"]].reset_index(drop=True)

    def load(self, series: str, image: str) -> dict | None:
        """``load_maps`` of ``image`` in ``series``, layers merged over the jobs that hold it (not cached)."""
        part = self.images[(self.images["series"] == series) & (self.images["image"] == image) & self.images["saved"]]
        merged = None
        for path in part["path"]:
            d = load_maps(path)
            if merged is None:
                merged = d
            else:
                merged["maps"].update(d["maps"])
                merged["names"].update(d["names"])
        if merged is not None:
            merged["maps"] = dict(sorted(merged["maps"].items()))
        return merged

    def maps(self, series: str, image: str) -> dict | None:
        """``load`` of ``image`` in ``series``, cached."""
        key = (series, image)
        if key not in self._cache:
            self._cache[key] = self.load(series, image)
        return self._cache[key]



def _readable(path: Path, run_dir: Path) -> bool:
    """Whether a saved-maps file named from a table's image id may be read: only inside its run folder
    (a link out of it, e.g. an edited table pointing at another file, is left out with a warning)."""
    if inside(path, run_dir):
        return True
    log.warning("%s: leads outside the run folder %s; not read", path, run_dir)
    return False



def _job_order(job: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in str(job).split("/"))



def identical_jobs(df: pd.DataFrame) -> dict[str, str]:
    """Jobs whose rows repeat an earlier job's exactly (same keys, metrics equal to 1e-6), e.g.
    ``method=auto`` and ``method=features`` on a CNN.

    Args:
        df: ``load_results`` rows of several jobs (``job`` column).

    Returns:
        job -> the first job (in job order) holding the same rows; empty when none repeats.
    """
    if "job" not in df.columns or df["job"].nunique() < 2:
        return {}
    key = ["image", "layer", "head", "threshold_rule", "threshold"]
    values = [c for c in catalog.PER_IMAGE if c in df.columns]
    merged: dict[str, str] = {}
    for _, part in df.groupby(["model", "method", "img_size"], dropna=False):
        kept: list[tuple[str, pd.DataFrame]] = []
        for job in sorted(part["job"].unique(), key=_job_order):
            rows = part[part["job"] == job].sort_values(key)[key + values].reset_index(drop=True)
            for first, other in kept:
                if _same_rows(rows, other, key, values):
                    merged[job] = first
                    break
            else:
                kept.append((job, rows))
    return merged



def _same_rows(a: pd.DataFrame, b: pd.DataFrame, key: list[str], values: list[str]) -> bool:
    if a.shape != b.shape or not a[key].astype(str).equals(b[key].astype(str)):
        return False
    x, y = a[values].to_numpy(float), b[values].to_numpy(float)
    return bool(np.allclose(x, y, rtol=1e-6, atol=1e-9, equal_nan=True))



def _series_labels(df: pd.DataFrame) -> pd.Series:
    base = df["model"].astype(str) + SEP + df["method"].astype(str)
    sizes = df.groupby(["model", "method"])["img_size"].transform("nunique")
    base = base.where(sizes <= 1, base + SEP + df["img_size"].astype(str) + " px")
    series = base.copy()
    key = ["image", "layer", "head", "threshold_rule", "threshold"]
    for _, part in df.groupby(base):
        if part["job"].nunique() > 1 and part.drop_duplicates(["job", *key]).duplicated(key).any():
            series.loc[part.index] = base.loc[part.index] + SEP + "job " + part["job"]
    return series



def smallest_threshold(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of each series' smallest threshold (threshold-free metrics repeat on every threshold)."""
    smallest = rows.groupby("series")["threshold"].transform("min")
    return rows[np.isclose(rows["threshold"], smallest) | (rows["threshold"].isna() & smallest.isna())]



def per_image(rows: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """Mean of ``metric`` per (keys, image): objects of one image averaged first (as layerscope.report)."""
    return rows.dropna(subset=[metric]).groupby([*keys, "group"], as_index=False)[metric].mean()



def num_layers(rows: pd.DataFrame) -> int:
    """A series' layer count: the runs' ``num_layers`` column, else the deepest layer + 1."""
    n = pd.to_numeric(rows.get("num_layers"), errors="coerce") if "num_layers" in rows else pd.Series(dtype=float)
    return int(n.max()) if n.notna().any() else int(rows["layer"].max()) + 1



def relative_depth(layer: pd.Series | np.ndarray | int, num_layers: pd.Series | np.ndarray | int):
    """Layer index -> relative depth, 0 = first layer, 1 = last (``layer / (num_layers - 1)``).

    A 12-block ViT and a 5-stage CNN then share one axis. A one-layer model sits at 1.
    """
    n = np.maximum(np.asarray(num_layers, float) - 1, 0)
    return np.where(n > 0, np.asarray(layer, float) / np.where(n > 0, n, 1), 1.0)



def head_order(heads: Iterable[str]) -> list[str]:
    """Heads in reading order: numbered heads by number, then ``mean``, then the rest as they come."""
    heads = list(dict.fromkeys(str(h) for h in heads))
    numbered = sorted((h for h in heads if h.isdigit()), key=int)
    return numbered + [h for h in heads if h == "mean"] + [h for h in heads if not h.isdigit() and h != "mean"]



def layer_head_scores(study: Study, series: str, metric: str, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean of ``metric`` over images per (layer, head) of one series, with a 95% bootstrap CI.

    Rows of the series' smallest threshold, no ``best`` rows; objects of one image are averaged
    first (as ``layerscope.report``).

    Returns:
        Columns layer, head, mean, ci_low, ci_high, n (images), best (the best cell: highest mean,
        lowest for entropy); sorted by layer, then ``head_order``. Empty when the metric has no value.
    """
    rng = np.random.default_rng(seed)
    rows = smallest_threshold(study.df[(study.df["series"] == series) & (study.df["head"] != "best")])
    columns = ["layer", "head", "mean", "ci_low", "ci_high", "n", "best"]
    if metric not in rows.columns or rows[metric].isna().all():
        return pd.DataFrame(columns=columns)
    per_image_rows = per_image(rows, ["layer", "head"], metric)
    order = {h: i for i, h in enumerate(head_order(per_image_rows["head"]))}
    out = []
    for (layer, head), part in per_image_rows.groupby(["layer", "head"]):
        values = part[metric].to_numpy(float)
        if n_boot and len(values) > 1:
            _, low, high = bootstrap_mean(values, n_boot, rng)
        else:  # one image has no interval (and draws nothing, so the other cells' intervals stay as they were)
            low = high = float("nan")
        out.append([int(layer), str(head), float(values.mean()), low, high, len(values)])
    table = pd.DataFrame(out, columns=columns[:-1])
    table = table.sort_values(["layer", "head"], key=lambda c: c.map(order) if c.name == "head" else c)
    table = table.reset_index(drop=True)
    best = table["mean"].idxmin() if catalog.lower_is_better(metric) else table["mean"].idxmax()
    table["best"] = table.index == best
    return table



def line_head(part: pd.DataFrame, method: str, metric: str) -> str:
    """The map a series' metric-vs-layer line follows: the head mean for a method whose maps are heads
    (``axes.map_axis``), else the head or reduction with the best mean of ``metric`` over all layers (lowest
    for entropy)."""
    heads = list(dict.fromkeys(part["head"]))
    if map_axis(method) == HEADS and "mean" in heads:
        return "mean"
    means = part.groupby("head")[metric].mean()
    return str(means.idxmin() if catalog.lower_is_better(metric) else means.idxmax())



DISTANCE_COLUMNS = ["series", "layer", "head", "attention_distance", "ci_low", "ci_high", "n_images", "rule", "unit",
                    "num_layers"]


def distance_table(rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean over images of ``attention_distance`` per (series, rule, unit, layer, head), with a 95% percentile
    bootstrap interval over images, from ``results.csv`` rows with a ``series`` column (smallest threshold,
    no ``best`` rows); with each series' ``num_layers``.

    ``rule`` and ``unit`` are the rows' ``attention_distance_rule`` / ``_unit`` (``renormalised`` and
    ``pixels`` for rows written before those columns existed): values of different conventions are never
    averaged together.
    """
    if "attention_distance" not in rows.columns:
        return pd.DataFrame(columns=DISTANCE_COLUMNS)
    rows = rows[(rows["head"].astype(str) != "best") & rows["attention_distance"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=DISTANCE_COLUMNS)
    rows = smallest_threshold(rows).assign(head=lambda d: d["head"].astype(str))
    for column, default in (("attention_distance_rule", "renormalised"), ("attention_distance_unit", "pixels")):
        values = rows[column].astype(object) if column in rows.columns else pd.Series(None, index=rows.index,
                                                                                          dtype=object)
        rows = rows.assign(**{column: values.where(values.notna(), default).astype(str)})
    rows = rows.rename(columns={"attention_distance_rule": "rule", "attention_distance_unit": "unit"})
    keys = ["series", "rule", "unit", "layer", "head"]
    by_image = rows.groupby([*keys, "image"], as_index=False)["attention_distance"].mean()
    rng = np.random.default_rng(seed)
    out = []
    for key, part in by_image.groupby(keys, sort=True):
        values = part["attention_distance"].to_numpy(float)
        if n_boot and len(values) > 1:
            mean, low, high = bootstrap_mean(values, n_boot, rng)
        else:  # one image: no interval
            mean, low, high = float(values.mean()), float("nan"), float("nan")
        out.append({**dict(zip(keys, key)), "attention_distance": mean, "ci_low": low, "ci_high": high,
                    "n_images": len(values)})
    table = pd.DataFrame(out)
    depth = pd.to_numeric(rows.get("num_layers"), errors="coerce").groupby(rows["series"]).max()
    table["num_layers"] = table["series"].map(depth)
    return table[DISTANCE_COLUMNS]

