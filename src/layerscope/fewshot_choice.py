"""The held-out choice of layer per shot count of a few-shot sweep, against the best in hindsight.

For each (model, method, shot count, reference seed) job of a sweep (``analysis.fewshot.job_settings``),
the candidate maps (layer, map) are ranked by a pooled metric on the calibration images only; the
chosen one is reported on the held-out images, beside the candidate that is best on the held-out
images themselves (the best in hindsight, which no one choosing beforehand could pick) and the last
layer (the layer AnomalyDINO fixes by hand). One calibration split (``protocol.split_images``, seeded
by ``--seed``) serves every job, so across seeds only the reference images change. Per shot count,
``choice_summary`` gives the mean over seeds with its 95% t-interval (``analysis.fewshot.t_interval``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .protocol import _Candidate, choice_split
from .analysis.fewshot import SHOTS, t_interval
from .results.layout import fewshot_choice_stem
from .analysis.pool import Pool
from .analysis.leaderboard import md
from .results.rundir import write_atomic

GROUP = ["model", "method", SHOTS, "seed"]


def choose_by_shots(pool: Pool, settings: pd.DataFrame, metric: str = "aupro",
                    calibration: float | np.ndarray = 0.5, seed: int = 0) -> pd.DataFrame:
    """One row per (model, method, shots, seed): the held-out choice, the best in hindsight, the last layer.

    Args:
        pool: the sweep's pooled saved maps (``build_pool``).
        settings: ``analysis.fewshot.job_settings`` of the same folder.
        metric: the pooled metric that chooses (``protocol.CHOICE_METRICS``).
        calibration: a share of images (split per category, seeded) or a bool (n_images,) selection.
        seed: the split's seed.

    Returns:
        Columns model, method, shots, seed, candidates, chosen_layer, chosen_head, calibration (the chosen
        one's calibration value), held_out (its held-out value), best_layer, best_head, best_held_out, gap
        (best_held_out - held_out, >= 0), last_layer, last_held_out (the last layer's best-on-calibration map).

    Raises:
        ValueError: an unknown metric, a split leaving a side without defective images, or no job of the
            pool in ``settings``.
    """
    metric, cal, out = choice_split(pool, metric, calibration, seed)
    cands = pool.candidates.reset_index(names="c").merge(settings, on="job")
    if cands.empty:
        raise ValueError("no job of the pooled maps has method.n_references: not a few-shot sweep")
    w_cal, w_out = cal.astype(float), out.astype(float)
    rows = []
    for key, part in cands.groupby(GROUP, sort=False):
        values = []
        for r in part.to_dict("records"):
            data = _Candidate(pool, int(r["c"]))
            values.append((r, getattr(data.metrics(w_cal), metric), getattr(data.metrics(w_out), metric)))
        on_cal = np.array([v[1] for v in values], float)
        on_out = np.array([v[2] for v in values], float)
        if np.isnan(on_cal).all() or np.isnan(on_out).all():
            continue
        chosen, best = int(np.nanargmax(on_cal)), int(np.nanargmax(on_out))
        last_layer = max(v[0]["layer"] for v in values)
        last = [i for i, v in enumerate(values) if v[0]["layer"] == last_layer]
        last = max(last, key=lambda i: -np.inf if np.isnan(on_cal[i]) else on_cal[i])
        rows.append({**dict(zip(GROUP, key)), "candidates": len(values),
                     "chosen_layer": int(values[chosen][0]["layer"]), "chosen_head": str(values[chosen][0]["head"]),
                     "calibration": on_cal[chosen], "held_out": on_out[chosen],
                     "best_layer": int(values[best][0]["layer"]), "best_head": str(values[best][0]["head"]),
                     "best_held_out": on_out[best], "gap": on_out[best] - on_out[chosen],
                     "last_layer": int(last_layer), "last_held_out": on_out[last]})
    table = pd.DataFrame(rows)
    if not table.empty:  # in shot order, then seed (jobs come in folder order: 0, 1, 10, 11, ...)
        order = table[SHOTS].map(_order)
        table = table.assign(_o=order).sort_values(["model", "method", "_o", "seed"], kind="stable")
        table = table.drop(columns="_o").reset_index(drop=True)
    table.attrs.update(metric=metric, calibration_images=int(cal.sum()), held_out_images=int(out.sum()))
    return table


def _order(shots) -> tuple:
    return (1, 0) if shots == "all" else (0, int(shots))


def choice_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method, shots): over seeds, the held-out value of the choice, of the best in hindsight, of
    the last layer and the gap, each mean with its 95% t-interval; the layers chosen and best per seed."""
    out = []
    for (model, method, shots), part in rows.groupby(["model", "method", SHOTS], sort=False):
        part = part.sort_values("seed")
        row = {"model": model, "method": method, SHOTS: shots, "n_seeds": len(part),
               "chosen_layers": ",".join(map(str, part["chosen_layer"])),
               "best_layers": ",".join(map(str, part["best_layer"]))}
        for name in ("held_out", "best_held_out", "last_held_out", "gap"):
            v = part[name].to_numpy(float)
            low, high = t_interval(v)
            row.update({name: float(np.nanmean(v)), f"{name}_ci_low": low, f"{name}_ci_high": high})
        row["gap_max"] = float(part["gap"].max())
        row["chosen_is_best"] = float((part["chosen_layer"] == part["best_layer"]).mean())
        out.append(row)
    table = pd.DataFrame(out)
    if not table.empty:
        table = table.assign(_o=table[SHOTS].map(_order)).sort_values(["model", "method", "_o"], kind="stable")
        table = table.drop(columns="_o").reset_index(drop=True)
    table.attrs.update(rows.attrs)
    return table


def _ci(r: dict, name: str) -> str:
    low, high = r[f"{name}_ci_low"], r[f"{name}_ci_high"]
    return f"{r[name]:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low == low else "")


def summary_markdown(summary: pd.DataFrame) -> str:
    """The held-out choice per shot count as Markdown tables, one per (model, method)."""
    metric = summary.attrs.get("metric", "")
    lines = [f"# Held-out choice of layer per shot count, by pooled `{metric}`", "",
             f"Chosen on {summary.attrs.get('calibration_images', '?')} calibration images, reported on the "
             f"{summary.attrs.get('held_out_images', '?')} held-out images; mean over reference seeds [95% t-interval "
             "across seeds]. Best in hindsight: the map best on the held-out images themselves; gap: its value minus "
             "the choice's (0 = the choice was the best). Last layer: the last layer's map, fixed by hand.", ""]
    for (model, method), part in summary.groupby(["model", "method"], sort=False):
        lines += [f"## {md(model)} · {md(method)}", "",
                  "| shots | seeds | layers chosen | held-out (chosen) | layers best in hindsight | best in hindsight "
                  "| gap | gap max | last layer |", "|---:|---:|---|---:|---|---:|---:|---:|---:|"]
        for r in part.to_dict("records"):
            lines.append(f"| {r[SHOTS]} | {r['n_seeds']} | {r['chosen_layers']} | {_ci(r, 'held_out')} | "
                         f"{r['best_layers']} | {_ci(r, 'best_held_out')} | {_ci(r, 'gap')} | {r['gap_max']:.3f} | "
                         f"{_ci(r, 'last_held_out')} |")
        lines.append("")
    return "\n".join(lines)


def write_choice_by_shots(folder: Path, rows: pd.DataFrame) -> tuple[Path, Path, Path]:
    """``fewshot_choice_<metric>.csv`` (one row per seed), ``_summary.csv`` and ``.md`` in ``folder`` (atomically)."""
    folder = Path(folder)
    stem = fewshot_choice_stem(rows.attrs.get("metric", ""))
    summary = choice_summary(rows)
    paths = (folder / f"{stem}.csv", folder / f"{stem}_summary.csv", folder / f"{stem}.md")
    write_atomic(paths[0], rows.to_csv(index=False, float_format="%.9g"))
    write_atomic(paths[1], summary.to_csv(index=False, float_format="%.9g"))
    write_atomic(paths[2], summary_markdown(summary))
    return paths
