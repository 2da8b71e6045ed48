"""The classic picture: one image, every layer (rows) by every head or map (columns)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

CELL = 96  # pixels per map in the mosaic
GAP = 4


def _colorize(m: np.ndarray, cmap) -> np.ndarray:
    """(h, w) float -> (CELL, CELL, 3) uint8, min-max scaled per map, nearest upsampled."""
    low, high = float(m.min()), float(m.max())
    scaled = (m - low) / (high - low) if high > low else np.zeros_like(m)
    rgb = (cmap(scaled)[..., :3] * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(rgb).resize((CELL, CELL), Image.NEAREST))


def _mosaic(image: np.ndarray, mask: np.ndarray | None, maps: Mapping[int, np.ndarray], cmap) -> np.ndarray:
    layers = sorted(maps)
    cols = max(m.shape[0] for m in maps.values()) + 1
    canvas = np.full((len(layers) * (CELL + GAP), cols * (CELL + GAP), 3), 255, np.uint8)

    def put(r: int, c: int, tile: np.ndarray) -> None:
        y, x = r * (CELL + GAP), c * (CELL + GAP)
        canvas[y:y + CELL, x:x + CELL] = tile

    thumb = np.asarray(Image.fromarray(image).resize((CELL, CELL), Image.BILINEAR))
    put(0, 0, thumb)
    if mask is not None and len(layers) > 1:
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((CELL, CELL), Image.NEAREST)) > 127
        inner = np.zeros_like(small)
        inner[1:-1, 1:-1] = small[1:-1, 1:-1] & small[:-2, 1:-1] & small[2:, 1:-1] & small[1:-1, :-2] & small[1:-1, 2:]
        overlay = thumb.copy()
        overlay[small & ~inner] = (0, 208, 255)  # outline only, the defect stays visible
        put(1, 0, overlay)
    for r, layer in enumerate(layers):
        for k in range(maps[layer].shape[0]):
            put(r, k + 1, _colorize(maps[layer][k], cmap))
    return canvas


def grid_figure(image: np.ndarray, mask: np.ndarray | None, maps: Mapping[int, np.ndarray],
                names: Mapping[int, Sequence[str]], title: str):
    """The layer x head grid as a matplotlib ``Figure`` (no pyplot state): the one grid renderer.

    Each map is min-max scaled on its own (colours compare places within a map, not across
    maps) and shown on its patch grid without smoothing; the input is in the first column, with
    the mask outline below it. Used by a run (one PNG per image) and by the paper figures.

    Args:
        image: (S, S, 3) uint8.
        mask: (S, S) bool or None.
        maps: layer -> (K, h, w) float.
        names: layer -> K column titles.
        title: figure title (image id and model).
    """
    import matplotlib

    from matplotlib.figure import Figure

    cmap = matplotlib.colormaps["inferno"]
    canvas = _mosaic(image, mask, maps, cmap)
    layers = sorted(maps)
    first = max((names[layer] for layer in layers), key=len)
    step = CELL + GAP
    width, height = canvas.shape[1] / 100 + 0.6, canvas.shape[0] / 100 + 0.45
    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_axes((0.6 / width, 0, canvas.shape[1] / 100 / width, canvas.shape[0] / 100 / height))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([CELL / 2 + c * step for c in range(len(first) + 1)],
                  ["input" if mask is None else "input / mask", *map(str, first)], fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([CELL / 2 + r * step for r in range(len(layers))], [f"layer {layer}" for layer in layers], fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(title, fontsize=9, y=1.0, va="bottom")
    return fig


def layer_head_grid(image: np.ndarray, mask: np.ndarray | None, maps: Mapping[int, np.ndarray],
                    names: Mapping[int, Sequence[str]], title: str, path: Path) -> None:
    """Save ``grid_figure`` to ``path``; the suffix picks the format (.png, .pdf)."""
    fig = grid_figure(image, mask, maps, names, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight", dpi=100)
