"""``layerscope-view DIR``: one self-contained HTML page per run or sweep, to look at offline.

    layerscope-view RUN_OR_MULTIRUN_DIR [--metric aupro] [--depth layer|relative] [--top 5] [--boot 1000]
                    [--out FILE]

Writes ``DIR/report.html`` and its pictures beside it in ``DIR/report_files/``; no network, no CDN,
no framework: it opens from ``file://`` in any browser, also on an air-gapped machine. The page holds,
in this order:

- a summary line: runs, models and methods, images, defect types, threshold, the page's metric;
- at a glance: a layer x head heatmap of the chosen metric per (model, method), best cell marked;
- images: selecting one (a click, or ``report.html#image=<id>[&layer=L]``) shows, per (model,
  method) side by side, one layer's maps large with a slider (and buttons, arrow keys) stepping
  through layers, the whole layer x map grid with the mask outline, each map's metrics on hover
  and in a table;
- which layer finds it, per defect type: the per-image ranking (``layerscope.report.rank``, mean
  over images, 95% bootstrap CI) beside the dataset-level one (``dataset_metrics.csv``) where present;
- metric against layer per (model, method), with a switch to relative depth (0 = first layer, 1 = last);
- the held-out choice (``choice_<metric>.json``) where present;
- the runs: each job's model, method, overrides, images, rows and time, its config and summary.

Reads only saved results (``results.csv``, ``maps/*.npz``, ``dataset_metrics.csv``, ``choice_*.json``);
never loads a model. Pictures: a JPEG thumbnail and input per image, and per (model, method, image)
one palette PNG of every map (each on its own grid, at most ``MAX_TILE`` px; min-max scaled per map,
inferno), loaded only when the image is shown; the per-map metrics are embedded as JSON.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import quote

import numpy as np
import pandas as pd
from PIL import Image

from .figures.paper import (PALETTE, SEP, Study, head_order, layer_head_scores, line_head, relative_depth,
                            smallest_threshold)
from .results import catalog, layout
from .results.table import read_table
from .view_compare import compare_section

REPORT = layout.REPORT
DEFAULT_METRICS = ("aupro", "auroc", "iou", "entropy")  # the first one with values is the page's metric
TABLE_METRICS = ("iou", "auroc", "aupro", "mass_ratio", "pointing", "entropy", "score_max")  # per-map table
THUMB = 112  # thumbnail side (px)
INPUT = 224  # input picture side in the detail view (px; shown at 150)
MAX_TILE = 64  # a map larger than this is area-averaged down to it in the grid picture
OUTLINE = 128  # mask outlines are traced at most at this resolution


class ViewError(ValueError):
    """A folder or option the page cannot be made from (the message is the one-line error)."""


# ------------------------------------------------------------------------------------------ helpers


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: object, digits: int = 4) -> float | None:
    """A JSON number with ``digits`` significant digits, None for NaN / missing."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if not math.isfinite(v) else float(f"{v:.{digits}g}")


def _fmt(metric: str, value: object) -> str:
    """``value`` formatted as the metric table says (either protocol), ``–`` when missing."""
    m = catalog.PER_IMAGE.get(metric) or catalog.DATASET.get(metric)
    v = _num(value, 17)
    return "–" if v is None else m.format(v) if m else f"{v:.3g}"


def _url(path: Path, folder: Path, prefix: str) -> str:
    """The page's relative URL of ``path`` (written under ``folder``, served as ``prefix/...``)."""
    return "/".join(quote(part) for part in (prefix, *path.relative_to(folder).parts))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in str(text)).strip("-") or "x"


def script_json(data: Any) -> str:
    """``data`` as JSON safe inside ``<script type="application/json">``: ``<``, ``>`` and ``&`` written as
    ``\\u003c``, ``\\u003e``, ``\\u0026`` (the same JSON), so no name (``<!--<script>``, ``</script>``) ends or
    comments out the block."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _hex(rgba: Sequence[float]) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgba[:3])


def _ink(rgba: Sequence[float]) -> str:
    return "#000" if 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] > 0.55 else "#fff"


def _relpath(path: Path, root: Path) -> str:
    return "." if path == root else str(path.relative_to(root))


def pick_metric(study: Study, metric: str | None) -> str:
    """The page's metric: ``metric`` when given (a per-image map metric), else the first of
    ``DEFAULT_METRICS`` with values.

    Raises:
        ViewError: an unknown metric, or one without any value.
    """
    if metric is None:
        for name in DEFAULT_METRICS:
            if name in study.df.columns and study.df[name].notna().any():
                return name
        raise ViewError(f"{study.root}: no metric has a value in results.csv")
    if metric not in catalog.MAP_METRICS:
        raise ViewError(f"--metric {metric}: expected one of {', '.join(catalog.MAP_METRICS)}")
    if metric not in study.df.columns or study.df[metric].isna().all():
        raise ViewError(f"--metric {metric}: no value in the results (no masks?)")
    return metric


# ------------------------------------------------------------------------------------------ pictures


def _palette() -> bytes:
    import matplotlib

    colours = (matplotlib.colormaps["inferno"](np.linspace(0, 1, 255))[:, :3] * 255).round().astype(np.uint8)
    return colours.tobytes() + bytes([255, 255, 255])  # index 255: background (a layer an image lacks)


def _tile(m: np.ndarray, side: int) -> np.ndarray:
    """(h, w) map -> (side, side) uint8 palette indices 0..254, min-max scaled on its own."""
    m = np.nan_to_num(np.asarray(m, np.float32))
    if m.shape != (side, side):
        down = max(m.shape) > side
        m = np.asarray(Image.fromarray(m).resize((side, side), Image.BOX if down else Image.NEAREST))  # mode F
    low, high = float(m.min()), float(m.max())
    scaled = (m - low) / (high - low) if high > low else np.zeros_like(m)
    return np.clip(np.round(scaled * 254), 0, 254).astype(np.uint8)


def map_sprite(maps: dict[int, np.ndarray], layers: Sequence[int], columns: int, side: int,
               palette: bytes) -> Image.Image:
    """Every map of one image in one palette picture: layers (rows) x maps (columns), ``side`` px each."""
    canvas = np.full((len(layers) * side, columns * side), 255, np.uint8)
    for r, layer in enumerate(layers):
        for k, m in enumerate(maps.get(layer, ())[:columns]):
            canvas[r * side:(r + 1) * side, k * side:(k + 1) * side] = _tile(m, side)
    picture = Image.fromarray(canvas)
    picture.putpalette(palette)  # L -> P: one byte per cell, compresses well
    return picture


def _edge(mask: np.ndarray) -> np.ndarray:
    inner = np.zeros_like(mask)
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def thumbnail(image: np.ndarray, mask: np.ndarray | None, side: int) -> Image.Image:
    """The input at ``side`` px, with the mask outline drawn in light blue."""
    picture = Image.fromarray(image).convert("RGB").resize((side, side), Image.BILINEAR)
    if mask is not None and mask.any() and not mask.all():
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side), Image.BOX)) > 0
        pixels = np.asarray(picture).copy()
        pixels[_edge(small)] = (0, 208, 255)
        picture = Image.fromarray(pixels)
    return picture


def outline_path(mask: np.ndarray | None, size: int = OUTLINE) -> list | None:
    """The mask outline as ``[width, height, svg path]`` in a grid of at most ``size`` cells (a
    cell holding any mask pixel counts as mask), or None without a mask or for an all/none mask."""
    if mask is None or not mask.any() or mask.all():
        return None
    from skimage.measure import approximate_polygon, block_reduce, find_contours

    f = max(1, math.ceil(max(mask.shape) / size))
    small = block_reduce(mask.astype(bool), (f, f), np.max) if f > 1 else mask.astype(bool)
    parts = []
    for contour in find_contours(np.pad(small, 1).astype(np.float32), 0.5):
        points = approximate_polygon(contour, tolerance=0.4) - 0.5  # padded pixel centres -> cell edges
        parts.append("M" + " ".join(f"{x:.4g},{y:.4g}" for y, x in points) + "Z")
    return [int(small.shape[1]), int(small.shape[0]), "".join(parts)]


# ------------------------------------------------------------------------------------------ sections


def _jobs(study: Study) -> tuple[list[dict[str, Any]], int]:
    """One entry per run folder, failed and unfinished ones included (``results.jobs``): job, state,
    why, summary (run_summary.json), config text, overrides; and the sweep's planned jobs never started."""
    from .results.jobs import job_states
    from .results.rundir import job_overrides

    states, never = job_states(study.root)
    out = []
    for job, state, why in states:
        folder = study.root / job
        summary_file, config_file = folder / layout.SUMMARY, folder / layout.CONFIG
        try:
            summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        except ValueError:  # cut short: shown as unfinished
            summary = None
        summary = summary if isinstance(summary, dict) else None
        if state == "finished" and not (summary or {}).get("complete"):
            state, why = "unfinished", f"{layout.SUMMARY} unreadable"
        config = config_file.read_text(errors="replace") if config_file.is_file() else ""
        out.append({"job": job, "state": state, "why": why, "summary": summary, "config": config,
                    "overrides": job_overrides(folder), "merged": study.merged.get(job)})
    return out, never


