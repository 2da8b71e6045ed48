"""The figures' one look: the style, palette and labels, the save helper and the drawing primitives.

Shared by ``figures.paper`` and ``figures.comparison_plots``; seaborn's colour-blind palette, TrueType text in PDFs,
the same bytes for the same figure.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Callable, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from ..analysis.saved import SEP

AXES = ("layer", "relative")  # x-axis of metric_vs_layer: layer index, or relative depth (0 = first, 1 = last)
DPI = 200
CMAP = "inferno"
PALETTE = ["#0173B2", "#DE8F05", "#029E73", "#D55E00", "#CC78BC", "#CA9161", "#FBAFE4", "#949494", "#ECE133",
           "#56B4E9"]  # seaborn "colorblind" (Okabe-Ito based), spelled out so colours never depend on state
OUTLINE = "#56B4E9"  # mask outlines: light blue reads on photos and on inferno
LAYER_LABEL = "layer (0 = first block)"
DEPTH_LABEL = "relative depth (0 = first layer, 1 = last)"
HEAT_CMAP = "viridis"  # metric heatmaps (maps themselves are inferno)
BEST = "#D55E00"  # the best cell of a heatmap
HEAT_CELL = 0.22  # inches per heatmap cell

STYLE = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # ships with matplotlib: the same glyphs on every machine
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 8,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "lines.linewidth": 1.3,
    "lines.markersize": 4,
    "axes.prop_cycle": mpl.cycler(color=PALETTE),
    "image.cmap": CMAP,
    "image.interpolation": "nearest",
    "pdf.fonttype": 42,  # TrueType in PDF/PS: text stays text (editable, searchable)
    "ps.fonttype": 42,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
}


def styled(fn: Callable) -> Callable:
    """Draw ``fn``'s figures in ``STYLE`` (the one place the style is applied)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text).replace(SEP, "_")).strip("-") or "x"


def save(fig: Figure, out: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        meta = {"CreationDate": None} if fmt == "pdf" else None  # same bytes for the same figure
        fig.savefig(path, format=fmt, dpi=DPI, bbox_inches="tight", metadata=meta)
        paths.append(path)
    return paths



def bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def show_input(ax, image: np.ndarray, mask: np.ndarray | None, outline: bool) -> None:
    ax.imshow(image, interpolation="bilinear")
    if outline and mask is not None and mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[OUTLINE], linewidths=0.8)
    bare(ax)


def show_map(ax, m: np.ndarray) -> None:
    """A map on its own grid, min-max scaled on its own, no smoothing."""
    low, high = float(np.nanmin(m)), float(np.nanmax(m))
    ax.imshow(m, cmap=CMAP, interpolation="nearest", vmin=low, vmax=high if high > low else low + 1)
    bare(ax)


def upsample(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) float map -> ``size`` (H, W), bilinear."""
    return np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((size[1], size[0]), Image.BILINEAR))


def minmax(m: np.ndarray) -> np.ndarray:
    low, high = float(np.nanmin(m)), float(np.nanmax(m))
    return (m - low) / (high - low) if high > low else np.zeros_like(m)


def colorbar(fig: Figure, rect: Sequence[float], label: str) -> None:
    cax = fig.add_axes(rect)
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), CMAP), cax=cax)
    bar.set_ticks([0, 1], labels=["min", "max"])
    bar.set_label(label)
    bar.outline.set_linewidth(0.4)
    cax.tick_params(length=2)



def depth_axis(ax, depth: str, ticks: Sequence[float] = (0, 0.25, 0.5, 0.75, 1)) -> None:
    """The x-axis of a per-layer plot: whole layer numbers (``depth="layer"``) or relative-depth ``ticks``,
    with its label."""
    if depth == "layer":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax.set_xticks(list(ticks))
    ax.set_xlabel(LAYER_LABEL if depth == "layer" else DEPTH_LABEL)
