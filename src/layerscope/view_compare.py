"""The report page's section on the axes beyond masks: CKA heatmaps, k-NN probe curves, attention distance.

Reads what ``layerscope-compare`` wrote (every ``similarity.csv`` and ``probe.csv`` at or below the page's
folder, ``compare/`` first) and the ``attention_distance`` column of the results; returns one ``<section id=compare>``
of inline HTML and SVG (no pictures, no script), or an empty string when there is nothing to show.
Every text that comes from a file is escaped.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .figures.compare import cka_grid, pairs
from .figures.paper import PALETTE, distance_table, head_order, relative_depth
from .results.layout import COMPARE, PROBE, SIMILARITY


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _hex(rgba: Sequence[float]) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgba[:3])


def _ink(rgba: Sequence[float]) -> str:
    return "#000" if 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] > 0.55 else "#fff"


def _finite(v: object) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _tables(folder: Path, name: str) -> list[tuple[Path, pd.DataFrame]]:
    """Every ``<name>`` at or below ``folder`` that reads as a table, ``compare/`` first (a table of other
    columns is left out by its drawer)."""
    found = []
    paths = sorted(Path(folder).rglob(name), key=lambda p: (p.parent.name != COMPARE, str(p)))
    for path in paths:
        try:
            found.append((path, pd.read_csv(path)))
        except (OSError, ValueError, pd.errors.ParserError):
            continue
    return found


def _heatmaps(similarity: pd.DataFrame, where: str) -> str:
    import matplotlib

    need = {"model_a", "layer_a", "model_b", "layer_b", "cka", "kind", "kernel", "n_images", "estimator"}
    if not need <= set(similarity.columns) or similarity.empty:
        return ""
    cmap = matplotlib.colormaps["viridis"]
    blocks = []
    for a, b in pairs(similarity):
        grid = cka_grid(similarity, a, b)
        first = similarity[(similarity["model_a"] == a) & (similarity["model_b"] == b)].iloc[0]
        rows = ["<tr><th></th>" + "".join(f"<th>{_e(c)}</th>" for c in grid.columns) + "</tr>"]
        for la in reversed(list(grid.index)):  # the first layer at the bottom, as Raghu et al. draw it
            tds = []
            for lb in grid.columns:
                v = grid.loc[la, lb]
                if not _finite(v):
                    tds.append("<td title=\"undefined\">–</td>")
                    continue
                rgba = cmap(min(max(float(v), 0.0), 1.0))
                tip = f"{a} layer {la} · {b} layer {lb}: CKA {float(v):.3f}"
                tds.append(f"<td style=\"background:{_hex(rgba)};color:{_ink(rgba)}\" title=\"{_e(tip)}\">"
                           f"{float(v):.2f}</td>")
            rows.append(f"<tr><th>L{_e(la)}</th>{''.join(tds)}</tr>")
        title = f"within {a}" if a == b else f"{a} (rows) vs {b} (columns)"
        blocks.append(f"<div class=hm><h3>{_e(title)}</h3><p class=note>{_e(first['kernel'])} CKA of "
                      f"{_e(first['kind'])} representations, {_e(first['n_images'])} images, "
                      f"{_e(first['estimator'])} HSIC</p><table class=heat>{''.join(rows)}</table></div>")
    stops = ", ".join(_hex(cmap(x)) for x in np.linspace(0, 1, 6))
    legend = (f"<div class=legend><span>0</span><span class=bar style=\"background:linear-gradient(90deg,{stops})\">"
              f"</span><span>1</span> CKA; layer 0 at the bottom left</div>")
    return (f"<h3>Representation similarity (CKA) · <code>{_e(where)}</code></h3>{legend}"
            f"<div class=row>{''.join(blocks)}</div>")


def _ticks(low: float, high: float, n: int = 5, integer: bool = False) -> list[float]:
    from matplotlib.ticker import MaxNLocator

    return [float(t) for t in MaxNLocator(n, integer=integer).tick_values(low, high) if low - 1e-9 <= t <= high + 1e-9]


def _chart(series: list[dict[str, Any]], y_label: str, y_range: tuple[float, float] | None = None) -> str:
    """One SVG against layer (class ``xl``) and relative depth (class ``xd``; the page's switch shows one).

    Each series: ``label``, ``colour``, ``points`` [(layer, depth, value, low, high)], ``line`` (draw a line),
    ``dots`` (draw points), ``level`` (a dashed horizontal line, or None).
    """
    w, h, left, right, top, bottom = 400, 230, 44, 12, 10, 34
    values = [v for s in series for p in s["points"] for v in p[2:5] if _finite(v)]
    values += [s["level"] for s in series if s.get("level") is not None]
    y0, y1 = y_range if y_range else (min(values), max(values))
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    layers = [p[0] for s in series for p in s["points"]]
    axes = {"xl": (min(layers), max(layers) if max(layers) > min(layers) else min(layers) + 1), "xd": (0.0, 1.0)}

    def py(v: float) -> float:
        return top + (h - top - bottom) * (1 - (v - y0) / (y1 - y0))

    out = [f"<svg class=chart viewBox=\"0 0 {w} {h}\" width={w} height={h} role=img>"]
    for t in _ticks(y0, y1):
        out.append(f"<line class=gridl x1={left} x2={w - right} y1={py(t):.1f} y2={py(t):.1f} />"
                   f"<text x={left - 4} y={py(t) + 3:.1f} text-anchor=end>{t:g}</text>")
    for s in series:
        if s.get("level") is not None:
            out.append(f"<line x1={left} x2={w - right} y1={py(s['level']):.1f} y2={py(s['level']):.1f} "
                       f"stroke=\"{s['colour']}\" stroke-dasharray=\"4 3\"><title>{_e(s['label'])}: chance "
                       f"{s['level']:.3f}</title></line>")
    for cls, (x0, x1) in axes.items():
        def px(v: float, x0=x0, x1=x1) -> float:
            return left + (w - left - right) * (v - x0) / (x1 - x0)

        g = [f"<g class={cls}>"]
        for t in (_ticks(x0, x1, 8, integer=True) if cls == "xl" else [0, 0.25, 0.5, 0.75, 1]):
            g.append(f"<text x={px(t):.1f} y={h - bottom + 14} text-anchor=middle>{t:g}</text>")
        label = "layer (0 = first block)" if cls == "xl" else "relative depth (0 = first layer, 1 = last)"
        g.append(f"<text class=axl x={(left + w - right) / 2} y={h - 4} text-anchor=middle>{label}</text>")
        for s in series:
            pts = [(px(p[0] if cls == "xl" else p[1]), p) for p in s["points"]]
            band = [(x, p[4]) for x, p in pts if _finite(p[4])] + [(x, p[3]) for x, p in reversed(pts) if _finite(p[3])]
            if band:
                g.append(f"<polygon points=\"{' '.join(f'{x:.1f},{py(v):.1f}' for x, v in band)}\" "
                         f"fill=\"{s['colour']}\" fill-opacity=0.16 />")
            if s.get("line", True):
                g.append(f"<polyline points=\"{' '.join(f'{x:.1f},{py(p[2]):.1f}' for x, p in pts)}\" fill=none "
                         f"stroke=\"{s['colour']}\" stroke-width=1.6 />")
            if s.get("dots", True):
                for x, p in pts:
                    ci = f" [{p[3]:.3f}, {p[4]:.3f}]" if _finite(p[3]) else ""
                    tip = f"{s['label']} · layer {p[0]} (depth {p[1]:.2f}): {p[2]:.3f}{ci}"
                    g.append(f"<circle cx={x:.1f} cy={py(p[2]):.1f} r=2.6 fill=\"{s['colour']}\"><title>{_e(tip)}"
                             "</title></circle>")
        g.append("</g>")
        out += g
    out.append(f"<text class=axl transform=\"translate(11,{(top + h - bottom) / 2}) rotate(-90)\" "
               f"text-anchor=middle>{_e(y_label)}</text></svg>")
    return "".join(out)


def _probe_charts(probe: pd.DataFrame, depths: dict[str, int], where: str) -> str:
    need = {"model", "layer", "kind", "label", "k", "accuracy", "ci_low", "ci_high", "chance", "n_images"}
    if not need <= set(probe.columns) or probe.empty:
        return ""
    charts = []
    for (label, kind), table in probe.groupby(["label", "kind"], sort=False):
        series = []
        for i, (model, part) in enumerate(table.groupby("model", sort=False)):
            part = part.sort_values("layer")
            n = depths.get(str(model)) or int(part["layer"].max()) + 1
            d = relative_depth(part["layer"].to_numpy(), n)
            series.append({"label": f"{model} (k={int(part['k'].iloc[0])}, {int(part['n_images'].iloc[0])} images)",
                           "colour": PALETTE[i % len(PALETTE)], "level": float(part["chance"].iloc[0]),
                           "points": [(int(r.layer), float(x), float(r.accuracy), float(r.ci_low), float(r.ci_high))
                                      for r, x in zip(part.itertuples(), d)]})
        keys = "".join(f"<span class=key><i style=\"background:{s['colour']}\"></i>{_e(s['label'])}</span>"
                       for s in series)
        charts.append(f"<figure class=chartbox><figcaption>k-NN probe of {_e(label)}, {_e(kind)} representations "
                      f"(leave-one-out, 95% CI; dashed: chance)</figcaption><div class=keys>{keys}</div>"
                      f"{_chart(series, f'accuracy of {label}', (0.0, 1.0))}</figure>")
    return f"<h3>What each layer separates · <code>{_e(where)}</code></h3><div class=row>{''.join(charts)}</div>"


def _distance_charts(df: pd.DataFrame) -> str:
    table = distance_table(df)
    if table.empty:
        return ""
    charts = []
    for name, part in table.groupby("series"):
        n = int(part["num_layers"].iloc[0]) if _finite(part["num_layers"].iloc[0]) else int(part["layer"].max()) + 1
        series = []
        for j, head in enumerate(head_order(part["head"])):
            dots = part[part["head"] == head].sort_values("layer")
            d = relative_depth(dots["layer"].to_numpy(), n)
            mean = head == "mean"
            series.append({"label": "mean of heads" if mean else f"head {head}",
                           "colour": "#333333" if mean else PALETTE[j % len(PALETTE)], "line": mean, "dots": not mean,
                           "points": [(int(r.layer), float(x), float(r.attention_distance), float("nan"), float("nan"))
                                      for r, x in zip(dots.itertuples(), d)]})
        top = float(part["attention_distance"].max()) * 1.08 or 1.0
        charts.append(f"<figure class=chartbox><figcaption>{_e(name)}: one dot per head, the line is the mean of "
                      f"heads</figcaption>{_chart(series, 'attention distance (px)', (0.0, top))}</figure>")
    return ("<h3>How far each head looks</h3><p class=note>Mean attention distance (input pixels, mean over images): "
            "per query patch, the attention-weighted distance to the key patches, CLS and registers left out "
            f"(Dosovitskiy et al. 2020, Fig. 7).</p><div class=row>{''.join(charts)}</div>")


def compare_section(df: pd.DataFrame, folder: Path | str) -> str:
    """The page's ``compare`` section, or ``""`` when there is neither a comparison nor an attention distance.

    Args:
        df: the page's results rows with a ``series`` column (``figures.paper.Study.df``).
        folder: the page's folder; every ``similarity.csv`` and ``probe.csv`` at or below it is shown.
    """
    folder = Path(folder)
    depths = {}
    if {"model", "num_layers"} <= set(df.columns):
        depths = pd.to_numeric(df["num_layers"], errors="coerce").groupby(df["model"].astype(str)).max().dropna()
        depths = {k: int(v) for k, v in depths.items()}
    parts = []
    for path, table in _tables(folder, SIMILARITY):
        parts.append(_heatmaps(table, str(path.relative_to(folder))))
    for path, table in _tables(folder, PROBE):
        parts.append(_probe_charts(table, depths, str(path.relative_to(folder))))
    parts.append(_distance_charts(df))
    parts = [p for p in parts if p]
    if not parts:
        return ""
    return ("<section id=compare><h2>Beyond masks: similarity, probes, attention distance</h2><p class=note>From "
            "<code>layerscope-compare</code> (CKA between layers and models, a leave-one-out k-NN probe per layer) "
            f"and the runs' <code>attention_distance</code>.</p>{''.join(parts)}</section>")