def _runs_section(study: Study, jobs: list[dict[str, Any]]) -> str:
    df = study.df
    rows = []
    for j in jobs:
        part = df[df["job"] == j["job"]]
        s = j["summary"] or {}
        model = s.get("model") or (part["model"].iloc[0] if len(part) else "")
        method = s.get("method") or (part["method"].iloc[0] if len(part) else "")
        overrides = " ".join(f"{k}={v}" for k, v in j["overrides"].items())
        state = j["state"] if j["state"] == "finished" else f"{j['state']}: {j['why']}"
        state = f"{state}; same results as job {j['merged']}, shown once" if j["merged"] else state
        seconds = f"{s['seconds']:.0f} s" if isinstance(s.get("seconds"), (int, float)) else ""
        mark = "" if j["state"] == "finished" else f" class={j['state']}"
        rows.append(f"<tr{mark}><td>{_e(j['job'])}</td><td>{_e(model)}</td><td>{_e(method)}</td>"
                    f"<td>{_e(overrides)}</td><td class=n>{_e(s.get('images', part['image'].nunique()))}</td>"
                    f"<td class=n>{_e(s.get('rows', len(part)))}</td><td class=n>{seconds}</td><td>{_e(state)}</td>"
                    "</tr>")
    details = []
    for j in jobs:
        name = "this run" if j["job"] == "." else f"job {j['job']}"
        body = _e(j["config"] or "(no config.yaml)")
        summary = _e(json.dumps(j["summary"], indent=1)) if j["summary"] else "(no run_summary.json)"
        details.append(f"<details><summary>config and summary of {_e(name)}</summary><div class=cfg>"
                       f"<pre>{body}</pre><pre>{summary}</pre></div></details>")
    return (f"<section id=runs><h2>Runs</h2><table class=t><thead><tr><th>job</th><th>model</th><th>method</th>"
            "<th>overrides</th><th>images</th><th>rows</th><th>time</th><th>state</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>{''.join(details)}</section>")


def _run_count(jobs: list[dict[str, Any]], never: int) -> str:
    """``3 runs (1 finished, 1 failed, 1 unfinished; 2 planned never started)``: nothing that did not finish hidden."""
    counts = {state: sum(j["state"] == state for j in jobs) for state in ("finished", "failed", "unfinished")}
    parts = ", ".join(f"{n} {state}" for state, n in counts.items() if n or state == "finished")
    return (f"<b>{len(jobs)}</b> run{'s' if len(jobs) != 1 else ''} ({parts}"
            f"{f'; {never} planned never started' if never else ''})")


def _summary_section(study: Study, jobs: list[dict[str, Any]], never: int, metric: str) -> str:
    df = study.df
    thresholds = sorted(df["threshold"].dropna().unique())
    rule = ", ".join(sorted(df["threshold_rule"].astype(str).unique()))
    categories = sorted(str(c) for c in df["category"].unique() if c)
    facts = [_run_count(jobs, never),
             f"<b>{len(study.series())}</b> model · method: {_e(', '.join(study.series()))}",
             f"<b>{df['image'].nunique()}</b> images", f"defect types: {_e(', '.join(categories) or '–')}",
             f"threshold ({_e(rule)}) {_e(', '.join(f'{t:g}' for t in thresholds) or '–')}"
             f"{' (the smallest is shown)' if len(thresholds) > 1 else ''}",
             f"metric: <b>{_e(catalog.title(metric))}</b> ({'lower' if catalog.lower_is_better(metric) else 'higher'}"
             " is better)"]
    merged = "".join(f"<p class=note>Job {_e(job)} holds the same results as job {_e(kept)} (e.g. "
                     "<code>method=auto</code> and <code>method=features</code> on a CNN): shown once.</p>"
                     for job, kept in study.merged.items())
    broken = [j for j in jobs if j["state"] != "finished"]
    warn = ""
    if broken or never:
        names = "; ".join(f"{'this run' if j['job'] == '.' else 'job ' + j['job']} {j['state']}: {j['why']}"
                          for j in broken)
        later = f"{'; ' if names else ''}{never} planned job(s) never started" if never else ""
        warn = (f"<p class=warn>Not every run finished: {_e(names)}{_e(later)}. The page shows the images each run "
                "finished (see <a href=\"#runs\">runs</a>).</p>")
    return f"<section id=summary><p class=facts>{' · '.join(facts)}</p>{warn}{merged}</section>"


def _scores(study: Study, metric: str, ranked: pd.DataFrame, n_boot: int) -> dict[str, pd.DataFrame]:
    """Per series, the layer x head table of ``metric`` (``layer_head_scores``' columns). A series that is
    one (model, method) takes its numbers from the per-image ranking's ``all`` rows, so the heatmap, the
    curves and the ranking print the same mean and CI; other series (several sizes or jobs) get their own."""
    out = {}
    everything = ranked[ranked["category"] == "all"]
    for series in study.series():
        info = study.info(series)
        if series != f"{info['model']}{SEP}{info['method']}":
            out[series] = layer_head_scores(study, series, metric, n_boot=n_boot)
            continue
        table = everything[(everything["model"] == info["model"]) & (everything["method"] == info["method"])]
        table = table[["layer", "head", "mean", "ci_low", "ci_high", "n"]].astype({"layer": int, "head": str})
        order = {h: i for i, h in enumerate(head_order(table["head"]))}
        table = table.sort_values(["layer", "head"], key=lambda c: c.map(order) if c.name == "head" else c)
        table = table.reset_index(drop=True)
        if len(table):
            best = table["mean"].idxmin() if catalog.lower_is_better(metric) else table["mean"].idxmax()
            table["best"] = table.index == best
        else:
            table["best"] = pd.Series(dtype=bool)
        out[series] = table
    return out


def _glance_section(study: Study, scores: dict[str, pd.DataFrame], metric: str, series_index: dict[str, int]) -> str:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    tables = {s: t for s, t in scores.items() if not t.empty}
    if not tables:
        return f"<section id=glance><h2>At a glance</h2><p>No {_e(catalog.title(metric))} values.</p></section>"
    values = pd.concat([t["mean"] for t in tables.values()])
    low, high = float(values.min()), float(values.max())
    span = high - low if high > low else 1.0
    m = catalog.get(metric)
    blocks = []
    for series, table in tables.items():
        heads = head_order(table["head"])
        cells = {(int(r.layer), r.head): r for r in table.itertuples()}
        best = table[table["best"]].iloc[0]
        method = study.info(series)["method"]
        head_kind = "head" if method in ("cls_attention", "rollout") else "map"
        rows = ["<tr><th></th>" + "".join(f"<th>{_e(h)}</th>" for h in heads) + "</tr>"]
        for layer in sorted(table["layer"].unique()):
            tds = []
            for h in heads:
                r = cells.get((int(layer), h))
                if r is None:
                    tds.append("<td></td>")
                    continue
                rgba = cmap((r.mean - low) / span)
                ci = f" [{_fmt(metric, r.ci_low)}, {_fmt(metric, r.ci_high)}]" if r.ci_low == r.ci_low else ""
                tip = f"layer {layer} · {head_kind} {h}: {m.title} {_fmt(metric, r.mean)}{ci}, {r.n} images"
                mark = " class=best" if r.best else ""
                tds.append(f"<td{mark} style=\"background:{_hex(rgba)};color:{_ink(rgba)}\" title=\"{_e(tip)}\" "
                           f"data-s={series_index.get(series, -1)} data-layer={int(layer)}>"
                           f"{_fmt(metric, r.mean).lstrip('0') or '0'}</td>")
            rows.append(f"<tr><th>L{int(layer)}</th>{''.join(tds)}</tr>")
        ci = (f" [{_fmt(metric, best['ci_low'])}, {_fmt(metric, best['ci_high'])}]"
              if best["ci_low"] == best["ci_low"] else "")
        blocks.append(f"<div class=hm><h3>{_e(series)}</h3><p class=bestline>best: <b>layer {int(best['layer'])} · "
                      f"{_e(head_kind)} {_e(best['head'])}</b>, {_e(m.title)} {_fmt(metric, best['mean'])}{ci}</p>"
                      f"<table class=heat>{''.join(rows)}</table></div>")
    stops = ", ".join(_hex(cmap(x)) for x in np.linspace(0, 1, 6))
    legend = (f"<div class=legend><span>{_fmt(metric, low)}</span><span class=bar style=\"background:"
              f"linear-gradient(90deg,{stops})\"></span><span>{_fmt(metric, high)}</span> {_e(m.label)}, mean over "
              "images; the best cell is outlined; hover a cell for its 95% CI, click it to see that layer below</div>")
    return (f"<section id=glance><h2>At a glance: which layer, which head?</h2>{legend}"
            f"<div class=row>{''.join(blocks)}</div></section>")


