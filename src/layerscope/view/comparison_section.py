"""The report page's section on the axes beyond masks: CKA heatmaps (cells within the null dimmed), every
similarity measure's summary with its layer monotonicity and invariances, k-NN probe curves, attention
distance.

Reads what ``layerscope-compare`` wrote (every ``similarity.csv`` and ``probe.csv`` at or below the page's
folder, ``compare/`` first) and the ``attention_distance`` column of the results; returns one ``<section id=compare>``
of inline HTML and SVG (no pictures, no script), or an empty string when there is nothing to show.
Every text that comes from a file is escaped.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..figures.comparison_plots import ALPHA, cka_grid, cka_rows, pairs
from ..figures.style import PALETTE
from ..metrics.measures import INVARIANCES, MEASURES
from ..results.layout import COMPARE, MONOTONICITY, PROBE, SIMILARITY
from ..analysis.saved import distance_table, head_order, relative_depth
from .charts import line_chart
from .html import colour_legend, esc, finite, hex_colour, ink


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

    similarity = cka_rows(similarity) if {"measure", "cka"} & set(similarity.columns) else similarity
    need = {"model_a", "layer_a", "model_b", "layer_b", "value", "kind", "kernel", "n_images", "estimator"}
    if not need <= set(similarity.columns) or similarity.empty:
        return ""
    cmap = matplotlib.colormaps["viridis"]
    blocks = []
    for a, b in pairs(similarity):
        grid = cka_grid(similarity, a, b)
        pvals = cka_grid(similarity, a, b, "p_value").reindex(index=grid.index, columns=grid.columns)
        low = cka_grid(similarity, a, b, "ci_low").reindex(index=grid.index, columns=grid.columns)
        high = cka_grid(similarity, a, b, "ci_high").reindex(index=grid.index, columns=grid.columns)
        first = similarity[(similarity["model_a"] == a) & (similarity["model_b"] == b)].iloc[0]
        rows = ["<tr><th></th>" + "".join(f"<th>{esc(c)}</th>" for c in grid.columns) + "</tr>"]
        for la in reversed(list(grid.index)):  # the first layer at the bottom, as Raghu et al. draw it
            tds = []
            for lb in grid.columns:
                v = grid.loc[la, lb]
                if not finite(v):
                    tds.append("<td title=\"undefined\">–</td>")
                    continue
                rgba = cmap(min(max(float(v), 0.0), 1.0))
                p, lo, hi = pvals.loc[la, lb], low.loc[la, lb], high.loc[la, lb]
                tip = f"{a} layer {la} · {b} layer {lb}: CKA {float(v):.3f}"
                if finite(lo) and finite(hi):
                    tip += f" [{float(lo):.3f}, {float(hi):.3f}]"
                if finite(p):
                    tip += f", p = {float(p):.3g}"
                faint = finite(p) and float(p) >= ALPHA
                style = f"background:{hex_colour(rgba)};color:{ink(rgba)}" + (";opacity:0.35" if faint else "")
                mark = " class=null" if faint else ""
                tip += " (not above the null)" if faint else ""
                tds.append(f"<td{mark} style=\"{style}\" title=\"{esc(tip)}\">"
                           f"{float(v):.2f}</td>")
            rows.append(f"<tr><th>L{esc(la)}</th>{''.join(tds)}</tr>")
        title = f"within {a}" if a == b else f"{a} (rows) vs {b} (columns)"
        blocks.append(f"<div class=hm><h3>{esc(title)}</h3><p class=note>{esc(first['kernel'])} CKA of "
                      f"{esc(first['kind'])} representations, {esc(first['n_images'])} images, "
                      f"{esc(first['estimator'])} HSIC</p><table class=heat>{''.join(rows)}</table></div>")
    legend = colour_legend(cmap, "0", "1", f"CKA; layer 0 at the bottom left; dimmed: p >= {ALPHA} against the "
                           "permutation null")
    return (f"<h3>Representation similarity (CKA) · <code>{esc(where)}</code></h3>{legend}"
            f"<div class=row>{''.join(blocks)}</div>")


def _measure_row(measure: str, rows_of: pd.DataFrame, a: str, b: str, monotonic: pd.DataFrame | None) -> str:
    part = rows_of[(rows_of["model_a"] == a) & (rows_of["model_b"] == b)]
    off = part[(part["layer_a"] != part["layer_b"]) | (a != b)]
    p = pd.to_numeric(off["p_value"], errors="coerce")
    share = f"{(p < ALPHA).mean():.0%}" if p.notna().any() else "–"
    value = pd.to_numeric(off["value"], errors="coerce").median()
    rho = "–"
    if monotonic is not None and a == b and {"model", "measure", "spearman"} <= set(monotonic.columns):
        hit = monotonic[(monotonic["model"] == a) & (monotonic["measure"] == measure)]
        if len(hit) and finite(hit["spearman"].iloc[0]):
            rho = f"{float(hit['spearman'].iloc[0]):+.2f}"
    return (f"<tr><td>{esc(measure)}</td><td>{esc(a if a == b else a + ' vs ' + b)}</td>"
            f"<td>{'' if pd.isna(value) else f'{value:.3f}'}</td><td>{share}</td><td>{rho}</td></tr>")


def _measures(similarity: pd.DataFrame, monotonic: pd.DataFrame | None, where: str) -> str:
    """Per measure and model pair: the median value and share of layer pairs above the null; the layer
    monotonicity within each model; the measures' declared invariances."""
    need = {"model_a", "model_b", "measure", "value", "p_value", "layer_a", "layer_b"}
    if not need <= set(similarity.columns) or similarity.empty:
        return ""
    rows = [_measure_row(measure, rows_of, a, b, monotonic)
            for measure, rows_of in similarity.groupby("measure", sort=False) for a, b in pairs(rows_of)]
    marks = {m.name: "".join(f"<td>{'yes' if inv in m.invariances else 'no'}</td>" for inv in INVARIANCES)
             for m in MEASURES.values()}
    invariance = "".join(f"<tr><td>{esc(m.name)}</td>{marks[m.name]}<td>{esc(m.paper)}</td></tr>"
                         for m in MEASURES.values() if m.name in set(similarity["measure"]))
    heads = "".join(f"<th>{esc(inv.replace('_', ' '))}</th>" for inv in INVARIANCES)
    return (f"<h3>Similarity measures · <code>{esc(where)}</code></h3><p class=note>Median over pairs of layers "
            f"(a layer with itself left out); the share of them above the permutation null (p &lt; {ALPHA}); within a "
            "model, the Spearman correlation between layer distance |i − j| and similarity (negative: similarity "
            "falls with distance, as it should; ReSi's layer monotonicity).</p><table><tr><th>measure</th><th>models"
            "</th><th>median</th><th>above null</th><th>monotonicity</th></tr>" + "".join(rows) + "</table>"
            f"<p class=note>Invariances each measure declares (its value unchanged when one representation is "
            f"transformed so):</p><table><tr><th>measure</th>{heads}<th>definition</th></tr>{invariance}</table>")


