"""Figures of the comparison axes beyond masks, from saved tables only (no model, no torch).

- ``cka_heatmaps``: CKA between every layer of one model and every layer of another (or itself), one
  figure per model pair, in the layout of Raghu et al. 2021 (Fig. 1-2): layers on both axes, the
  first layer at the origin; on relative depth (0 = first layer, 1 = last) models of different depths
  share the axes. Cells whose permutation p-value is >= ``ALPHA`` (not distinguishable from the
  null) are hatched.
- ``probe_curves``: the k-NN probe's accuracy against layer (or relative depth), one line per model with
  its 95% interval, each model's label-permutation null as a hatched 5-95% band with its mean dashed.
- ``attention_distance`` (from ``results.csv``, so it lives in ``figures.paper``): mean attention distance
  against layer, one dot per head, models side by side (Dosovitskiy et al. 2020, Fig. 7).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..analysis.saved import relative_depth
from .style import AXES, HEAT_CMAP, PALETTE, depth_axis, save, slug, styled

log = logging.getLogger(__name__)

ALPHA = 0.05  # a cell with p_value >= ALPHA is not distinguishable from its permutation null


def _check_depth(depth: str) -> None:
    if depth not in AXES:
        raise ValueError(f"--depth {depth}: expected one of {', '.join(AXES)}")


def _positions(layers: Sequence[int], num_layers: int | None, depth: str) -> np.ndarray:
    layers = np.asarray(layers, float)
    if depth == "layer":
        return layers
    return np.asarray(relative_depth(layers, num_layers if num_layers else int(layers.max()) + 1), float)


def _edges(pos: np.ndarray, depth: str) -> np.ndarray:
    """Cell edges around sorted cell centres: halfway between neighbours, half a step beyond the ends."""
    if len(pos) == 1:
        half = 0.5 if depth == "layer" else 0.05
        return np.array([pos[0] - half, pos[0] + half])
    mids = (pos[1:] + pos[:-1]) / 2
    return np.concatenate([[pos[0] - (mids[0] - pos[0])], mids, [pos[-1] + (pos[-1] - mids[-1])]])


def _axis(ax, which: str, pos: np.ndarray, layers: Sequence[int], depth: str, label: str) -> None:
    setter = ax.set_xticks if which == "x" else ax.set_yticks
    if depth == "layer":
        step = max(1, int(np.ceil(len(layers) / 12)))
        setter(pos[::step], [str(layer) for layer in layers][::step])
    else:
        setter([0, 0.25, 0.5, 0.75, 1])
    (ax.set_xlabel if which == "x" else ax.set_ylabel)(label)


def cka_rows(similarity: pd.DataFrame) -> pd.DataFrame:
    """The CKA rows of a ``similarity.csv`` table with the value in ``value`` (a table written before the
    long form, with a ``cka`` column, is read as CKA rows)."""
    if "measure" not in similarity.columns:
        return similarity.rename(columns={"cka": "value"}).assign(measure="cka")
    return similarity[similarity["measure"] == "cka"]


def pairs(similarity: pd.DataFrame) -> list[tuple[str, str]]:
    """The model pairs of a ``similarity.csv`` table, each once (a model with itself included), in order."""
    order = list(dict.fromkeys([*similarity["model_a"], *similarity["model_b"]]))
    present = set(zip(similarity["model_a"], similarity["model_b"]))
    return [(a, b) for i, a in enumerate(order) for b in order[i:] if (a, b) in present]


def cka_grid(similarity: pd.DataFrame, a: str, b: str, values: str = "value") -> pd.DataFrame:
    """One column (``value``, ``p_value``, ...) of model ``a``'s layers (rows) against model ``b``'s (columns),
    sorted by layer, from rows of one measure (``cka_rows``)."""
    part = similarity[(similarity["model_a"] == a) & (similarity["model_b"] == b)]
    if values not in part.columns:
        part = part.assign(**{values: np.nan})
    return part.pivot_table(index="layer_a", columns="layer_b", values=values, aggfunc="first",
                            dropna=False).sort_index().sort_index(axis=1)


@styled
def cka_heatmaps(similarity: pd.DataFrame, out: Path | str, formats: Sequence[str] = ("png", "pdf"),
                 depth: str = "layer", num_layers: Mapping[str, int | None] | None = None) -> list[Path]:
    """One CKA heatmap per model pair (``similarity.csv`` rows), ``cka_<a>__<b>_<kind>_<kernel>``.

    Args:
        similarity: ``similarity.csv`` rows (model_a, layer_a, model_b, layer_b, kind, measure, value, p_value,
            n_images, kernel, estimator); only the CKA rows are drawn.
        depth: ``layer`` (axes: layer indices) or ``relative`` (0 = first layer, 1 = last).
        num_layers: model -> its layer count, for relative depth (default: deepest layer + 1).
    """
    _check_depth(depth)
    num_layers = dict(num_layers or {})
    paths: list[Path] = []
    similarity = cka_rows(similarity)
    if similarity.empty:
        return paths
    kind, kernel = similarity["kind"].iloc[0], similarity["kernel"].iloc[0]
    for a, b in pairs(similarity):
        grid = cka_grid(similarity, a, b)
        pvals = cka_grid(similarity, a, b, "p_value").reindex(index=grid.index, columns=grid.columns)
        rows, cols = list(grid.index), list(grid.columns)
        ypos, xpos = _positions(rows, num_layers.get(a), depth), _positions(cols, num_layers.get(b), depth)
        fig = Figure(figsize=(3.3, 2.9))
        ax = fig.add_subplot()
        mesh = ax.pcolormesh(_edges(xpos, depth), _edges(ypos, depth), grid.to_numpy(float), cmap=HEAT_CMAP,
                             vmin=0, vmax=1, shading="flat")
        ax.set_aspect("equal" if depth == "relative" or len(rows) == len(cols) else "auto")
        ax.grid(False)
        xe, ye = _edges(xpos, depth), _edges(ypos, depth)
        faint = np.argwhere(pvals.to_numpy(float) >= ALPHA)
        for r, c in faint:  # hatched: not distinguishable from the permutation null
            ax.add_patch(Rectangle((xe[c], ye[r]), xe[c + 1] - xe[c], ye[r + 1] - ye[r], fill=False, hatch="////",
                                   edgecolor="white", linewidth=0))
        where = "layer" if depth == "layer" else "relative depth"
        _axis(ax, "x", xpos, cols, depth, f"{b} {where}")
        _axis(ax, "y", ypos, rows, depth, f"{a} {where}")
        n = int(similarity.loc[(similarity["model_a"] == a) & (similarity["model_b"] == b), "n_images"].iloc[0])
        estimator = similarity.loc[(similarity["model_a"] == a) & (similarity["model_b"] == b), "estimator"].iloc[0]
        hatch = "; hatched: p >= 0.05" if len(faint) else ""
        ax.set_title(f"{'within ' + a if a == b else a + ' vs ' + b}\n{kernel} CKA of {kind} representations, "
                     f"{n} images ({estimator}{hatch})", pad=4, fontsize=7)
        bar = fig.colorbar(mesh, ax=ax, fraction=0.05, pad=0.03)
        bar.set_label("CKA", fontsize=7)
        bar.outline.set_linewidth(0.4)
        stem = f"cka_{slug(a)}__{slug(b)}_{kind}_{kernel}" + ("_depth" if depth == "relative" else "")
        paths += save(fig, Path(out), stem, formats)
    return paths


@styled
def probe_curves(probe: pd.DataFrame, out: Path | str, formats: Sequence[str] = ("png", "pdf"), depth: str = "layer",
                 num_layers: Mapping[str, int | None] | None = None) -> list[Path]:
    """k-NN probe accuracy against layer per model (``probe.csv`` rows), one figure per (label, kind):
    ``probe_<label>_<kind>`` (``probe_vs_depth_...`` on relative depth)."""
    _check_depth(depth)
    num_layers = dict(num_layers or {})
    paths: list[Path] = []
    for (label, kind), table in probe.groupby(["label", "kind"], sort=False):
        fig = Figure(figsize=(3.6, 2.5))
        ax = fig.add_subplot()
        for i, (model, part) in enumerate(table.groupby("model", sort=False)):
            part = part.sort_values("layer")
            x = _positions(part["layer"].to_numpy(), num_layers.get(model), depth)
            colour = PALETTE[i % len(PALETTE)]
            ax.plot(x, part["accuracy"], marker="o", color=colour, label=f"{model} (k={int(part['k'].iloc[0])})")
            ax.fill_between(x, part["ci_low"], part["ci_high"], color=colour, alpha=0.2, linewidth=0)
            if {"null_q05", "null_q95"} <= set(part.columns) and part["null_q95"].notna().any():
                # the permutation null under the same scheme: its 5-95% band hatched, its mean dashed
                ax.fill_between(x, part["null_q05"], part["null_q95"], facecolor="none", edgecolor=colour,
                                hatch="////", linewidth=0, alpha=0.45, zorder=0)
                ax.plot(x, part["chance"], color=colour, linewidth=0.8, linestyle="--", zorder=0)
            else:  # a probe.csv of an earlier version: chance = the largest class's share
                ax.axhline(float(part["chance"].iloc[0]), color=colour, linewidth=0.8, linestyle="--", zorder=0)
        ax.set_ylim(0, 1.02)
        depth_axis(ax, depth)
        ax.set_ylabel(f"k-NN accuracy of {label} (0–1)")
        group = str(table["group"].iloc[0]) if "group" in table.columns and pd.notna(table["group"].iloc[0]) else ""
        scheme = f"leave-one-{group}-out" if group else "leave-one-out"
        interval = f"{str(table['interval'].iloc[0]).title()} " if "interval" in table.columns else ""
        ax.set_title(f"k-NN probe ({scheme}), {kind} representations\n({interval}95% CI; hatched: label-permutation "
                     "null 5-95%, dashed: its mean)", pad=4)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, ncol=1)
        stem = f"probe{'_vs_depth' if depth == 'relative' else ''}_{slug(label)}_{kind}"
        paths += save(fig, Path(out), stem, formats)
    return paths
