"""The classic picture: one image, every layer (rows) by every head or map (columns)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def layer_head_grid(image: np.ndarray, mask: np.ndarray | None, maps: Mapping[int, np.ndarray],
                    names: Mapping[int, Sequence[str]], title: str, path: Path) -> None:
    """Save a layer x head grid of maps beside the input (and its mask outline).

    Args:
        image: (S, S, 3) uint8.
        mask: (S, S) bool or None.
        maps: layer -> (K, h, w) float.
        names: layer -> K column titles.
        title: figure title (image id and model).
        path: output file; the suffix picks the format (.png, .pdf).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted(maps)
    cols = max(m.shape[0] for m in maps.values()) + 1
    fig, axes = plt.subplots(len(layers), cols, figsize=(1.25 * cols, 1.25 * len(layers) + 0.4), squeeze=False)
    for r, layer in enumerate(layers):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=7)
                if r == 0:
                    ax.imshow(image)
                    ax.set_title("input", fontsize=7)
                elif r == 1 and mask is not None:
                    ax.imshow(image)
                    ax.contour(mask, levels=[0.5], colors="#00d0ff", linewidths=0.6)
                    ax.set_title("mask", fontsize=7)
                continue
            k = c - 1
            if k < maps[layer].shape[0]:
                ax.imshow(maps[layer][k], cmap="inferno", interpolation="nearest")
                if r == 0:
                    ax.set_title(str(names[layer][k]), fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(pad=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