def _probe_charts(probe: pd.DataFrame, depths: dict[str, int], where: str) -> str:
    need = {"model", "layer", "kind", "label", "k", "accuracy", "ci_low", "ci_high", "chance", "n_images"}
    if not need <= set(probe.columns) or probe.empty:
        return ""
    has_null = {"null_q05", "null_q95"} <= set(probe.columns) and probe["null_q95"].notna().any()
    charts = []
    for (label, kind), table in probe.groupby(["label", "kind"], sort=False):
        series = []
        for i, (model, part) in enumerate(table.groupby("model", sort=False)):
            part = part.sort_values("layer")
            n = depths.get(str(model)) or int(part["layer"].max()) + 1
            d = relative_depth(part["layer"].to_numpy(), n)
            colour = PALETTE[i % len(PALETTE)]
            series.append({"label": f"{model} (k={int(part['k'].iloc[0])}, {int(part['n_images'].iloc[0])} images)",
                           "colour": colour, "level": None if has_null else float(part["chance"].iloc[0]),
                           "points": [(int(r.layer), float(x), float(r.accuracy), float(r.ci_low), float(r.ci_high))
                                      for r, x in zip(part.itertuples(), d)]})
            if has_null:  # the label-permutation null: its mean dashed, its 5-95% band faint
                series.append({"label": f"{model}: permutation null (mean, 5-95%)", "colour": colour, "dash": True,
                               "dots": False, "band_opacity": 0.07,
                               "points": [(int(r.layer), float(x), float(r.chance), float(r.null_q05),
                                           float(r.null_q95)) for r, x in zip(part.itertuples(), d)]})
        keys = "".join(f"<span class=key><i style=\"background:{s['colour']}\"></i>{esc(s['label'])}</span>"
                       for s in series if not s.get("dash"))
        group = table["group"].iloc[0] if "group" in table.columns else ""
        scheme = f"leave-one-{group}-out" if isinstance(group, str) and group else "leave-one-out"
        interval = f"{str(table['interval'].iloc[0]).title()} " if "interval" in table.columns else ""
        null = ("dashed with a faint band: the label-permutation null under the same scheme, mean and 5-95%"
                if has_null else "dashed: chance")
        charts.append(f"<figure class=chartbox><figcaption>k-NN probe of {esc(label)}, {esc(kind)} representations "
                      f"({esc(scheme)}, {esc(interval)}95% interval; {null})</figcaption><div class=keys>{keys}</div>"
                      f"{line_chart(series, f'accuracy of {label}', (0.0, 1.0))}</figure>")
    return f"<h3>What each layer separates · <code>{esc(where)}</code></h3><div class=row>{''.join(charts)}</div>"