def _dataset_table(study: Study) -> pd.DataFrame | None:
    files = sorted(study.root.rglob(layout.DATASET_METRICS))
    if not files:
        return None
    frames = []
    for f in files:
        t = read_table(f)
        t["job"] = _relpath(f.parent, study.root)
        frames.append(t)
    table = pd.concat(frames, ignore_index=True)
    return table[~table["job"].isin(list(study.merged))]


def _ranking_section(study: Study, metric: str, ranked: pd.DataFrame, top: int) -> str:
    from .results.ranking import rank_dataset

    m = catalog.get(metric)
    dataset = _dataset_table(study)
    dataset_metric = None
    if dataset is not None:
        from .protocol import dataset_metric as to_dataset

        try:
            dataset_metric = to_dataset(metric)
        except ValueError:  # a per-image-only metric (IoU, entropy): pooled AUPRO beside it
            dataset_metric = "aupro"
        dataset = rank_dataset(dataset, dataset_metric) if dataset_metric in dataset.columns else None
    several = len(ranked[["model", "method"]].drop_duplicates()) > 1 or (
        dataset is not None and len(dataset[["model", "method"]].drop_duplicates()) > 1)
    who_head = "<th>model · method</th>" if several else ""

    def who(model: object, method: object) -> str:
        return f"<td>{_e(model)} · {_e(method)}</td>" if several else ""

    categories = sorted(set(ranked["category"]) | set(dataset["category"] if dataset is not None else []),
                        key=lambda c: (c != "all", c == "good", c))
    cards = []
    for category in categories:
        part = ranked[ranked["category"] == category].head(top)
        rows = "".join(f"<tr><td class=n>{r.rank}</td>{who(r.model, r.method)}<td class=n>{r.layer}</td>"
                       f"<td>{_e(r.head)}</td><td class=n><b>{_fmt(metric, r.mean)}</b></td>"
                       f"<td class=ci>[{_fmt(metric, r.ci_low)}, {_fmt(metric, r.ci_high)}]</td><td class=n>{r.n}</td>"
                       "</tr>" for r in part.itertuples())
        body = (f"<h4>per image: {_e(m.title)}, mean over images, 95% CI</h4><table class=t><thead><tr><th>#</th>"
                f"{who_head}<th>layer</th><th>head</th><th>mean</th><th>95% CI</th><th>images</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>" if len(part) else "<p class=note>no per-image value</p>")
        if dataset is not None:
            d = dataset[dataset["category"] == category].head(top)
            low, high = f"{dataset_metric}_ci_low", f"{dataset_metric}_ci_high"
            has_ci = low in d.columns and d[low].notna().any()
            drows = []
            for r in d.to_dict("records"):
                ci = f"<td class=ci>[{_fmt(dataset_metric, r[low])}, {_fmt(dataset_metric, r[high])}]</td>" \
                    if has_ci else ""
                drows.append(f"<tr><td class=n>{r['rank']}</td>{who(r['model'], r['method'])}"
                             f"<td class=n>{r['layer']}</td><td>{_e(r['head'])}</td>"
                             f"<td class=n><b>{_fmt(dataset_metric, r[dataset_metric])}</b></td>{ci}"
                             f"<td class=n>{_fmt('image_auroc', r.get('image_auroc'))}</td></tr>")
            body += (f"<h4>dataset level: pooled {_e(catalog.title(dataset_metric))}, one threshold for all images"
                     f"</h4><table class=t><thead><tr><th>#</th>{who_head}<th>layer</th><th>head</th><th>pooled</th>"
                     f"{'<th>95% CI</th>' if has_ci else ''}<th>image AUROC</th></tr></thead><tbody>{''.join(drows)}"
                     "</tbody></table>")
        cards.append(f"<div class=card><h3>{_e(category or '(no category)')}</h3>{body}</div>")
    single = "" if several else f" ({_e(' · '.join(ranked[['model', 'method']].iloc[0]))})" if len(ranked) else ""
    note = ("" if dataset is not None else "<p class=note>No dataset-level protocol here: <code>layerscope-report "
            "DIR --protocol dataset</code> writes <code>dataset_metrics.csv</code>.</p>")
    return (f"<section id=ranking><h2>Which layer finds it, per defect type{single}</h2><p class=note>Per image: "
            "each image scored on its own, then the mean over images (<code>layerscope-report</code>'s ranking). "
            "Dataset level: every pixel of every image pooled, good images included (MVTec AD's protocol). Both "
            "choose on the images they report on: the held-out choice gives an honest estimate.</p>"
            f"{note}<div class=cards>{''.join(cards)}</div></section>")


def _ticks(low: float, high: float, n: int = 5, integer: bool = False) -> list[float]:
    from matplotlib.ticker import MaxNLocator

    return [float(t) for t in MaxNLocator(n, integer=integer).tick_values(low, high) if low - 1e-9 <= t <= high + 1e-9]


def _chart(metric: str, lines: list[dict[str, Any]]) -> str:
    """One SVG: ``metric`` against layer (class ``xl``) and against relative depth (class ``xd``)."""
    w, h, left, right, top, bottom = 400, 230, 44, 12, 10, 34
    lows = [p[3] if p[3] == p[3] else p[2] for line in lines for p in line["points"]]
    highs = [p[4] if p[4] == p[4] else p[2] for line in lines for p in line["points"]]
    y0, y1 = min(lows), max(highs)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad
    layers = [p[0] for line in lines for p in line["points"]]
    axes = {"xl": (min(layers), max(layers) if max(layers) > min(layers) else min(layers) + 1), "xd": (0.0, 1.0)}

    def py(v: float) -> float:
        return top + (h - top - bottom) * (1 - (v - y0) / (y1 - y0))

    out = [f"<svg class=chart viewBox=\"0 0 {w} {h}\" width={w} height={h} role=img>"]
    for t in _ticks(y0, y1):
        out.append(f"<line class=gridl x1={left} x2={w - right} y1={py(t):.1f} y2={py(t):.1f} />"
                   f"<text x={left - 4} y={py(t) + 3:.1f} text-anchor=end>{t:g}</text>")
    if metric == "auroc" and y0 < 0.5 < y1:
        out.append(f"<line class=chance x1={left} x2={w - right} y1={py(0.5):.1f} y2={py(0.5):.1f} />")
    for cls, (x0, x1) in axes.items():
        def px(v: float, x0=x0, x1=x1) -> float:
            return left + (w - left - right) * (v - x0) / (x1 - x0)

        g = [f"<g class={cls}>"]
        ticks = _ticks(x0, x1, 8, integer=True) if cls == "xl" else [0, 0.25, 0.5, 0.75, 1]
        for t in ticks:
            g.append(f"<text x={px(t):.1f} y={h - bottom + 14} text-anchor=middle>{t:g}</text>")
        label = "layer (0 = first block)" if cls == "xl" else "relative depth (0 = first layer, 1 = last)"
        g.append(f"<text class=axl x={(left + w - right) / 2} y={h - 4} text-anchor=middle>{label}</text>")
        for line in lines:
            idx = 0 if cls == "xl" else 1
            pts = [(px(p[idx]), p) for p in line["points"]]
            band = [(x, p[4]) for x, p in pts if p[4] == p[4]] + [(x, p[3]) for x, p in reversed(pts) if p[3] == p[3]]
            if band:
                g.append(f"<polygon points=\"{' '.join(f'{x:.1f},{py(v):.1f}' for x, v in band)}\" "
                         f"fill=\"{line['colour']}\" fill-opacity=0.16 />")
            g.append(f"<polyline points=\"{' '.join(f'{x:.1f},{py(p[2]):.1f}' for x, p in pts)}\" fill=none "
                     f"stroke=\"{line['colour']}\" stroke-width=1.8 />")
            for x, p in pts:
                ci = f" [{_fmt(metric, p[3])}, {_fmt(metric, p[4])}]" if p[3] == p[3] else ""
                tip = f"{line['label']} · layer {p[0]} (depth {p[1]:.2f}): {_fmt(metric, p[2])}{ci}"
                g.append(f"<circle cx={x:.1f} cy={py(p[2]):.1f} r=3 fill=\"{line['colour']}\"><title>{_e(tip)}"
                         "</title></circle>")
        g.append("</g>")
        out += g
    out.append(f"<text class=axl transform=\"translate(11,{(top + h - bottom) / 2}) rotate(-90)\" "
               f"text-anchor=middle>{_e(catalog.title(metric))}</text></svg>")
    return "".join(out)


