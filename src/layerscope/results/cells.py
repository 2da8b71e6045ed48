"""Cell-level representations: a layer's feature map on a grid of cells, and what is pooled from it.

A run with ``save_representations=true`` also saves, per layer and image, from the same pass:

- ``patches``: the layer's patch tokens (ViT) or feature-map cells (CNN), average-pooled to at most
  ``representation_grid`` x ``representation_grid`` cells (``adaptive_pool``), (h, w, D);
- ``defect`` / ``background``: the mean of the layer's cells weighted by the share of each cell inside /
  outside the mask (``mask_pooled``): the mean of the feature map over the mask's pixels, the map's cells
  read as constant over their pixels. NaN where it does not exist (no mask; no defect pixel for
  ``defect``).

``layerscope-compare --kind patches`` pools every layer to one common grid (``common_grid``), and compares
rows = image x cell, each row named ``<image>#<row>,<col>`` (``cell_id``, ``image_of``). numpy only.
"""
from __future__ import annotations

import numpy as np

SEP = "#"  # between an image id and a cell's place in a row id


def _bounds(size: int, out: int) -> list[tuple[int, int]]:
    """Adaptive average pooling's windows (as torch's ``adaptive_avg_pool2d``): [floor(i s / o), ceil((i+1) s / o))."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def adaptive_pool(x: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Average-pool cells to a coarser (or equal) grid, windows as torch's ``adaptive_avg_pool2d``.

    Args:
        x: (..., h, w, D) cells.
        grid: (gh, gw), at most (h, w).

    Returns:
        (..., gh, gw, D), float32 for float32 input.
    """
    h, w = x.shape[-3], x.shape[-2]
    gh, gw = grid
    if not (1 <= gh <= h and 1 <= gw <= w):
        raise ValueError(f"grid {gh}x{gw}: expected at most the cells' own {h}x{w} and at least 1x1")
    if (gh, gw) == (h, w):
        return x
    rows = [x[..., a:b, :, :].mean(-3) for a, b in _bounds(h, gh)]  # each (..., w, D)
    out = [[r[..., a:b, :].mean(-2) for a, b in _bounds(w, gw)] for r in rows]
    return np.stack([np.stack(r, -2) for r in out], -3).astype(x.dtype, copy=False)


def mask_pooled(cells: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The ``defect`` and ``background`` representations of one image's layer.

    Args:
        cells: (h, w, D) the layer's cells.
        mask: (H, W) bool or {0, 1} at the input's resolution, H and W multiples of h and w (or any size:
            each cell's share is then taken over the pixels whose centre falls in it); None: no mask.

    Returns:
        (D,) each: sum_c f_c x_c / sum_c f_c with f_c the share of cell c's pixels inside the mask
        (``defect``) or outside it (``background``); NaN where the weights sum to 0 or there is no mask.
    """
    h, w, d = cells.shape
    nan = np.full(d, np.nan, dtype=np.float32)
    if mask is None:
        return nan, nan.copy()
    mask = np.asarray(mask, dtype=np.float64)
    rows = np.minimum((np.arange(mask.shape[0]) + 0.5) * h // mask.shape[0], h - 1).astype(np.int64)
    cols = np.minimum((np.arange(mask.shape[1]) + 0.5) * w // mask.shape[1], w - 1).astype(np.int64)
    inside = np.zeros((h, w))
    count = np.zeros((h, w))
    np.add.at(inside, (rows[:, None], cols[None, :]), mask)
    np.add.at(count, (rows[:, None], cols[None, :]), 1.0)
    share = inside / np.maximum(count, 1)
    flat = cells.reshape(-1, d).astype(np.float64)
    out = []
    for f in (share.ravel(), 1.0 - share.ravel()):
        total = f.sum()
        out.append((f @ flat / total).astype(np.float32) if total > 0 else nan.copy())
    return out[0], out[1]


def common_grid(shapes: list[tuple[int, int]], grid: int | None = None) -> tuple[int, int]:
    """The grid every layer is pooled to: ``grid`` x ``grid``, or the coarsest of the layers' own grids.

    Raises:
        ValueError: a ``grid`` finer than some layer's saved cells.
    """
    h, w = min(s[0] for s in shapes), min(s[1] for s in shapes)
    if grid is None:
        return h, w
    if grid > min(h, w):
        raise ValueError(f"--grid {grid}: the coarsest compared layer has {h}x{w} cells; expected at most {min(h, w)}")
    return grid, grid


def cell_id(image: str, row: int, col: int) -> str:
    """The row id of one cell of one image."""
    return f"{image}{SEP}{row},{col}"


def cell_ids(images: list[str], grid: tuple[int, int]) -> list[str]:
    """Row ids of ``images`` x cells, image-major, cells in raster order (the rows of ``to_rows``)."""
    return [cell_id(image, r, c) for image in images for r in range(grid[0]) for c in range(grid[1])]


def to_rows(x: np.ndarray) -> np.ndarray:
    """(n, h, w, D) cells -> (n h w, D) rows, image-major (the order of ``cell_ids``)."""
    return x.reshape(-1, x.shape[-1])


def image_of(row_id: str) -> str:
    """The image a row belongs to: the image id itself, or the part of a cell's id before its place."""
    head, sep, tail = row_id.rpartition(SEP)
    if sep and "," in tail and all(part.isdigit() for part in tail.split(",")):
        return head
    return row_id
