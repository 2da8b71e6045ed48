"""The few-shot protocol read back: per shot count and layer, the mean and interval across reference seeds.

A few-shot sweep (``method.n_references=1,2,4,8,16 seed=0,1,2``) runs one job per (shots, seed): the
seed draws which normal images are the references (``data.references``). ``job_settings`` reads each
job's shot count and seed from its ``config.yaml``; ``across_seeds`` turns one value per (job,
candidate) into one row per (model, method, shots, layer, head) with the mean over seeds and its
95% Student-t interval (``mean +- t(0.975, s - 1) * sd / sqrt(s)`` over ``s`` seeds: the seeds are
the sample, so the interval says how much the choice of reference images moves the number; one seed
gives no interval). ``per_image_values`` and ``dataset_values`` give those values for the two
protocols. No torch here: the report, the page and the figures read it.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..results import catalog, layout
from .leaderboard import md

log = logging.getLogger(__name__)

SHOTS = "shots"  # the column: method.n_references of the job ("all" when null)
KEYS = ["model", "method", SHOTS, "layer", "head"]
COLUMNS = ["category", *KEYS, "mean", "ci_low", "ci_high", "sd", "min", "max", "n_seeds", "seeds"]


def _shots(value) -> object:
    return "all" if value is None else int(value)


def job_settings(folder: Path | str) -> pd.DataFrame:
    """Each run below ``folder`` whose method takes references: its ``job``, ``shots`` and ``seed``.

    Args:
        folder: a run or sweep folder.

    Returns:
        Columns job (relative folder, ``.`` for the folder itself), shots (``method.n_references``, or
        ``all`` for null), seed; empty when no run has ``method.n_references``.
    """
    from omegaconf import OmegaConf

    folder = Path(folder)
    rows = []
    for config in sorted(folder.rglob(layout.CONFIG)):
        run = config.parent
        if run.name == layout.HYDRA or not (run / layout.RESULTS).is_file():
            continue
        try:
            saved = OmegaConf.load(config)
            method = saved.get("method") or {}
            if "n_references" not in method:
                continue
            rows.append({"job": str(run.relative_to(folder)) if run != folder else ".",
                         SHOTS: _shots(method.get("n_references")), "seed": int(saved.get("seed", 0))})
        except Exception as e:  # noqa: BLE001 - a damaged config is one job left out, not a failed report
            log.warning("%s: unreadable (%s); its job is left out of the few-shot tables", config, e)
            continue
    return pd.DataFrame(rows, columns=["job", SHOTS, "seed"])


def is_sweep(settings: pd.DataFrame) -> bool:
    """Whether the jobs vary the shot count or the seed (a few-shot sweep worth its own tables)."""
    return len(settings.drop_duplicates([SHOTS, "seed"])) > 1


def t_interval(values: np.ndarray) -> tuple[float, float]:
    """95% Student-t interval of the mean of ``values`` (NaN, NaN for fewer than two)."""
    values = np.asarray(values, float)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    from scipy.stats import t

    half = float(t.ppf(0.975, len(values) - 1)) * float(values.std(ddof=1)) / math.sqrt(len(values))
    return float(values.mean()) - half, float(values.mean()) + half


def across_seeds(values: pd.DataFrame, settings: pd.DataFrame, value: str = "value") -> pd.DataFrame:
    """One row per (category, model, method, shots, layer, head): mean over seeds and its 95% t-interval.

    Args:
        values: one row per (job, category, model, method, layer, head) with the ``value`` column.
        settings: ``job_settings`` (jobs absent there are left out).

    Returns:
        ``COLUMNS``: mean, ci_low, ci_high, sd (ddof 1), min, max, n_seeds, seeds (as ``0,1,2``); sorted by
        category, model, method, shots, layer.
    """
    rows = values.merge(settings, on="job").dropna(subset=[value])
    out = []
    for key, part in rows.groupby(["category", *KEYS], sort=False):
        v = part.groupby("seed")[value].mean()  # one value per seed (jobs splitting layers never repeat one)
        low, high = t_interval(v.to_numpy())
        out.append([*key, float(v.mean()), low, high, float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                    float(v.min()), float(v.max()), len(v), ",".join(str(s) for s in sorted(v.index))])
    table = pd.DataFrame(out, columns=COLUMNS)
    order = table[SHOTS].map(lambda s: (1, 0) if s == "all" else (0, int(s)))
    table = table.assign(_o=order).sort_values(["category", "model", "method", "_o", "layer"], kind="stable")
    return table.drop(columns="_o").reset_index(drop=True)


def per_image_values(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (job, category, candidate): the per-image protocol's mean over images of ``metric``.

    Rows of the smallest threshold, no ``best`` rows; objects of one image averaged first; a category
    ``all`` over every image with a value, as ``leaderboard.rank``.

    Args:
        df: ``load_results`` rows (with ``job``).
    """
    if metric not in df.columns:
        raise ValueError(f"--metric {metric}: the results have no column {metric!r}")
    df = df[df["head"].astype(str) != "best"]
    smallest = df["threshold"].min()
    df = df[np.isclose(df["threshold"], smallest) | df["threshold"].isna()] if smallest == smallest else df
    df = df.assign(group=df["group"].fillna(df["image"]), category=df["category"].fillna(""),
                   head=df["head"].astype(str)).dropna(subset=[metric])
    keys = ["job", "model", "method", "layer", "head"]
    parts = []
    for category, part in [*df.groupby("category"), ("all", df)]:
        per_image = part.groupby([*keys, "group"], as_index=False)[metric].mean()
        parts.append(per_image.groupby(keys, as_index=False)[metric].mean().assign(category=category))
    return pd.concat(parts, ignore_index=True).rename(columns={metric: "value"}) if parts else \
        pd.DataFrame(columns=[*keys, "value", "category"])


