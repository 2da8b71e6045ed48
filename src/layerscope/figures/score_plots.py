"""Publication figures of scores (``figures.paper``): a metric against layer (per image, dataset level, per
shot count), the layer x head heatmap, threshold curves, the held-out choice's stability, attention distance."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ..results import catalog
from ..results.axes import HEADS, axis_word, map_axis, map_label
from ..results.layout import CHOICE_GLOB, DATASET_METRICS
from ..analysis.saved import (SEP, Study, distance_table, head_order, layer_head_scores, line_head, num_layers,
                             per_image, relative_depth, smallest_threshold)
from ..results.table import read_table
from .figure_inputs import METRICS, as_study, figure_dir, series_colours
from .style import AXES, BEST, HEAT_CELL, HEAT_CMAP, PALETTE, depth_axis, save, slug, styled

log = logging.getLogger(__name__)


@styled
def metric_vs_layer(source: Study | Path | str, out: Path | str | None = None,
                    formats: Sequence[str] = ("png", "pdf"), metrics: Iterable[str] = METRICS,
                    depth: str = "layer") -> list[Path]:
    """One figure per metric: metric against layer, one line per (model, method).

    Mean over images with a 95% bootstrap confidence band. Map per line: the head mean for a method
    whose maps are heads (``results.axes``); otherwise the head or reduction with the best mean of that metric over all
    layers (highest; lowest for entropy). Rows of each series' smallest threshold; no ``best`` rows.

    Args:
        depth: ``layer`` (x = layer index; ``metric_vs_layer_<metric>``) or ``relative`` (x = relative
            depth, 0 = first layer, 1 = last, from each model's layer count, so models of different
            depths compare; ``metric_vs_depth_<metric>``).
    """
    import seaborn as sns

    if depth not in AXES:
        raise ValueError(f"--depth {depth}: expected one of {', '.join(AXES)}")
    x = "layer" if depth == "layer" else "depth"
    study = as_study(source)
    out = figure_dir(study, out)
    colours = series_colours(study)
    rows = smallest_threshold(study.df[study.df["head"] != "best"])
    paths: list[Path] = []
    for metric in metrics:
        if metric not in rows.columns or rows[metric].notna().sum() == 0:
            log.info("metric_vs_layer: no %s values (no masks?), skipped", metric)
            continue
        frames, palette = [], {}
        for series, part in rows.dropna(subset=[metric]).groupby("series"):
            method = part["method"].iloc[0]
            head = line_head(part, method, metric)
            label = f"{series}{SEP}{map_label(method, head)}"
            if metric == "iou" and rows["threshold"].nunique() > 1:
                label += f"{SEP}thr {part['threshold'].iloc[0]:g}"
            line = per_image(part[part["head"] == head], ["layer"], metric).assign(label=label)
            line["depth"] = relative_depth(line["layer"], num_layers(part))
            frames.append(line)
            palette[label] = colours[series]
        data = pd.concat(frames, ignore_index=True)
        fig = Figure(figsize=(3.6, 2.5))
        ax = fig.add_subplot()
        sns.lineplot(data=data, x=x, y=metric, hue="label", style="label", palette=palette, markers=True,
                     dashes=False, errorbar=("ci", 95), n_boot=1000, seed=0, ax=ax, err_kws={"linewidth": 0})
        if metric == "auroc":
            ax.axhline(0.5, color="0.4", linewidth=0.7, linestyle="--", zorder=0)
            ax.text(ax.get_xlim()[1], 0.5, " chance", va="center", ha="left", fontsize=6, color="0.4")
        depth_axis(ax, depth)
        ax.set_ylabel(catalog.label(metric))
        ax.set_title(f"{catalog.title(metric)} by {'layer' if depth == 'layer' else 'depth'} "
                     "(mean over images, 95% CI)", pad=4)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, ncol=1, title=None)
        stem = "metric_vs_layer" if depth == "layer" else "metric_vs_depth"
        paths += save(fig, out, f"{stem}_{slug(metric)}", formats)
    return paths


@styled
def layer_head(source: Study | Path | str, out: Path | str | None = None, formats: Sequence[str] = ("png", "pdf"),
               metrics: Iterable[str] = METRICS) -> list[Path]:
    """One figure per metric: a layer x head heatmap per (model, method), the best cell marked.

    The at-a-glance answer to "which layer, which head": the mean over images of the metric
    (smallest threshold), one panel per series side by side on one colour scale, the best cell
    (highest mean; lowest for entropy) outlined and labelled with its value.
    """
    import seaborn as sns
    from matplotlib.patches import Rectangle

    study = as_study(source)
    out = figure_dir(study, out)
    paths: list[Path] = []
    for metric in metrics:
        tables = {s: layer_head_scores(study, s, metric, n_boot=0) for s in study.series()}
        tables = {s: t for s, t in tables.items() if not t.empty}
        if not tables:
            log.info("layer_head: no %s values (no masks?), skipped", metric)
            continue
        values = pd.concat([t["mean"] for t in tables.values()])
        low, high = float(values.min()), float(values.max())
        high = high if high > low else low + 1e-9
        grids = {s: t.pivot(index="layer", columns="head", values="mean")[head_order(t["head"])]
                 for s, t in tables.items()}
        # every cell the same size (HEAT_CELL inches) in every panel; a panel's slot is as wide as its title
        titles = {s: [*s.split(SEP), f"best: L{int(t.loc[t['best'], 'layer'].iloc[0])}{SEP}"
                      f"{map_label(study.info(s)['method'], t.loc[t['best'], 'head'].iloc[0])}"]
                  for s, t in tables.items()}
        slots = [max(HEAT_CELL * g.shape[1], 0.058 * max(map(len, titles[s]))) for s, g in grids.items()]
        rows = max(g.shape[0] for g in grids.values())
        left, gap, right, top, bottom = 0.45, 0.35, 0.8, 0.2 + 0.12 * max(map(len, titles.values())), 0.7
        width, height = left + sum(slots) + gap * (len(slots) - 1) + right, top + HEAT_CELL * rows + bottom
        fig = Figure(figsize=(width, height))
        axes, x = [], left
        for slot, grid in zip(slots, grids.values()):
            w, h = HEAT_CELL * grid.shape[1], HEAT_CELL * grid.shape[0]
            box = ((x + (slot - w) / 2) / width, (height - top - h) / height, w / width, h / height)
            axes.append(fig.add_axes(box))
            x += slot + gap
        for ax, (series, grid) in zip(axes, grids.items()):
            sns.heatmap(grid, ax=ax, cmap=HEAT_CMAP, vmin=low, vmax=high, cbar=False, linewidths=0.4,
                        linecolor="white")
            table = tables[series]
            best = table[table["best"]].iloc[0]
            r, c = list(grid.index).index(best["layer"]), list(grid.columns).index(best["head"])
            ax.add_patch(Rectangle((c, r), 1, 1, fill=False, edgecolor=BEST, linewidth=1.6, clip_on=False))
            shade = mpl.colormaps[HEAT_CMAP]((best["mean"] - low) / (high - low))
            ink = "black" if 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] > 0.5 else "white"
            ax.text(c + 0.5, r + 0.5, catalog.get(metric).format(best["mean"]).lstrip("0") or "0", ha="center",
                    va="center", fontsize=5, color=ink)
            method = study.info(series)["method"]
            ax.set_title("\n".join(titles[series]), pad=3, fontsize=7)
            ax.set_xlabel(axis_word(method))
            ax.set_ylabel("layer" if ax is axes[0] else "")
            ax.grid(False)
            ax.tick_params(length=0)
            ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
            ax.set_xticklabels(ax.get_xticklabels(), rotation=90 if max(len(str(h)) for h in grid.columns) > 4 else 0)
        bar_h = min(HEAT_CELL * rows, 2.0)
        cax = fig.add_axes(((width - right + 0.12) / width, (height - top - bar_h) / height, 0.1 / width,
                            bar_h / height))
        bar = fig.colorbar(ScalarMappable(Normalize(low, high), HEAT_CMAP), cax=cax)
        bar.set_label(f"{catalog.label(metric)}, mean over images", fontsize=6.5)
        bar.outline.set_linewidth(0.4)
        cax.tick_params(length=2, labelsize=6)
        paths += save(fig, out, f"layer_head_{slug(metric)}", formats)
    return paths


@styled
def threshold_curves(source: Study | Path | str, out: Path | str | None = None,
                     formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """IoU against the threshold, per (model, method), at its best layer (by mean IoU).

    Map: the head mean where the maps are heads, else the first map. Mean over images, 95% CI.
    One figure per threshold rule; series with a single threshold are left out.
    """
    import seaborn as sns

    study = as_study(source)
    out = figure_dir(study, out)
    colours = series_colours(study)
    rows = study.df[(study.df["head"] != "best")].dropna(subset=["iou", "threshold"])
    if rows.empty:
        log.info("threshold_curves: no IoU values (no masks?), skipped")
        return []
    paths: list[Path] = []
    for rule, by_rule in rows.groupby("threshold_rule"):
        frames, palette = [], {}
        for series, part in by_rule.groupby("series"):
            if part["threshold"].nunique() < 2:
                continue
            method = part["method"].iloc[0]
            heads = list(dict.fromkeys(part["head"]))
            head = "mean" if map_axis(method) == HEADS and "mean" in heads else heads[0]
            part = part[part["head"] == head]
            layer = int(per_image(part, ["layer"], "iou").groupby("layer")["iou"].mean().idxmax())
            label = f"{series}{SEP}{map_label(method, head)}{SEP}L{layer}"
            frames.append(per_image(part[part["layer"] == layer], ["threshold"], "iou").assign(label=label))
            palette[label] = colours[series]
        if not frames:
            log.info("threshold_curves: only one threshold per run (rule %s), skipped", rule)
            continue
        data = pd.concat(frames, ignore_index=True)
        fig = Figure(figsize=(3.6, 2.5))
        ax = fig.add_subplot()
        sns.lineplot(data=data, x="threshold", y="iou", hue="label", style="label", palette=palette, markers=True,
                     dashes=False, errorbar=("ci", 95), n_boot=1000, seed=0, ax=ax, err_kws={"linewidth": 0})
        thresholds = sorted(data["threshold"].unique())
        if len(thresholds) <= 10:
            ax.set_xticks(thresholds)
        attention = all(map_axis(study.info(s)["method"]) == HEADS for s in by_rule["series"].unique())
        ax.set_xlabel({"keep_mass": f"kept {'attention' if attention else 'map'} mass (threshold, fraction)",
                       "minmax": "min–max level (threshold, 0–1)"}.get(rule, f"threshold ({rule})"))
        ax.set_ylabel(catalog.label("iou"))
        ax.set_title("IoU vs threshold at each model's best layer (mean, 95% CI)", pad=4)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, ncol=1, title=None)
        paths += save(fig, out, f"threshold_curves_{slug(rule)}", formats)
    return paths


@styled
def dataset_vs_layer(source: Study | Path | str, out: Path | str | None = None,
                     formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Dataset-level (pooled) pixel AUROC and AUPRO against layer, one line per (model, method).

    Reads every ``dataset_metrics.csv`` below the folder (category ``all``). The map per line is the
    one with the best mean of that metric over layers; the band is the 95% bootstrap CI over images.
    Fused candidates (``patch_knn``'s ``method.fuse``, maps named like ``2+3``) are diamonds with their CI
    at the layer where they are reported, in their line's colour.
    """
    study = as_study(source)
    out = figure_dir(study, out)
    files = sorted(study.root.rglob(DATASET_METRICS))
    if not files:
        log.info("dataset_vs_layer: no %s below %s (dataset_metrics=false, or no masks), skipped", DATASET_METRICS,
                 study.root)
        return []
    table = pd.concat([read_table(f) for f in files], ignore_index=True)
    table = table[table["category"] == "all"]
    paths: list[Path] = []
    for metric in catalog.DATASET_CI:
        defined = table.dropna(subset=[metric])
        if defined.empty:  # e.g. only defect-free images, or masks covering whole images
            log.info("dataset_vs_layer: %s undefined for every map (no defect pixels or no normal pixels), skipped",
                     metric)
            continue
        fig = Figure(figsize=(3.6, 2.5))
        ax = fig.add_subplot()
        for i, ((model, method), part) in enumerate(defined.groupby(["model", "method"])):
            fused = part["head"].astype(str).str.contains("+", regex=False)
            colour = PALETTE[i % len(PALETTE)]
            if (~fused).any():
                head = str(part[~fused].groupby("head")[metric].mean().idxmax())
                line = part[part["head"] == head].sort_values("layer")
                ax.plot(line["layer"], line[metric], marker="o", color=colour,
                        label=f"{model}{SEP}{method}{SEP}{map_label(method, head)}")
                ax.fill_between(line["layer"], line[f"{metric}_ci_low"], line[f"{metric}_ci_high"], color=colour,
                                alpha=0.2, linewidth=0)
            for name, dots in part[fused].groupby("head"):
                ax.errorbar(dots["layer"], dots[metric], fmt="D", color=colour, markersize=4,
                            yerr=[dots[metric] - dots[f"{metric}_ci_low"], dots[f"{metric}_ci_high"] - dots[metric]],
                            label=f"{model}{SEP}{method}{SEP}layers {name}")
        if metric == "pixel_auroc":
            ax.axhline(0.5, color="0.4", linewidth=0.7, linestyle="--", zorder=0)
        depth_axis(ax, "layer")
        ax.set_ylabel(catalog.label(metric))
        ax.set_title(f"{catalog.title(metric)} by layer (dataset level, 95% CI)", pad=4)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, ncol=1)
        paths += save(fig, out, f"dataset_vs_layer_{metric}", formats)
    return paths