def _curves_section(study: Study, metric: str, scores: dict[str, pd.DataFrame], n_boot: int, depth: str) -> str:
    colours = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(study.series())}
    metrics = list(dict.fromkeys([metric, *(m for m in catalog.DEFAULT_CURVES)]))
    rows = smallest_threshold(study.df[study.df["head"] != "best"])
    charts, legend = [], {}
    for name in metrics:
        if name not in rows.columns or rows[name].isna().all():
            continue
        lines = []
        for series in study.series():
            part = rows[(rows["series"] == series)].dropna(subset=[name])
            if part.empty:
                continue
            table = scores[series] if name == metric else layer_head_scores(study, series, name, n_boot=n_boot)
            method = study.info(series)["method"]
            head = line_head(part, method, name)
            line = table[table["head"] == head].sort_values("layer")
            n_layers = int(pd.to_numeric(part["num_layers"], errors="coerce").max()) \
                if part["num_layers"].notna().any() else int(part["layer"].max()) + 1
            depths = relative_depth(line["layer"].to_numpy(), n_layers)
            label = f"{series}{SEP}{'head ' if method == 'cls_attention' else ''}{head}"
            legend[series] = colours[series]
            lines.append({"label": label, "colour": colours[series],
                          "points": [(int(r.layer), float(d), r.mean, r.ci_low, r.ci_high)
                                     for r, d in zip(line.itertuples(), depths)]})
        if lines:
            charts.append(f"<figure class=chartbox><figcaption>{_e(catalog.title(name))} by layer (mean over images,"
                          f" 95% CI)</figcaption>{_chart(name, lines)}</figure>")
    if not charts:
        return ""
    keys = "".join(f"<span class=key><i style=\"background:{c}\"></i>{_e(s)}</span>" for s, c in legend.items())
    checked = ("", " checked") if depth == "relative" else (" checked", "")
    switch = (f"<div class=switch>x-axis: <label><input type=radio name=depth value=layer{checked[0]}> layer</label>"
              f"<label><input type=radio name=depth value=relative{checked[1]}> relative depth (0 = first layer, "
              "1 = last: models of different depths on one axis)</label></div>")
    return (f"<section id=curves><h2>By layer</h2>{switch}<div class=keys>{keys}</div><p class=note>One line per "
            "model · method: the head mean for attention, else the map best on average; hover a point for its value."
            f"</p><div class=row>{''.join(charts)}</div></section>")


def _choice_section(study: Study) -> str:
    files = sorted(study.root.rglob("choice_*.json"))
    if not files:
        return ""
    blocks = []
    for path in files:
        try:
            r = json.loads(path.read_text())
            c = r["chosen"]
        except (ValueError, KeyError) as e:
            blocks.append(f"<p class=note>{_e(path.name)}: unreadable ({_e(e)})</p>")
            continue
        where = _relpath(path.parent, study.root)
        job = "" if c.get("job") in (None, ".") else f" (job {_e(c['job'])})"
        held = "".join(f"<tr><td>{_e(k)}</td><td class=n><b>{v['value']:.3f}</b></td><td class=ci>[{v['ci'][0]:.3f}, "
                       f"{v['ci'][1]:.3f}]</td></tr>" for k, v in r.get("held_out", {}).items())
        stab = "".join(f"<tr><td>{_e(s['model'])} · {_e(s['method'])}</td><td class=n>{s['layer']}</td>"
                       f"<td>{_e(s['head'])}</td><td class=n>{s['wins']:.2f}</td></tr>" for s in r.get("stability", []))
        econ = r.get("economics", {}).get("verdict", "")
        blocks.append(
            f"<div class=card><h3>{_e(path.name)}{'' if where == '.' else ' in ' + _e(where)}</h3>"
            f"<p>Chosen by pooled <b>{_e(r['metric'])}</b> on {len(r.get('calibration_images', []))} calibration "
            "images "
            f"among {r.get('candidates', '?')} candidates: <b>{_e(c['model'])} · {_e(c['method'])} · layer "
            f"{_e(c['layer'])} · {_e(c['head'])}</b>{job}; threshold {r['threshold']:.4g} ({_e(r['threshold_rule'])})."
            f"</p><h4>on the {len(r.get('held_out_images', []))} held-out images</h4><table class=t><thead><tr>"
            f"<th>metric</th><th>value</th><th>95% CI</th></tr></thead><tbody>{held}</tbody></table>"
            f"<h4>stability: share of {r.get('n_stability', '?')} calibration resamples won</h4><table class=t>"
            f"<thead><tr><th>model · method</th><th>layer</th><th>head</th><th>wins</th></tr></thead><tbody>{stab}"
            f"</tbody></table>{f'<p>{_e(econ)}</p>' if econ else ''}</div>")
    return f"<section id=choice><h2>Held-out choice</h2><div class=cards>{''.join(blocks)}</div></section>"


# ------------------------------------------------------------------------------------------ gallery


def _load(study: Study, series: str, image: str) -> dict | None:
    """The saved maps of ``image`` in ``series``, layers merged over the jobs that hold it (not cached)."""
    return study.load(series, image)


