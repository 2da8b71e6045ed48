"""Saved maps of a run or sweep, pooled over images for the dataset-level protocol.

One pass reads every ``maps/<image>.npz`` once. For each map grid it keeps, per cell of every
image, the counts the pooled metrics need (defect pixels, normal pixels, and the cell's share
of each ground-truth region); for each candidate map (job, layer, map) it writes the cell
scores into a disk-backed array, so memory stays bounded by one candidate's scores however
many images and candidates there are. With ``upsample=nearest`` (the default) a cell is a
grid position and the metrics equal the pixel metrics of the nearest-upsampled maps exactly;
with ``upsample=bilinear`` a cell is a pixel of the upsampled map.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from ..methods.upsample import upsample as upsample_maps
from ..metrics.localization import MaskCells, top_score
from ..runtime import one_thread
from ..results import catalog, layout
from ..results.maps_io import check_same_layout, load_maps

log = logging.getLogger(__name__)

SCORES = tuple(catalog.IMAGE_SCORES.values())  # the columns of ``Pool.image_scores``: score_max, score_topk


@dataclass
class GridCells:
    """Ground truth of every pooled image at one grid, cell by cell (all arrays (n,))."""

    image: np.ndarray  # int32, index into ``Pool.images``
    pos: np.ndarray  # float32, defect pixels in the cell
    neg: np.ndarray  # float32, normal pixels in the cell (ignored pixels in neither)
    pro: np.ndarray  # float64, sum over regions r of (pixels of r in the cell) / |r|


@dataclass
class Pool:
    """Every candidate map of a folder, pooled over its images.

    Attributes:
        images: one row per image: ``id``, ``category``, ``defective`` (mask has defect
            pixels), ``regions`` (connected defect regions, 8-connectivity), ``defect_pixels``
            and ``normal_pixels`` (not counting ignored pixels); ``score_max`` and
            ``score_topk`` are per candidate (see ``image_scores``).
        candidates: one row per candidate: ``job``, ``model``, ``method``, ``layer``, ``head``,
            ``grid`` (key into ``grids``), ``upsample``.
        grids: (job, grid shape) -> ``GridCells``.
        image_scores: candidate index -> (n_images, len(SCORES)) float64, the ``SCORES`` columns of
            ``results.csv`` (NaN for images the candidate's job did not score).
        fpr_limit: AUPRO integration limit of the runs.
        nonfinite: candidate index -> images whose map held NaN or infinite values (their cells are
            stored as zeros so that reading goes on; every pooled metric of such a candidate is undefined).
    """

    images: pd.DataFrame
    candidates: pd.DataFrame
    grids: dict[tuple[str, tuple[int, int]], GridCells]
    image_scores: dict[int, np.ndarray]
    fpr_limit: float
    _scores: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)
    nonfinite: dict[int, int] = field(default_factory=dict)

    def scores(self, c: int) -> np.ndarray:
        """Cell scores of candidate ``c``, (n,) float32, in the order of its grid's cells."""
        return np.asarray(self._scores[c])

    def cells(self, c: int) -> GridCells:
        row = self.candidates.iloc[c]
        return self.grids[(row["job"], row["grid"])]

    def close(self) -> None:
        self._scores.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _run_options(run_dir: Path) -> tuple[str, float, float]:
    """upsample mode, AUPRO limit and top-k share of a run, from its saved config."""
    from ..config.schema import StudyConfig, typed

    saved = OmegaConf.load(run_dir / layout.CONFIG) if (run_dir / layout.CONFIG).exists() else {}
    opts = typed(StudyConfig, {k: saved[k] for k in ("upsample", "metrics") if k in saved})  # the schema's defaults
    return opts.upsample, opts.metrics.aupro_fpr_limit, opts.metrics.image_topk


def _image_scores(maps: np.ndarray, topk: float) -> np.ndarray:
    """The image scores of ``results.csv`` on the grid, computed as the scorer computes them.

    Args:
        maps: (K, h, w) one layer's maps.
        topk: the run's ``metrics.image_topk``.

    Returns:
        (K, len(SCORES)) float64.
    """
    flat = torch.from_numpy(np.ascontiguousarray(maps)).flatten(-2).float()
    columns = {"score_max": flat.amax(-1), "score_topk": top_score(flat, topk)}
    return torch.stack([columns[name] for name in SCORES], -1).double().numpy()


def _disk(tmp: tempfile.TemporaryDirectory, name: str, dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A disk-backed array in the pool's temporary folder: memory holds only what is being read."""
    return np.lib.format.open_memmap(Path(tmp.name) / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)


def map_runs(folder: Path) -> list[Path]:
    """Run folders at or below ``folder`` that saved maps."""
    folder = Path(folder)
    candidates = {folder} | {p.parent for p in folder.rglob(layout.MAPS) if p.is_dir()}
    return sorted(p for p in candidates if layout.map_files(p))


def warn_missing_maps(run: Path, files: list[Path]) -> None:
    """Warn when a run scored images (``done.txt``) whose saved maps are gone: what reads them would hold fewer.

    Args:
        run: a run folder.
        files: its saved-map files (``layout.map_files``).
    """
    done = layout.read_done(run)
    saved = {p.stem for p in files}
    missing = [image for image in done if image not in saved]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        log.warning("%s: %d of the %d images the run scored have no saved maps (%s/<image>.npz) and are left out: "
                    "%s; rerun the run to rebuild them", run, len(missing), len(done), layout.MAPS, shown)


def build_pool(folder: Path, progress: bool = False) -> Pool:
    """Read every saved map below ``folder`` once into a ``Pool``.

    Every file is checked against the run's first (same input size, layers, maps and grids), and a
    warning names the images a run scored whose saved maps are missing.

    Raises:
        FileNotFoundError: no saved maps below ``folder`` (``save_maps=false``?).
        ValueError: a damaged or edited map file (named), or runs with different AUPRO limits.
    """
    from tqdm import tqdm

    folder = Path(folder)
    runs = map_runs(folder)
    if not runs:
        raise FileNotFoundError(f"{folder}: no saved maps ({layout.MAPS}/*.npz) below it; the dataset-level "
                                "protocol reads them (was save_maps=false?)")
    tmp = tempfile.TemporaryDirectory(prefix="layerscope-pool-")
    image_index: dict[str, int] = {}
    image_rows: list[dict] = []
    cand_rows: list[dict] = []
    grids: dict[tuple[str, tuple[int, int]], GridCells] = {}
    scores: dict[int, np.ndarray] = {}
    image_scores: dict[int, np.ndarray] = {}
    limits = set()
    nonfinite: dict[int, int] = {}
    for r, run in enumerate(runs):
        job = str(run.relative_to(folder)) if run != folder else "."
        mode, limit, topk = _run_options(run)
        limits.add(limit)
        files = layout.map_files(run)
        warn_missing_maps(run, files)
        first = load_maps(files[0])
        size = first["image"].shape[:2]
        # the cell layout of every layer, fixed by the first image (all images share the input size)
        shapes = {layer: (tuple(m.shape[-2:]) if mode == "nearest" else size) for layer, m in first["maps"].items()}
        cells_per = {g: g[0] * g[1] for g in set(shapes.values())}
        per_grid = {g: {key: _disk(tmp, f"run{r}_{g[0]}x{g[1]}_{key}", dtype, (len(files) * n_cells,))
                        for key, dtype in (("image", np.int32), ("pos", np.float32), ("neg", np.float32),
                                           ("pro", np.float64))} for g, n_cells in cells_per.items()}
        grid_used = {g: 0 for g in per_grid}
        job_cands: dict[tuple[int, int], int] = {}
        for layer, m in first["maps"].items():
            for k, name in enumerate(first["names"][layer]):
                c = len(cand_rows)
                job_cands[(layer, k)] = c
                meta = first["meta"]
                cand_rows.append({"job": job, "model": meta.get("model", ""), "method": meta.get("method", ""),
                                  "layer": int(layer), "head": str(name), "grid": shapes[layer], "upsample": mode})
                n_cells = len(files) * shapes[layer][0] * shapes[layer][1]
                scores[c] = _disk(tmp, f"scores{c}", np.float32, (n_cells,))
                image_scores[c] = np.full((len(files), 1 + len(SCORES)), np.nan)  # image index, SCORES
        offsets = {c: 0 for c in job_cands.values()}
        for f, path in enumerate(tqdm(files, desc=f"pooling {job}", disable=not progress)):
            d = load_maps(path)
            check_same_layout(d, first, path, files[0])
            meta = d["meta"]
            if d["mask"] is None:
                log.info("%s: no mask, left out of the dataset-level metrics", path.name)
                continue
            image_id = str(meta.get("image", path.stem))
            if image_id not in image_index:
                counted = d["mask"] if d["valid"] is None else d["mask"] & d["valid"]
                n_valid = counted.size if d["valid"] is None else int(d["valid"].sum())
                image_index[image_id] = len(image_rows)
                image_rows.append({"id": image_id, "category": str(meta.get("category") or ""),
                                   "defective": bool(d["mask"].any()), "regions": 0,
                                   "defect_pixels": int(counted.sum()), "normal_pixels": n_valid - int(counted.sum())})
            i = image_index[image_id]
            mask = torch.from_numpy(d["mask"])
            valid = torch.from_numpy(d["valid"]) if d["valid"] is not None else None
            with one_thread():  # small tensors (see runtime); the image-sized work once for every grid
                per_mask = MaskCells(mask, valid)
                cells_at = {grid: per_mask.at(grid) for grid in per_grid}
            for grid, store in per_grid.items():
                cells = cells_at[grid]
                n_regions = cells.regions.shape[1]
                image_rows[i]["regions"] = n_regions
                pro = (cells.regions / cells.regions.sum(0, keepdim=True)).sum(1) if n_regions else \
                    torch.zeros(grid[0] * grid[1], dtype=torch.float64)
                at = slice(grid_used[grid], grid_used[grid] + cells_per[grid])
                store["image"][at] = i
                store["pos"][at] = cells.pos.numpy()
                store["neg"][at] = cells.neg.numpy()
                store["pro"][at] = pro.numpy()
                grid_used[grid] += cells_per[grid]
            for layer, layer_maps in d["maps"].items():
                flat = layer_maps.reshape(layer_maps.shape[0], -1).astype(np.float32)  # (K, h*w)
                if mode == "bilinear":
                    flat = upsample_maps(torch.from_numpy(layer_maps), size, "bilinear").reshape(len(flat), -1).numpy()
                bad = ~np.isfinite(flat).all(1)  # a NaN weight's maps: kept out of every pooled metric
                if bad.any():
                    flat = np.where(bad[:, None], np.float32(0), flat)
                per_map = _image_scores(layer_maps, topk)  # (K, len(SCORES))
                per_map[bad] = np.nan
                for k in range(len(flat)):
                    c = job_cands[(layer, k)]
                    if bad[k]:
                        nonfinite[c] = nonfinite.get(c, 0) + 1
                    scores[c][offsets[c]:offsets[c] + flat.shape[1]] = flat[k]
                    offsets[c] += flat.shape[1]
                    image_scores[c][f] = (i, *per_map[k])
        for grid, store in per_grid.items():
            grids[(job, grid)] = GridCells(*(store[key][:grid_used[grid]] for key in ("image", "pos", "neg", "pro")))
        for c, used in offsets.items():
            scores[c] = scores[c][:used]  # images without a mask took no cells
    if len(limits) > 1:
        raise ValueError(f"{folder}: runs with different metrics.aupro_fpr_limit {sorted(limits)}; pool them apart")
    n = len(image_rows)
    per_image = {}
    for c, values in image_scores.items():
        table = np.full((n, len(SCORES)), np.nan)
        done = ~np.isnan(values[:, 0])
        table[values[done, 0].astype(int)] = values[done, 1:]
        per_image[c] = table
    images = pd.DataFrame(image_rows, columns=["id", "category", "defective", "regions", "defect_pixels",
                                               "normal_pixels"])
    if images.empty:
        raise FileNotFoundError(f"{folder}: no saved map has a mask; the dataset-level protocol needs masks")
    return Pool(images, pd.DataFrame(cand_rows), grids, per_image, limits.pop(), scores, tmp, nonfinite=nonfinite)