@styled
def choice_stability(source: Study | Path | str, out: Path | str | None = None,
                     formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """How often each candidate wins the held-out choice over calibration resamples (``choice_*.json``)."""
    import json

    study = as_study(source)
    out = figure_dir(study, out)
    paths: list[Path] = []
    for path in sorted(study.root.glob(CHOICE_GLOB)):
        result = json.loads(path.read_text())
        rows = result.get("stability") or []
        if not rows:
            continue
        labels = [f"{r['model']}{SEP}{r['method']}{SEP}L{r['layer']}{SEP}{map_label(r['method'], r['head'])}"
                  for r in rows]
        fig = Figure(figsize=(3.6, 0.5 + 0.28 * len(rows)))
        ax = fig.add_subplot()
        ax.barh(range(len(rows))[::-1], [r["wins"] for r in rows], color=PALETTE[0])
        ax.set_yticks(range(len(rows))[::-1], labels)
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"share of {result['n_stability']} calibration resamples won")
        ax.set_title(f"Stability of the choice by pooled {catalog.title(result['metric'])}", pad=4)
        paths += save(fig, out, f"choice_stability_{slug(result['metric'])}", formats)
    if not paths:
        log.info("choice_stability: no choice_*.json in %s (layerscope-report --calibration), skipped", study.root)
    return paths


