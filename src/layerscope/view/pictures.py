"""The page's pictures: one palette PNG of every map of an image, thumbnails with the mask outline, and the
mask outline as an SVG path (drawn over the maps by the page's script)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

OUTLINE = 128  # mask outlines are traced at most at this resolution


def inferno_palette() -> bytes:
    """The maps' palette: inferno in indices 0..254, white (the background) at 255."""
    import matplotlib

    colours = (matplotlib.colormaps["inferno"](np.linspace(0, 1, 255))[:, :3] * 255).round().astype(np.uint8)
    return colours.tobytes() + bytes([255, 255, 255])  # index 255: background (a layer an image lacks)


def tile(m: np.ndarray, side: int) -> np.ndarray:
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
            canvas[r * side:(r + 1) * side, k * side:(k + 1) * side] = tile(m, side)
    picture = Image.fromarray(canvas)
    picture.putpalette(palette)  # L -> P: one byte per cell, compresses well
    return picture


def edge(mask: np.ndarray) -> np.ndarray:
    """(h, w) bool mask -> its boundary pixels (a mask pixel with a non-mask 4-neighbour or on the border)."""
    inner = np.zeros_like(mask)
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def thumbnail(image: np.ndarray, mask: np.ndarray | None, side: int) -> Image.Image:
    """The input at ``side`` px, with the mask outline drawn in light blue."""
    picture = Image.fromarray(image).convert("RGB").resize((side, side), Image.BILINEAR)
    if mask is not None and mask.any() and not mask.all():
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side), Image.BOX)) > 0
        pixels = np.asarray(picture).copy()
        pixels[edge(small)] = (0, 208, 255)
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
