"""A run's dataset-level accumulators, fed batch by batch in the study's loop (or from saved maps).

What ``analysis.pool`` reads back from every saved map at the end, gathered while the maps are in hand:
per image its row of the image table (category, defect and normal pixels, regions); per candidate map
(layer, map) its image scores; per layer its cells (every map's scores and the mask's counts per cell,
``metrics.pooled_cells.LayerCells``). ``protocol.stream_rows`` turns them into the rows of ``dataset_metrics.csv``,
the same numbers as the pass over the saved maps. A resumed run feeds the images an earlier run finished
from their saved maps (``add_saved``).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..methods.upsample import upsample as upsample_maps
from ..metrics.bools import any_true
from ..metrics.localization import Cells, MaskCells, top_score
from ..metrics.pooled_cells import LayerCells
from ..runtime import one_thread
from ..results import catalog, layout
from ..results.maps_io import load_maps

log = logging.getLogger(__name__)

# the cells a run holds in memory at most (4 bytes per cell of each map, 16 per cell of each layer): beyond, it
# drops them and the pass at the end reads the saved maps from disk instead, as ``analysis.pool`` does (same numbers)
STREAM_BYTES = 2 * 2 ** 30
SCORES = tuple(catalog.IMAGE_SCORES.values())  # the image score columns: score_max, score_topk
IMAGE_COLUMNS = ["id", "category", "defective", "regions", "defect_pixels", "normal_pixels"]


def mask_counts(mask: torch.Tensor, valid: torch.Tensor | None, grids: Iterable[tuple[int, int]],
                cells_at: Callable[[tuple[int, int]], Cells] | None = None
                ) -> tuple[dict, dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]]:
    """One image's row of the image table and its cells' counts at each grid.

    Args:
        mask: bool (S, S).
        valid: bool (S, S) or None.
        grids: the (h, w) grids of its maps.
        cells_at: grid -> the mask's ``Cells`` there, where they are counted already (the scorer's); None:
            counted here.

    Returns:
        (``defective``, ``regions``, ``defect_pixels``, ``normal_pixels``) as a dict, and grid -> (float32
        (h w, 2) defect and normal pixels per cell, float64 (h w,) PRO weight per cell).
    """
    cells_at = cells_at if cells_at is not None else MaskCells(mask, valid).at
    out, regions, defect, normal = {}, 0, 0, 0
    for grid in grids:
        cells = cells_at(grid)
        pos, neg, regions_at = cells.pos.cpu(), cells.neg.cpu(), cells.regions.cpu()
        regions = regions_at.shape[1]
        pro = (regions_at / regions_at.sum(0, keepdim=True)).sum(1) if regions else \
            torch.zeros(pos.shape[0], dtype=torch.float64)
        out[grid] = (torch.stack([pos, neg], 1).float(), pro)
        defect, normal = int(cells.n_pos), int(cells.n_neg)  # every pixel counted in one cell: any grid's sums
    row = {"defective": bool(any_true(mask)), "regions": regions, "defect_pixels": defect, "normal_pixels": normal}
    return row, out


class PooledStream:
    """One run's pooled counts, image table and image scores, as images come.

    Args:
        job: the run's folder below the pooled folder (``.`` for the run itself).
        upsample: the run's ``upsample`` (``nearest``: a cell per grid position; ``bilinear``: per pixel).
        fpr_limit: the run's ``metrics.aupro_fpr_limit``.
        topk: the run's ``metrics.image_topk``.
        device: where the counts live (the maps' device); None: where the first maps are.
    """

    def __init__(self, job: str = ".", upsample: str = "nearest", fpr_limit: float = 0.3, topk: float = 0.01,
                 device: torch.device | str | None = None):
        self.job, self.mode, self.fpr_limit, self.topk = job, upsample, float(fpr_limit), float(topk)
        self.device = torch.device(device) if device is not None else None
        self.image_rows: list[dict] = []
        self.index: dict[str, int] = {}
        self.candidates: list[dict] = []
        self.slots: dict[tuple[int, int], int] = {}  # (layer, map index) -> candidate
        self.where: list[tuple[int, int]] = []  # candidate -> (layer, map index)
        self.layers: dict[int, LayerCells] = {}  # layer -> its cells over the images added
        self.scores: list[dict[int, np.ndarray]] = []  # per candidate: image -> (len(SCORES),)
        self.nonfinite: dict[int, int] = {}
        self.covered: np.ndarray | None = None  # bool (n_images,) the images of this job; None: every image
        self.seconds = 0.0  # time spent adding
        self.held = 0  # bytes of counts added (an upper bound: merging equal scores frees some)
        self.dropped = False  # over ``STREAM_BYTES``: the pass reads the saved maps at the end

    @classmethod
    def for_run(cls, run_dir: Path, device: torch.device | str | None = None, job: str = ".") -> "PooledStream":
        """An empty stream with a run folder's options (its ``config.yaml``)."""
        from .pool import _run_options

        mode, limit, topk = _run_options(Path(run_dir))
        return cls(job, mode, limit, topk, device)

    def _candidates(self, maps: Mapping[int, torch.Tensor], names: Mapping[int, Sequence[str]], meta: Mapping) -> None:
        for layer, m in maps.items():
            for k in range(m.shape[-3]):
                if (layer, k) not in self.slots:
                    self.slots[(layer, k)] = len(self.candidates)
                    self.candidates.append({"job": self.job, "model": meta.get("model", ""),
                                            "method": meta.get("method", ""), "layer": int(layer),
                                            "head": str(names[layer][k]), "upsample": self.mode})
                    self.where.append((int(layer), k))
                    self.scores.append({})

    def add_batch(self, images: Sequence[Mapping], maps: Mapping[int, torch.Tensor],
                  names: Mapping[int, Sequence[str]], meta: Mapping,
                  image_scores: Mapping[int, np.ndarray] | None = None) -> None:
        """Add a batch of images with their chosen maps.

        Args:
            images: per image ``id``, ``category``, ``mask`` (bool (S, S) tensor or None: left out, as the
                dataset-level protocol needs masks), ``valid`` (bool (S, S) or None) and optionally ``cells``
                (grid -> the mask's ``Cells``, counted already; ``mask_counts``).
            maps: layer -> (B, K, h, w) the maps of the batch (any device).
            names: layer -> K map names.
            meta: ``model`` and ``method`` of the run.
            image_scores: layer -> float64 (B, K, len(SCORES)) the maps' image scores as the scorer computed them
                (``scored_image_scores``; NaN for a map with NaN/inf values, whose rows hold no number), or None:
                computed here, the same numbers.
        """
        t0 = time.perf_counter()
        keep = [b for b, image in enumerate(images) if image["mask"] is not None]
        if not keep or self.dropped:
            return
        first = next(iter(maps.values()))
        device = self.device or first.device
        size = tuple(images[keep[0]]["mask"].shape)
        with one_thread():  # small tensors per image (see runtime)
            self._candidates(maps, names, meta)
            grids = {layer: (tuple(m.shape[-2:]) if self.mode == "nearest" else size) for layer, m in maps.items()}
            counts = []
            for b in keep:
                image = images[b]
                mask = torch.as_tensor(image["mask"]).bool()
                valid = torch.as_tensor(image["valid"]).bool() if image.get("valid") is not None else None
                row, at = mask_counts(mask, valid, set(grids.values()), image.get("cells"))
                image_id = str(image["id"])
                if image_id not in self.index:
                    self.index[image_id] = len(self.image_rows)
                    self.image_rows.append({"id": image_id, "category": str(image.get("category") or ""), **row})
                counts.append(at)
            idx = [self.index[str(images[b]["id"])] for b in keep]
            # per grid the batch's (B', cells, 2) pixels and (B', cells) PRO weights, shared by its layers
            stacked = {grid: (torch.stack([c[grid][0] for c in counts]), torch.stack([c[grid][1] for c in counts]))
                       for grid in set(grids.values())}
            for layer, m in maps.items():
                m = (m[keep] if len(keep) < len(images) else m).to(device)
                k = m.shape[1]
                flat = m.flatten(-2).float() if self.mode == "nearest" else \
                    upsample_maps(m, size, "bilinear").flatten(-2).float()
                if image_scores is not None:  # the scorer's: a map with NaN/inf values has none
                    per_image = np.asarray(image_scores[layer], dtype=np.float64)[keep]  # (B', K, len(SCORES))
                    bad_np = np.isnan(per_image[..., 0])
                    bad = torch.from_numpy(bad_np).to(flat.device) if bad_np.any() else None
                else:
                    scores = self._image_scores(m)
                    bad = ~torch.isfinite(flat).all(-1)  # (B', K): a NaN weight's maps, out of every pooled metric
                    if bad.any():
                        scores[bad] = float("nan")
                    else:
                        bad = None
                    per_image = scores.cpu().numpy()
                if bad is not None:
                    flat = torch.where(bad[..., None], torch.zeros((), device=flat.device), flat)
                    for kk in torch.nonzero(bad.any(0)).flatten().tolist():
                        c = self.slots[(layer, kk)]
                        self.nonfinite[c] = self.nonfinite.get(c, 0) + int(bad[:, kk].sum())
                for j, i in enumerate(idx):
                    for kk in range(k):
                        self.scores[self.slots[(layer, kk)]][i] = per_image[j, kk]
                store = self.layers.get(layer)
                if store is None:
                    store = self.layers[layer] = LayerCells(flat.shape[-1])
                self.held += store.add(flat, np.asarray(idx), *stacked[grids[layer]])
        if self.held > STREAM_BYTES:
            log.info("dataset level: the pooled counts passed %.1f GiB; the pass at the end reads the saved maps "
                     "instead", STREAM_BYTES / 2 ** 30)
            self.dropped = True
            self.layers = {}
        self.seconds += time.perf_counter() - t0

    def _image_scores(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, K, len(SCORES)) float64: the image scores of ``results.csv``, as the scorer computes them."""
        flat = maps.flatten(-2).float()
        columns = {"score_max": flat.amax(-1), "score_topk": top_score(flat, self.topk)}
        return torch.stack([columns[name] for name in SCORES], -1).double()

    def add_saved(self, run_dir: Path, ids: Iterable[str] | None = None) -> int:
        """Add images from the run's saved maps (a resumed run's finished images); None: every saved file.

        Returns:
            How many files were read.
        """
        files = layout.map_files(run_dir)
        if ids is not None:
            wanted = {layout.map_file(run_dir, i).name for i in ids}
            files = [f for f in files if f.name in wanted]
        for path in files:
            self.add_loaded(path, load_maps(path))
        return len(files)

    def add_loaded(self, path: Path, saved: Mapping, cells: Callable[[tuple[int, int]], Cells] | None = None) -> None:
        """Add one image from its saved maps, read already (``results.maps_io.load_maps`` of ``path``).

        Args:
            cells: grid -> the mask's ``Cells``, where a scorer counted them (``mask_counts``); None: counted here.
        """
        meta = saved["meta"]
        image = {"id": str(meta.get("image", path.stem)), "category": meta.get("category"),
                 "mask": torch.from_numpy(saved["mask"]) if saved["mask"] is not None else None,
                 "valid": torch.from_numpy(saved["valid"]) if saved["valid"] is not None else None, "cells": cells}
        maps = {layer: torch.from_numpy(m)[None] for layer, m in saved["maps"].items()}
        self.add_batch([image], maps, saved["names"], meta)

    def images(self):
        """The image table (``Pool.images``' columns)."""
        import pandas as pd

        return pd.DataFrame(self.image_rows, columns=IMAGE_COLUMNS)

    def image_scores(self, c: int) -> np.ndarray:
        """(n_images, len(SCORES)) float64 image scores of candidate ``c`` (NaN for images it has none of)."""
        out = np.full((len(self.image_rows), len(SCORES)), np.nan)
        for i, v in self.scores[c].items():
            out[i] = v
        return out


def add_scored(stream: "PooledStream | None", items: Sequence, maps: Mapping[int, torch.Tensor],
               targets: Sequence, names: Mapping[int, Sequence[str]], model: str, method: str,
               rows: Sequence[Sequence[Mapping]] | None = None) -> None:
    """Feed a study's scored batch to ``stream``; nothing when there is none (no dataset-level pass).

    Args:
        items: the batch's ``data.handover.Item`` s (or dicts with their ``id``, ``mask``, ``valid``,
            ``category``).
        maps: layer -> (B, K, h, w) the chosen maps.
        targets: B ``scoring.target.Target`` or None: the scorer's ground truths, whose cell counts per grid
            the stream reads instead of counting them again.
        rows: B lists of the images' ``results.csv`` rows (``scoring.batch_image_rows``), whose image scores the
            stream takes instead of computing them again; None: computed.
    """
    if stream is None or not items:
        return
    images = []
    for item, target in zip(items, targets):
        image = dict(item) if isinstance(item, Mapping) else \
            {"id": item.id, "mask": item.mask, "valid": item.valid, "category": item.category}
        if target is not None:
            image["cells"] = target.cells
        images.append(image)
    names = {layer: names[layer] for layer in maps}
    scores = scored_image_scores(rows, names) if rows is not None else None
    stream.add_batch(images, maps, names, {"model": model, "method": method}, scores)


def scored_image_scores(rows: Sequence[Sequence[Mapping]], names: Mapping[int, Sequence[str]]
                        ) -> dict[int, np.ndarray]:
    """layer -> float64 (B, K, len(SCORES)) the image scores of B images' rows (those of their first threshold;
    every threshold's are the same), in ``names``' order of the maps; NaN where a row holds none."""
    out = {layer: np.full((len(rows), len(k_names), len(SCORES)), np.nan) for layer, k_names in names.items()}
    at = {layer: {name: k for k, name in enumerate(k_names)} for layer, k_names in names.items()}
    for b, image_rows in enumerate(rows):
        first = image_rows[0]["threshold"] if image_rows else None
        for row in image_rows:
            if row["threshold"] == first and row["head"] != "best" and row["layer"] in at:
                values = out[row["layer"]][b, at[row["layer"]][row["head"]]]
                for j, name in enumerate(SCORES):
                    value = row.get(name)
                    values[j] = value if value is not None else np.nan
    return out


def run_stream(cfg, out_dir: Path, done: Iterable[str], device: torch.device | None = None) -> "PooledStream | None":
    """The accumulators of a study's dataset-level pass, or None when it has none (``dataset_metrics=false``, or
    ``save_maps=false``: the pass reads the saved maps elsewhere, e.g. ``layerscope-report``).

    Args:
        cfg: the study's ``StudyConfig``.
        done: images an interrupted run finished: fed from their saved maps, so a resumed run pools every image.
    """
    if not cfg.dataset_metrics or not cfg.save_maps:
        return None
    stream = PooledStream(".", str(cfg.upsample), float(cfg.metrics.aupro_fpr_limit), float(cfg.metrics.image_topk),
                          device)
    done = list(done)
    if done:
        stream.add_saved(out_dir, done)
    return stream