def _gallery(study: Study, files: Path, prefix: str, metric: str, scores: dict[str, pd.DataFrame],
             series_index: dict[str, int]) -> dict[str, Any]:
    """Write the pictures under ``files`` (served as ``prefix/``) and return the page's data (series,
    images, metric columns); fills ``series_index`` (series -> its index in the data)."""
    palette = _palette()
    saved = study.images[study.images["saved"]]
    rows = smallest_threshold(study.df[study.df["head"] != "best"])
    columns = [m for m in TABLE_METRICS if m in rows.columns and rows[m].notna().any()]
    if metric not in columns and metric in rows.columns:
        columns.insert(0, metric)
    values: dict[str, dict] = {}
    for series, part in rows.groupby("series"):
        values[series] = {key: [_num(v) for v in vals] for key, vals in
                          zip(zip(part["image"], part["layer"].astype(int), part["head"]),
                              part[columns].to_numpy(float).tolist())}
    order = saved.sort_values(["category", "image"])[["image", "category"]].drop_duplicates("image")
    images: dict[str, dict[str, Any]] = {}
    series_data = []
    for series in study.series():
        info = study.info(series)
        ids = saved.loc[saved["series"] == series, "image"].drop_duplicates().tolist()
        if not ids:
            continue
        first = _load(study, series, ids[0])
        layers = sorted(first["maps"])
        names = max((list(first["names"][layer]) for layer in layers), key=len)
        side = int(min(MAX_TILE, max(max(first["maps"][layer].shape[1:]) for layer in layers)))
        table = scores.get(series)
        best = table[table["best"]].iloc[0] if table is not None and not table.empty else None
        n_layers = first["meta"].get("num_layers") or layers[-1] + 1
        si = len(series_data)
        series_index[series] = si
        series_data.append({
            "label": series, "model": info["model"], "method": info["method"], "layers": layers, "names": names,
            "depth": [round(float(d), 3) for d in relative_depth(np.array(layers), n_layers)], "tile": side,
            "best": None if best is None or int(best["layer"]) not in layers else
            [layers.index(int(best["layer"])), names.index(best["head"]) if best["head"] in names else -1],
        })
        folder = files / "grid" / f"{si}-{_slug(series)}"  # the index keeps two series that slug alike apart
        folder.mkdir(parents=True, exist_ok=True)
        vals = values.get(series, {})
        for image in ids:
            d = first if image == ids[0] else _load(study, series, image)
            stem = layout.image_stem(image)  # one naming rule for every file named after an image id
            path = folder / f"{stem}.png"
            map_sprite(d["maps"], layers, len(names), side, palette).save(path, optimize=False, compress_level=6)
            entry = images.get(image)
            if entry is None:
                thumb = files / "thumb" / f"{stem}.jpg"
                big = files / "input" / f"{stem}.jpg"
                thumb.parent.mkdir(parents=True, exist_ok=True)
                big.parent.mkdir(parents=True, exist_ok=True)
                thumbnail(d["image"], d["mask"], THUMB).save(thumb, quality=82)
                Image.fromarray(d["image"]).convert("RGB").resize((INPUT, INPUT), Image.BILINEAR).save(big, quality=85)
                entry = images[image] = {"id": image, "cat": str(d["meta"].get("category") or ""),
                                         "thumb": _url(thumb, files, prefix), "input": _url(big, files, prefix),
                                         "o": outline_path(d["mask"]), "s": {}}
            entry["s"][str(si)] = {"g": _url(path, files, prefix),
                                   "v": [vals.get((image, layer, name)) for layer in layers for name in names]}
    ordered = [images[i] for i in order["image"] if i in images]
    metrics = [{"name": m, "title": catalog.title(m), "lo": catalog.lower_is_better(m),
                "d": 2 if catalog.get(m).fmt == ".2f" else 3 if catalog.get(m).fmt == ".3f" else 0} for m in columns]
    return {"metric": metric, "metrics": metrics, "series": series_data, "images": ordered}


def _gallery_section(data: dict[str, Any]) -> str:
    if not data["images"]:
        return ("<section id=gallery><h2>Images</h2><p class=note>No saved maps (<code>save_maps=false</code>?): "
                "nothing to show per image.</p></section>")
    categories = sorted({im["cat"] for im in data["images"]})
    options = "".join(f"<option value=\"{_e(c)}\">{_e(c or '(none)')}</option>" for c in categories)
    thumbs = "".join(f"<a class=th href=\"#image={quote(im['id'])}\" data-id=\"{_e(im['id'])}\" "
                     f"data-cat=\"{_e(im['cat'])}\"><img loading=lazy src=\"{_e(im['thumb'])}\" width={THUMB} "
                     f"height={THUMB} alt=\"{_e(im['id'])}\"><span>{_e(im['id'])}</span></a>" for im in data["images"])
    return (f"<section id=gallery><h2>Images</h2><div class=gbar>{len(data['images'])} images · defect type "
            f"<select id=catsel><option value=\"*\">all</option>{options}</select> <label><input type=checkbox "
            "id=olsel checked> mask outline on the maps</label> <span class=note>click an image; ← → step through "
            "layers</span></div><div class=gal><div id=thumbs class=thumbs>"
            f"{thumbs}</div><div id=detail class=detail></div></div></section>")


# ------------------------------------------------------------------------------------------ page


CSS = """
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2329;background:#f6f7f9}
header{background:#1d2329;color:#fff;padding:10px 20px;position:sticky;top:0;z-index:5;display:flex;gap:18px;
align-items:baseline;flex-wrap:wrap}header h1{font-size:17px;margin:0}
header nav a{color:#9fd3ff;margin-right:12px;text-decoration:none}header .where{color:#aab;font-size:12px}
main{padding:4px 20px 40px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:10px 16px;margin:14px 0}
h2{font-size:16px;margin:4px 0 8px}h3{font-size:14px;margin:4px 0}
h4{font-size:12px;margin:8px 0 2px;color:#555;font-weight:600}.note{color:#666;font-size:12px}.facts{margin:2px 0 8px}
.warn{background:#fff4e5;border-left:3px solid #D55E00;padding:4px 8px;margin:4px 0}
tr.failed td,tr.unfinished td{color:#a33}
table.t{border-collapse:collapse;font-size:12px}
table.t th,table.t td{padding:2px 7px;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}
table.t th{color:#555;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.ci{color:#777;font-size:11px}details{margin-top:6px;font-size:12px}.cfg{display:flex;gap:12px;flex-wrap:wrap}
pre{background:#f6f8fa;padding:6px 10px;max-height:320px;overflow:auto;margin:4px 0;font-size:11px}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #e1e4e8;border-radius:6px;padding:6px 10px;background:#fcfcfd}
table.heat{border-collapse:separate;border-spacing:2px;font-size:11px}
table.heat td{width:40px;height:22px;text-align:center;cursor:pointer;font-variant-numeric:tabular-nums;
border-radius:2px}table.heat th{font-weight:500;color:#555;padding:0 4px}
table.heat td.best{outline:3px solid #D55E00;outline-offset:-1px;font-weight:700}
.bestline{margin:0 0 4px;font-size:12px}
.legend{font-size:12px;display:flex;align-items:center;gap:6px;margin-bottom:6px;color:#444}
.legend .bar{width:160px;height:10px;display:inline-block;border-radius:2px}svg.chart{font-size:10px;fill:#444}
svg.chart .gridl{stroke:#e6e6e6}svg.chart .chance{stroke:#999;stroke-dasharray:4 3}
svg.chart .axl{font-size:11px;fill:#333}.chartbox{margin:0}.chartbox figcaption{font-size:12px;font-weight:600}
.rel .xl,body:not(.rel) .xd{display:none}.keys{font-size:12px;display:flex;flex-wrap:wrap;gap:14px;margin:4px 0}
.key i{display:inline-block;width:14px;height:4px;margin-right:5px;vertical-align:middle}.switch{font-size:12px}
.switch label{margin-left:10px}.gbar{font-size:12px;margin-bottom:6px}
.gal{display:flex;gap:14px;align-items:flex-start}
.thumbs{width:260px;flex:none;max-height:86vh;overflow:auto;display:flex;flex-wrap:wrap;gap:6px;
align-content:flex-start}
.th{display:block;width:118px;text-decoration:none;color:#333;font-size:10px;border:2px solid transparent;
border-radius:4px;padding:1px}.th img{display:block;width:112px;height:112px;background:#ddd}
.th span{display:block;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.th.sel{border-color:#0a7bd8;background:#e8f3fd}.detail{flex:1;min-width:0}
.dhead{display:flex;gap:10px;align-items:center;margin-bottom:6px}.dhead b{font-size:15px}
.dtitle{display:flex;gap:10px;align-items:center}.dhead .note{max-width:640px;margin:4px 0}
.cat{background:#eef;border-radius:3px;padding:0 6px;font-size:12px}
.dbody{display:flex;gap:12px;flex-wrap:wrap;align-items:flex-start}.stack{position:relative;line-height:0}
.stack img{width:100%;height:100%}figure.input{margin:0;width:150px;flex:none}
figure.input .stack{width:150px;height:150px}figcaption{font-size:11px;color:#666}
svg.ol{position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none;overflow:visible}
svg.ol path{fill:none;stroke:#56B4E9;stroke-width:1.4;vector-effect:non-scaling-stroke}
.no-ol .maps svg.ol{display:none}
.sblock{border:1px solid #e1e4e8;border-radius:6px;padding:6px 10px;background:#fcfcfd;min-width:0;flex:1 1 400px;
max-width:620px}.lctl{display:flex;gap:6px;align-items:center;font-size:12px;margin:4px 0}.lctl input{width:180px}
.big{display:flex;gap:4px;margin:4px 0 8px}
.bc{position:relative;background-repeat:no-repeat;image-rendering:pixelated;border-radius:2px}
.bc .cap{position:absolute;left:0;bottom:-15px;font-size:10px;color:#333;white-space:nowrap;line-height:1}
.big{padding-bottom:12px}.g{display:grid;gap:2px 4px;font-size:10px;color:#555;align-items:center}
.colh,.rowh{display:grid;text-align:center}.rowh{height:100%;text-align:right}
.rowh div{display:flex;align-items:center;justify-content:flex-end}.rowh .on{color:#0a7bd8;font-weight:700}
.gwrap{position:relative;line-height:0}.gwrap img.sprite{width:100%;height:100%;image-rendering:pixelated}
.cells{position:absolute;inset:0;display:grid}.gc{box-shadow:inset 0 0 0 1px #fff;cursor:pointer}
.gc.on{box-shadow:inset 0 0 01px #fff,inset 0 0 0 2px #0a7bd8}.gc:hover{box-shadow:inset 0 0 0 2px #fff}
.info{font-size:11px;min-height:16px;color:#333;margin:4px 0}.tbl{max-height:250px;overflow:auto;margin-top:4px}
table.maptable{border-collapse:collapse;font-size:11px}
table.maptable th{position:sticky;top:0;background:#fcfcfd;font-weight:600;color:#555;text-align:right;
padding:1px 6px}table.maptable td{padding:1px 5px;text-align:right;font-variant-numeric:tabular-nums}
table.maptable tr.on td{background:#e8f3fd}table.maptable tr.hot td{background:#ffe9b0}
table.maptable td.top{font-weight:700}
"""