@styled
def fewshot_vs_layer(source: Study | Path | str, out: Path | str | None = None,
                     formats: Sequence[str] = ("png", "pdf"), metrics: Iterable[str] = METRICS) -> list[Path]:
    """A few-shot sweep: metric against layer, one line per shot count, one figure per (model, method, map).

    Each point is the mean over reference seeds of the metric (per image: mean over images; dataset
    level: pooled over images, from ``dataset_metrics.csv``), the band its 95% t-interval across seeds
    (``analysis.fewshot.across_seeds``). Category ``all``. Skipped (logged) when the folder's jobs do not vary
    ``method.n_references`` or ``seed``.
    """
    from ..analysis import fewshot

    study = as_study(source)
    out = figure_dir(study, out)
    settings = fewshot.job_settings(study.root)
    if not fewshot.is_sweep(settings):
        log.info("fewshot_vs_layer: no few-shot sweep below %s (jobs varying method.n_references or seed), skipped",
                 study.root)
        return []
    tables = []
    for metric in metrics:
        if metric in study.df.columns and study.df[metric].notna().any():
            tables.append((metric, "per image", fewshot.across_seeds(fewshot.per_image_values(study.df, metric),
                                                                     settings)))
    files = sorted(study.root.rglob(DATASET_METRICS))
    if files:
        pooled = pd.concat([read_table(f).assign(job=str(f.parent.relative_to(study.root)) if f.parent != study.root
                                                 else ".") for f in files], ignore_index=True)
        for metric in catalog.DATASET_CI:
            if pooled[metric].notna().any():
                tables.append((metric, "dataset level", fewshot.across_seeds(fewshot.dataset_values(pooled, metric),
                                                                             settings)))
    paths: list[Path] = []
    for metric, protocol, table in tables:
        table = table[table["category"] == "all"]
        for (model, method, head), part in table.groupby(["model", "method", "head"], sort=False):
            fig = Figure(figsize=(3.6, 2.5))
            ax = fig.add_subplot()
            for i, (shots, line) in enumerate(part.groupby(fewshot.SHOTS, sort=False)):
                line = line.sort_values("layer")
                colour = PALETTE[i % len(PALETTE)]
                ax.plot(line["layer"], line["mean"], marker="o", color=colour,
                        label=f"{shots} shot{'s' if shots != 1 else ''} ({int(line['n_seeds'].max())} seeds)")
                ax.fill_between(line["layer"], line["ci_low"], line["ci_high"], color=colour, alpha=0.15, linewidth=0)
            depth_axis(ax, "layer")
            name = metric if protocol == "per image" else f"pooled {metric}"
            ax.set_ylabel(catalog.label(metric) if protocol == "per image" else
                          catalog.get(metric, "dataset").label)
            ax.set_title(f"{model}{SEP}{method}{SEP}{map_label(method, head)}: {name} by layer\n(mean over "
                         "reference seeds, 95% t-interval)", pad=4)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, ncol=3, title=None)
            kind = "" if protocol == "per image" else "dataset_"
            paths += save(fig, out, f"fewshot_vs_layer_{kind}{slug(metric)}_{slug(model)}_{slug(method)}_{slug(head)}",
                          formats)
    return paths