def _distance_charts(df: pd.DataFrame) -> str:
    table = distance_table(df)
    if table.empty:
        return ""
    charts = []
    for (name, rule, unit), part in table.groupby(["series", "rule", "unit"]):
        n = int(part["num_layers"].iloc[0]) if finite(part["num_layers"].iloc[0]) else int(part["layer"].max()) + 1
        series = []
        for j, head in enumerate(head_order(part["head"])):
            dots = part[part["head"] == head].sort_values("layer")
            d = relative_depth(dots["layer"].to_numpy(), n)
            mean = head == "mean"
            series.append({"label": "mean of heads" if mean else f"head {head}",
                           "colour": "#333333" if mean else PALETTE[j % len(PALETTE)], "line": mean, "dots": not mean,
                           "band_opacity": 0.12 if mean else 0.0,  # heads: the interval in the tooltip
                           "points": [(int(r.layer), float(x), float(r.attention_distance), float(r.ci_low),
                                       float(r.ci_high)) for r, x in zip(dots.itertuples(), d)]})
        top = float(np.nanmax([part["ci_high"].max(), part["attention_distance"].max()])) * 1.08 or 1.0
        short = "px" if unit == "pixels" else "fraction of the side"
        value = (lambda v: f"{v:.1f} px") if unit == "pixels" else (lambda v: f"{v:.3f}")
        chart = line_chart(series, f"attention distance ({short})", (0.0, top), value)
        charts.append(f"<figure class=chartbox><figcaption>{esc(name)} ({esc(rule)} rule, {esc(unit)}): one dot per "
                      "head (its 95% interval over images in the tooltip), the line is the mean of heads with its "
                      f"interval</figcaption>{chart}</figure>")
    return ("<h3>How far each head looks</h3><p class=note>Mean attention distance (mean over images, 95% bootstrap "
            "interval): per query patch, the attention-weighted distance to the key patches, CLS and registers left "
            "out (Dosovitskiy et al. 2020, Fig. 7); <code>renormalised</code>: each query's attention over the patch "
            "keys re-summed to 1; <code>raw</code>: the model's attention rows as they are, the prefix keys' share "
            "dropped (the common implementation); <code>fraction</code>: of the image side (Walmer et al. 2023)."
            f"</p><div class=row>{''.join(charts)}</div>")


def compare_section(df: pd.DataFrame, folder: Path | str) -> str:
    """The page's ``compare`` section, or ``""`` when there is neither a comparison nor an attention distance.

    Args:
        df: the page's results rows with a ``series`` column (``analysis.saved.Study.df``).
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
        monotonic = None
        if (path.parent / MONOTONICITY).exists():
            try:
                monotonic = pd.read_csv(path.parent / MONOTONICITY)
            except (OSError, ValueError, pd.errors.ParserError):
                monotonic = None
        parts.append(_measures(table, monotonic, str(path.relative_to(folder))))
    for path, table in _tables(folder, PROBE):
        parts.append(_probe_charts(table, depths, str(path.relative_to(folder))))
    parts.append(_distance_charts(df))
    parts = [p for p in parts if p]
    if not parts:
        return ""
    return ("<section id=compare><h2>Beyond masks: similarity, probes, attention distance</h2><p class=note>From "
            "<code>layerscope-compare</code> (CKA between layers and models, a leave-one-out k-NN probe per layer) "
            f"and the runs' <code>attention_distance</code>.</p>{''.join(parts)}</section>")