JS = r"""
(function () {
"use strict";
var D = JSON.parse(document.getElementById("data").textContent);
var byId = {}, state = {image: -1, layer: {}};
D.images.forEach(function (im, i) { byId[im.id] = i; });
var detail = document.getElementById("detail"), thumbs = document.getElementById("thumbs");
function esc(s) { return String(s).replace(/[&<>"']/g, function (c) {
  return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]; }); }
function fmt(v, m) {
  if (v === null || v === undefined) return "\u2013";
  return m.d ? v.toFixed(m.d) : String(+v.toPrecision(4));
}
var mi = D.metrics.map(function (m) { return m.name; }).indexOf(D.metric);
function outline(o, si, r, k, n, rows) {
  if (!o) return "";
  var vb = (k * o[0]) + " " + (r * o[1]) + " " + (n * o[0]) + " " + (rows * o[1]);
  var uses = "";
  for (var y = 0; y < rows; y++) for (var x = 0; x < n; x++)
    uses += '<use href="#ol' + si + '" x="' + ((k + x) * o[0]) + '" y="' + ((r + y) * o[1]) + '"/>';
  return '<svg class="ol" viewBox="' + vb + '" preserveAspectRatio="none">' + uses + "</svg>";
}
function sizes(S) {
  var K = S.names.length;
  return {K: K, L: S.layers.length, c: Math.max(16, Math.min(44, Math.floor(320 / K))),
          b: Math.max(36, Math.min(96, Math.floor(470 / K)))};
}
function block(si, e, im) {
  var S = D.series[si], z = sizes(S), K = z.K, L = z.L, c = z.c, h = "";
  var defs = im.o ? '<svg width="0" height="0" style="position:absolute"><defs><path id="ol' + si + '" d="' + im.o[2] +
    '" fill="none" stroke="#56B4E9" stroke-width="1.1" stroke-opacity="0.8" vector-effect="non-scaling-stroke"/>' +
    "</defs></svg>" : "";
  h += '<div class="sblock" data-s="' + si + '">' + defs + "<h3>" + esc(S.label) + "</h3>";
  h += '<div class="lctl"><button data-dl="-1" title="previous layer">\u25c0</button>' +
       '<input type="range" min="0" max="' + (L - 1) + '" value="0" data-s="' + si + '">' +
       '<button data-dl="1" title="next layer">\u25b6</button><span class="lname"></span></div>';
  h += '<div class="big maps"></div>';
  h += '<div class="g" style="grid-template-columns:32px ' + (K * c) + 'px"><div></div>' +
       '<div class="colh" style="grid-template-columns:repeat(' + K + ',1fr)">' +
       S.names.map(function (n) { return "<div>" + esc(n) + "</div>"; }).join("") + "</div>";
  h += '<div class="rowh" style="grid-template-rows:repeat(' + L + ',1fr)">' +
       S.layers.map(function (l) { return "<div>L" + l + "</div>"; }).join("") + "</div>";
  h += '<div class="gwrap maps" style="width:' + (K * c) + "px;height:" + (L * c) + 'px">' +
       '<img class="sprite" loading="lazy" src="' +
       esc(e.g) + '" alt="layer x head grid">' + outline(im.o, si, 0, 0, K, L) +
       '<div class="cells" style="grid-template-columns:repeat(' + K + ",1fr);" +
       "grid-template-rows:repeat(" + L + ',1fr)">';
  for (var r = 0; r < L; r++) for (var k = 0; k < K; k++)
    h += '<div class="gc" data-r="' + r + '" data-k="' + k + '" title="' + esc(tip(S, e, r, k)) + '"></div>';
  h += "</div></div></div>";
  h += '<div class="info">hover a map for its metrics</div>';
  var top = D.metrics.map(function (m, j) {  // each column's best value, bold (not when all maps tie)
    var best = null, seen = {};
    e.v.forEach(function (v) { if (v && v[j] !== null) { seen[v[j]] = 1;
      if (best === null || (m.lo ? v[j] < best : v[j] > best)) best = v[j]; } });
    return Object.keys(seen).length > 1 ? best : null;
  });
  h += '<div class="tbl"><table class="maptable"><thead><tr><th>layer</th><th>map</th>' +
       D.metrics.map(function (m) { return "<th>" + esc(m.title) + "</th>"; }).join("") + "</tr></thead><tbody>";
  for (r = 0; r < L; r++) for (k = 0; k < K; k++) {
    var v = e.v[r * K + k];
    h += '<tr data-r="' + r + '" data-k="' + k + '"><td>' + S.layers[r] + "</td><td>" + esc(S.names[k]) + "</td>" +
         D.metrics.map(function (m, j) { var x = v ? v[j] : null;
           return "<td" + (x !== null && x === top[j] ? ' class="top"' : "") + ">" + fmt(x, m) + "</td>";
         }).join("") + "</tr>";
  }
  return h + "</tbody></table></div></div>";
}
function tip(S, e, r, k) {
  var v = e.v[r * S.names.length + k], t = "layer " + S.layers[r] + " \u00b7 " + S.names[k];
  if (!v) return t + ": no metrics";
  return t + ": " + D.metrics.map(function (m, j) { return m.title + " " + fmt(v[j], m); }).join(" \u00b7 ");
}
function setLayer(si, r) {
  var S = D.series[si], box = detail.querySelector('.sblock[data-s="' + si + '"]');
  if (!box) return;
  var z = sizes(S), L = z.L, K = z.K, b = z.b, im = D.images[state.image], e = im.s[si];
  r = Math.max(0, Math.min(L - 1, r)); state.layer[si] = r;
  box.querySelector("input[type=range]").value = r;
  box.querySelector(".lname").textContent = "layer " + S.layers[r] + " \u00b7 depth " + S.depth[r].toFixed(2) +
    " (" + (r + 1) + " of " + L + " saved)";
  var h = "";
  for (var k = 0; k < K; k++) {
    var v = e.v[r * K + k], val = v && mi >= 0 ? fmt(v[mi], D.metrics[mi]) : "";
    h += '<div class="bc" title="' + esc(tip(S, e, r, k)) + '" style="width:' + b + "px;height:" + b + "px;" +
         "background-image:url('" + e.g + "');background-size:" + (K * b) + "px " + (L * b) + "px;" +
         "background-position:-" + (k * b) + "px -" + (r * b) + 'px">' + outline(im.o, si, k, r, 1, 1) +
         '<span class="cap">' + esc(S.names[k]) + (val ? " \u00b7 " + val : "") + "</span></div>";
  }
  box.querySelector(".big").innerHTML = h;
  box.querySelectorAll(".rowh div").forEach(function (d, i) { d.classList.toggle("on", i === r); });
  box.querySelectorAll(".gc").forEach(function (d) { d.classList.toggle("on", +d.dataset.r === r); });
  box.querySelectorAll(".maptable tr[data-r]").forEach(function (d) { d.classList.toggle("on", +d.dataset.r === r); });
}
function select(id, scroll) {
  var i = byId[id];
  if (i === undefined) return false;
  state.image = i;
  var im = D.images[i];
  thumbs.querySelectorAll(".th").forEach(function (t) { t.classList.toggle("sel", t.dataset.id === id); });
  var h = '<div class="dhead"><figure class="input"><div class="stack"><img src="' + esc(im.input) + '" alt="input">' +
       (im.o ? '<svg class="ol" viewBox="0 0 ' + im.o[0] + " " + im.o[1] + '" preserveAspectRatio="none">' +
               '<path d="' + im.o[2] + '"/></svg>' : "") +
       '</div></figure><div><div class="dtitle"><button data-step="-1" title="previous image">\u25c0</button>' +
       "<b>" + esc(im.id) +
       "</b>" + (im.cat ? '<span class="cat">' + esc(im.cat) + "</span>" : "") +
       '<button data-step="1" title="next image">\u25b6</button></div>' +
       '<p class="note">input' + (im.o ? " with the mask outline" : ", no mask") +
       "; per model \u00b7 method: the maps of one layer (slider, buttons or \u2190 \u2192), every layer x map below " +
       "(click a row to pick its layer, hover a map for its metrics), each map's metrics in the table; " +
       "maps are min-max " +
       "scaled one by one, on their own grid.</p></div></div>" + '<div class="dbody">';
  Object.keys(im.s).forEach(function (si) { h += block(+si, im.s[si], im); });
  detail.innerHTML = h + "</div>";
  detail.setAttribute("data-image", id);
  Object.keys(im.s).forEach(function (si) {
    var S = D.series[si], r = state.layer[si];
    setLayer(+si, r !== undefined ? r : (S.best ? S.best[0] : S.layers.length - 1));
  });
  var sel = thumbs.querySelector(".th.sel");  // into view inside the list only, never scrolling the page
  if (sel && (sel.offsetTop < thumbs.scrollTop ||
              sel.offsetTop + sel.offsetHeight > thumbs.scrollTop + thumbs.clientHeight))
    thumbs.scrollTop = sel.offsetTop - thumbs.offsetTop - 8;
  var gal = document.getElementById("gallery");  // scroll to the images only when they are out of sight
  if (scroll && gal.getBoundingClientRect().top > 0.6 * window.innerHeight) gal.scrollIntoView();
  return true;
}
function fromHash(scroll) {
  var p = {};
  location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
    var i = kv.indexOf("="); if (i > 0) p[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1)); });
  if (p.layer !== undefined) D.series.forEach(function (S, si) {
    var r = S.layers.indexOf(+p.layer);
    if (r >= 0) state.layer[si] = r;
  });
  return p.image !== undefined && select(p.image, scroll);
}
function go(id) {
  select(id, false);
  var hash = "#image=" + encodeURIComponent(id);  // the address names the image (a link to share, a reload keeps it)
  try { history.replaceState(null, "", hash); } catch (err) { location.hash = hash; }
}
if (thumbs) {
  thumbs.addEventListener("click", function (ev) {
    var a = ev.target.closest(".th"); if (!a) return;
    ev.preventDefault(); go(a.dataset.id);
  });
  detail.addEventListener("click", function (ev) {
    var t = ev.target, box = t.closest(".sblock");
    if (t.dataset.step) {
      var vis = [].filter.call(thumbs.querySelectorAll(".th"), function (a) { return a.style.display !== "none"; });
      var j = vis.findIndex(function (a) { return a.dataset.id === D.images[state.image].id; }) + +t.dataset.step;
      if (vis.length) go(vis[(j + vis.length) % vis.length].dataset.id);
    } else if (t.dataset.dl && box) { setLayer(+box.dataset.s, state.layer[box.dataset.s] + +t.dataset.dl); }
    else if (t.classList.contains("gc") && box) { setLayer(+box.dataset.s, +t.dataset.r); }
  });
  detail.addEventListener("input", function (ev) {
    if (ev.target.dataset.s) setLayer(+ev.target.dataset.s, +ev.target.value);
  });
  detail.addEventListener("mouseover", function (ev) {
    var t = ev.target, box = t.closest(".sblock");
    if (!box || !(t.classList.contains("gc") || t.classList.contains("bc"))) return;
    box.querySelector(".info").textContent = t.title;
    var r = t.dataset.r, k = t.dataset.k;
    if (t.classList.contains("bc")) { r = state.layer[box.dataset.s]; k = [].indexOf.call(t.parentNode.children, t); }
    box.querySelectorAll("tr.hot").forEach(function (x) { x.classList.remove("hot"); });
    var row = box.querySelector('tr[data-r="' + r + '"][data-k="' + k + '"]');
    if (row) {
      row.classList.add("hot");
      var tb = row.closest(".tbl");
      tb.scrollTop = row.offsetTop - tb.clientHeight / 2;
    }
  });
  document.getElementById("catsel").addEventListener("change", function (ev) {
    var c = ev.target.value;
    thumbs.querySelectorAll(".th").forEach(function (a) {
      a.style.display = c === "*" || a.dataset.cat === c ? "" : "none";
    });
  });
  document.getElementById("olsel").addEventListener("change", function (ev) {
    document.body.classList.toggle("no-ol", !ev.target.checked); });
  document.addEventListener("keydown", function (ev) {
    if (ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT" || state.image < 0) return;
    var d = ev.key === "ArrowRight" ? 1 : ev.key === "ArrowLeft" ? -1 : 0;
    if (d) Object.keys(D.images[state.image].s).forEach(function (si) { setLayer(+si, state.layer[si] + d); });
  });
  window.addEventListener("hashchange", function () { fromHash(true); });
}
document.querySelectorAll("table.heat td[data-s]").forEach(function (td) {
  td.addEventListener("click", function () {
    var si = +td.dataset.s, S = D.series[si]; if (!S) return;
    var r = S.layers.indexOf(+td.dataset.layer); if (r < 0) return;
    state.layer[si] = r;
    if (state.image >= 0) setLayer(si, r);
    document.getElementById("gallery").scrollIntoView();
  });
});
document.querySelectorAll("input[name=depth]").forEach(function (x) {
  x.addEventListener("change", function () {
    document.body.classList.toggle("rel", x.value === "relative" && x.checked);
  });
});
if (D.images.length && !fromHash(true)) select(D.images[0].id, false);
document.body.setAttribute("data-ready-ms", Math.round(performance.now()));
})();
"""