def _depth_axis(layers: np.ndarray, num_layers: float, depth: str) -> np.ndarray:
    """Layer indices as they are, or as relative depth (the model's layer count, else the deepest layer + 1)."""
    if depth == "layer":
        return np.asarray(layers, float)
    n = int(num_layers) if num_layers == num_layers and num_layers else int(np.max(layers)) + 1
    return np.asarray(relative_depth(layers, n), float)


UNIT_LABELS = {"pixels": "input pixels", "fraction": "fraction of the image side"}


@styled
def attention_distance(rows: pd.DataFrame, out: Path | str, formats: Sequence[str] = ("png", "pdf"),
                       depth: str = "layer") -> list[Path]:
    """Mean attention distance against layer: one dot per head with its 95% interval over images, the head mean
    as a line, one panel per series and convention (rule, unit).

    Args:
        rows: ``results.csv`` rows with a ``series`` column (``figures.paper.Study.df``).
    """
    if depth not in AXES:
        raise ValueError(f"--depth {depth}: expected one of {', '.join(AXES)}")
    table = distance_table(rows)
    if table.empty:
        log.info("attention_distance: no attention_distance values (cls_attention runs measure it), skipped")
        return []
    panels = list(table.groupby(["series", "rule", "unit"], sort=True))
    units = sorted(set(table["unit"]))
    fig = Figure(figsize=(0.4 + 2.4 * len(panels), 2.5))
    axes = fig.subplots(1, len(panels), sharey=len(units) == 1, squeeze=False)[0]
    for ax, ((name, rule, unit), part) in zip(axes, panels):
        n = part["num_layers"].iloc[0]
        heads = [h for h in head_order(part["head"]) if h.isdigit()]
        for j, head in enumerate(heads):
            dots = part[part["head"] == head].sort_values("layer")
            x = _depth_axis(dots["layer"].to_numpy(), n, depth)
            colour = PALETTE[j % len(PALETTE)]
            ax.vlines(x, dots["ci_low"], dots["ci_high"], color=colour, linewidth=0.6, alpha=0.6, zorder=2)
            ax.scatter(x, dots["attention_distance"], s=9, color=colour, alpha=0.85,
                       linewidths=0, label=f"head {head}" if ax is axes[0] else None, zorder=3)
        mean = part[part["head"] == "mean"].sort_values("layer")
        if not mean.empty:
            x = _depth_axis(mean["layer"].to_numpy(), n, depth)
            ax.plot(x, mean["attention_distance"], color="0.2", linewidth=1.0, label="mean of heads"
                    if ax is axes[0] else None, zorder=2)
        depth_axis(ax, depth, ticks=(0, 0.5, 1))
        ax.set_title(f"{name} ({rule}, {unit})", pad=3, fontsize=7)
        ax.set_ylim(0, 1.08 * float(np.nanmax([part["ci_high"].max(), part["attention_distance"].max()])) or 1.0)
    axes[0].set_ylabel("mean attention distance" + (f" ({UNIT_LABELS.get(units[0], units[0])})" if len(units) == 1
                                                    else ""))
    fig.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=6)
    fig.suptitle("Mean attention distance per head (mean over images, 95% interval)", fontsize=8)
    stem = "attention_distance" + ("_vs_depth" if depth == "relative" else "")
    return save(fig, Path(out), stem, formats)