def dataset_values(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (job, category, candidate): the pooled ``metric`` of ``dataset_metrics`` rows."""
    metric = catalog.dataset_metric(metric)
    out = table[["job", "category", "model", "method", "layer", "head", metric]].rename(columns={metric: "value"})
    return out.assign(head=out["head"].astype(str))


def best_layers(table: pd.DataFrame, metric: str = "") -> pd.DataFrame:
    """Per (category, model, method, head, shots): the layer of the best mean over seeds (highest; lowest for a
    lower-is-better ``metric``), and the last layer's."""
    rows = []
    for key, part in table.groupby(["category", "model", "method", "head", SHOTS], sort=False):
        best = part.loc[part["mean"].idxmin() if catalog.lower_is_better(metric) else part["mean"].idxmax()]
        last = part.loc[part["layer"].idxmax()]
        rows.append({**dict(zip(["category", "model", "method", "head", SHOTS], key)), "best_layer": int(best["layer"]),
                     "best_mean": best["mean"], "last_layer": int(last["layer"]), "last_mean": last["mean"],
                     "last_is_best": bool(best["layer"] == last["layer"])})
    return pd.DataFrame(rows)


def _cell(r) -> str:
    if r is None:
        return ""
    ci = f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if r["ci_low"] == r["ci_low"] else ""
    return f"{r['mean']:.3f}{ci}"


def fewshot_markdown(table: pd.DataFrame, title: str, category: str = "all", metric: str = "") -> str:
    """Shots (rows) x layer (columns) tables of one category, one per (model, method, head); the best layer
    of each shot count in bold (the lowest for a lower-is-better ``metric``)."""
    pick = min if catalog.lower_is_better(metric) else max
    lines = [f"# {title}", "",
             "Mean over reference seeds [95% t-interval across seeds] per shot count (rows, references per "
             "category) and layer (columns); the best layer of each shot count in **bold**.", ""]
    part = table[table["category"] == category]
    for (model, method, head), block in part.groupby(["model", "method", "head"], sort=False):
        layers = sorted(block["layer"].unique())
        lines += [f"## {md(model)} · {md(method)} · {md(head)} ({md(category)})", "",
                  "| shots | seeds | " + " | ".join(f"layer {layer}" for layer in layers) + " |",
                  "|---:|---:|" + "---:|" * len(layers)]
        for shots, row in block.groupby(SHOTS, sort=False):
            by_layer = {int(r["layer"]): r for r in row.to_dict("records")}
            best = pick(by_layer, key=lambda layer: by_layer[layer]["mean"])
            cells = [(f"**{_cell(by_layer[layer])}**" if layer == best else _cell(by_layer[layer]))
                     if layer in by_layer else "" for layer in layers]
            lines.append(f"| {shots} | {int(row['n_seeds'].max())} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