def _page(title: str, where: str, sections: Iterable[str], data: dict[str, Any], depth: str) -> str:
    payload = script_json(data)
    nav = "".join(f"<a href=\"#{a}\">{t}</a>" for a, t in (("glance", "at a glance"), ("gallery", "images"),
                                                           ("ranking", "ranking"), ("curves", "by layer"),
                                                           ("choice", "choice"), ("compare", "compare"),
                                                           ("runs", "runs")))
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><meta name=generator content={GENERATOR}>"
            "<meta name=viewport "
            f"content=\"width=device-width,initial-scale=1\"><title>{_e(title)}</title><style>{CSS}</style></head>"
            f"<body class=\"{'rel' if depth == 'relative' else ''}\"><header><h1>{_e(title)}</h1><nav>{nav}</nav>"
            f"<span class=where>{_e(where)}</span></header><main>{''.join(sections)}</main>"
            f"<script type=\"application/json\" id=data>{payload}</script><script>{JS}</script></body></html>\n")


# ------------------------------------------------------------------------------------------ output

GENERATOR = "layerscope-view"  # named in the page's <meta name=generator>: a page this command wrote
MARKER = ".layerscope-view"  # inside <stem>_files/: a folder this command wrote (holds the page's file name)
OWN_PICTURES = ("grid", "thumb", "input")  # what <stem>_files/ holds (pages written before the marker)


def _is_page(path: Path) -> bool:
    """Whether ``path`` is a page this command wrote (its head names it), which it may replace."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    own = f"<meta name=generator content={GENERATOR}>".encode() in head or b"<title>layerscope \xc2\xb7 " in head
    return head.startswith(b"<!DOCTYPE html>") and own


def _own_files(folder: Path) -> bool:
    """Whether ``folder`` (``<stem>_files/``) is this command's pictures folder, which it may replace: it
    holds the marker, or (written before the marker) nothing but the page's pictures (an empty folder too)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    if (folder / MARKER).is_file():
        return True
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts
        if parts[0] not in OWN_PICTURES or path.is_symlink() or (
                not path.is_dir() and path.suffix not in (".png", ".jpg")):
            return False
    return True


def check_out(out: Path) -> Path:
    """The pictures folder of the page ``out`` (``<stem>_files/``), once sure that writing both replaces
    nothing this command did not write.

    Raises:
        ViewError: ``out`` is a folder, not an ``.html`` name, or an existing file (a run's
            ``results.csv``, any other file) or ``<stem>_files/`` that is not this command's own.
    """
    if out.is_dir():
        raise ViewError(f"--out {out}: is a folder; expected the page's file name (e.g. {out / REPORT})")
    if out.suffix.lower() not in (".html", ".htm"):
        raise ViewError(f"--out {out}: expected a file name ending in .html (nothing was written)")
    if (out.exists() or out.is_symlink()) and not _is_page(out):
        raise ViewError(f"--out {out}: exists and is not a page written by layerscope-view; it is left as it is "
                        "(choose another file name)")
    files = out.with_name(f"{out.stem}_files")
    if (files.exists() or files.is_symlink()) and not _own_files(files):
        raise ViewError(f"--out {out}: {files} exists and was not written by layerscope-view (the page's pictures "
                        "go there); it is left as it is (choose another file name)")
    return files


@contextmanager
def _page_lock(out: Path):
    """One writer of a page at a time: a second ``layerscope-view`` writing the same page waits here for the
    first, so neither removes the other's pictures (an advisory ``flock`` on ``.<name>.lock`` beside it,
    released by the kernel however its holder ends)."""
    import fcntl

    with open(out.with_name(f".{out.name}.lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another layerscope-view writing {out} ...", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _staging(out: Path) -> Path:
    """A fresh hidden folder beside ``out`` for its pictures, marked as this command's; earlier ones that a
    killed writer of the same page left are removed (called under ``_page_lock``)."""
    import secrets

    prefix = f".{out.stem}_files."
    legacy = out.with_name(f"{prefix}tmp")  # what a page written before the marker left when stopped
    if legacy.is_dir() and _own_files(legacy):
        shutil.rmtree(legacy, ignore_errors=True)
    for old in out.parent.glob(f"{prefix}*.tmp*"):
        marker = old / MARKER
        if old.is_dir() and marker.is_file() and marker.read_text(errors="replace").strip() == out.name:
            shutil.rmtree(old, ignore_errors=True)
        elif old.is_file() and old.name.endswith(".tmp.html") and _is_page(old):
            old.unlink()
    staging = out.with_name(f"{prefix}{os.getpid()}-{secrets.token_hex(4)}.tmp")
    staging.mkdir()  # not mkdtemp: its 0700 would keep a web server from the pictures
    (staging / MARKER).write_text(f"{out.name}\n")
    return staging


def build(folder: Path | str, out: Path | str | None = None, metric: str | None = None, depth: str = "layer",
          top: int = 5, n_boot: int = 1000) -> Path:
    """Write the report page of a run or sweep folder.

    Args:
        folder: a run folder (``results.csv`` + ``maps/``) or a sweep folder above several.
        out: the HTML file; default ``FOLDER/report.html``. Its pictures go beside it, in
            ``<stem>_files/`` (replaced as a whole). Only a page this command wrote, and its
            pictures folder, are ever replaced (``check_out``); two builds of one page take turns.
        metric: the page's metric (heatmaps, ranking, first curve); default the first of
            ``DEFAULT_METRICS`` with values.
        depth: the curves' x-axis when the page opens: ``layer`` or ``relative``.
        top: candidates shown per defect type in the ranking.
        n_boot: bootstrap resamples of the 95% CIs (>= 1).

    Returns:
        The HTML file written.

    Raises:
        FileNotFoundError: no such folder, or no ``results.csv`` below it.
        ViewError: a bad option, or an ``out`` that would replace a file this command did not write.
    """
    if depth not in ("layer", "relative"):
        raise ViewError(f"--depth {depth}: expected layer or relative")
    if top < 1 or n_boot < 1:
        raise ViewError(f"--top {top} --boot {n_boot}: expected ints >= 1")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    out = Path(out) if out is not None else folder / REPORT
    check_out(out)  # before any work: a refused --out costs nothing
    study = Study(folder)
    metric = pick_metric(study, metric)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ViewError(f"--out {out}: cannot make its folder {out.parent} ({e.strerror or e})") from None
    with _page_lock(out):
        files = check_out(out)  # again under the lock: what another writer left is its own page
        staging = _staging(out)
        tmp, old = staging.with_name(f"{staging.name}.html"), staging.with_name(f"{staging.name}.old")
        try:
            tmp.write_text(_write(study, folder, files, staging, metric, depth, top, n_boot), encoding="utf-8")
            if files.exists():
                files.replace(old)  # the earlier pictures (checked: this command's own) step aside
            try:
                staging.replace(files)
            except OSError:
                if old.exists():
                    old.replace(files)
                raise
            tmp.replace(out)
        finally:  # on success only the earlier pictures are left to remove; on failure the new ones too
            tmp.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
    return out


def _write(study: Study, folder: Path, files: Path, staging: Path, metric: str, depth: str, top: int,
           n_boot: int) -> str:
    """The pictures into ``staging`` (served as ``files``); returns the page."""
    from .results.ranking import rank

    ranked = rank(study.df, metric, n_boot=n_boot)
    scores = _scores(study, metric, ranked, n_boot)
    series_index: dict[str, int] = {}
    data = _gallery(study, staging, files.name, metric, scores, series_index)  # moved to files/ once written
    jobs, never = _jobs(study)
    sections = [_summary_section(study, jobs, never, metric), _glance_section(study, scores, metric, series_index),
                _gallery_section(data), _ranking_section(study, metric, ranked, top),
                _curves_section(study, metric, scores, n_boot, depth), _choice_section(study),
                compare_section(study.df, folder), _runs_section(study, jobs)]
    title = f"layerscope · {folder.resolve().name}"
    return _page(title, f"{folder.resolve()} · written {time.strftime('%Y-%m-%d %H:%M')}", sections, data, depth)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="layerscope-view", description="One self-contained HTML page per run or sweep "
                                "(DIR/report.html + DIR/report_files/), to look at offline.")
    p.add_argument("folder", type=Path, help="a run folder (results.csv + maps/) or a sweep folder above several")
    p.add_argument("--out", type=Path, default=None, help="the HTML file (default: FOLDER/report.html)")
    p.add_argument("--metric", default=None, help=f"the page's metric, one of {', '.join(catalog.MAP_METRICS)} "
                   f"(default: the first of {', '.join(DEFAULT_METRICS)} with values)")
    p.add_argument("--depth", choices=("layer", "relative"), default="layer",
                   help="x-axis of the curves when the page opens (a switch on the page changes it)")
    p.add_argument("--top", type=int, default=5, help="candidates shown per defect type")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of the 95%% CIs")
    a = p.parse_args(argv)
    if not a.folder.is_dir():
        print(f"error: {a.folder}: no such folder", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        path = build(a.folder, a.out, a.metric, a.depth, a.top, a.boot)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only folder: the earlier page and pictures stay as they were
        print(f"error: cannot write{f' {e.filename}' if e.filename else ''}: {e.strerror or e}; the earlier page "
              "is kept", file=sys.stderr)
        return 2
    files = path.with_name(f"{path.stem}_files")
    size = path.stat().st_size + sum(f.stat().st_size for f in files.rglob("*") if f.is_file())
    print(path)
    print(f"written in {time.perf_counter() - started:.1f} s: page {path.stat().st_size / 1e6:.2f} MB, "
          f"with its pictures {size / 1e6:.1f} MB; open it in any browser (no network needed)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
