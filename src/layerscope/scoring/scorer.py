"""The scoring engine: every ``results.csv`` row of a batch of images, from one pass per grid.

A run scores its images a batch at a time, ``layerscope-rescore`` and ``ls.score`` one image at a time: a
batch of one, through the same path. The maps of all images on a grid are stacked into one ``(B, R, h, w)``
block (``metrics.scored_maps.ScoredMaps``), so a sort, a cumulative sum or a group sum runs once per batch
instead of once per image and layer, and on a GPU the maps are scored where they were computed (only the metric
columns come back to the host). Each column is a per-image metric of ``metrics/per_image/``; the rows do not
depend on how images are batched (on a GPU, to float rounding).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..methods import upsample
from ..metrics.facts import FULL_MASK, NO_DEFECT, NO_MASK, NO_MASS
from ..metrics.per_image import SCORED, notes
from ..metrics.scored_maps import ScoredMaps
from ..runtime import map_threads
from ..metrics.tolerant_pointing import mask_sums
from .score_options import ScoreOptions
from .rows import LayerScores, layer_rows
from .target import Target

Unit = tuple[list[int], list[int]]  # (layers, images) scored together


def finite_maps(maps: Mapping[int, torch.Tensor]) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """The maps to score, each map holding a NaN or infinite value replaced by zeros, and which those were.

    A NaN has no rank and an infinity no share of a mass, so no metric of such a map means anything: it
    is scored as zeros only so that the maps beside it are scored as usual (each map's columns depend on
    that map alone), and its rows then keep no number, only ``rows.NONFINITE_NOTE``.

    Args:
        maps: layer -> (..., K, h, w) maps.

    Returns:
        (maps, bad): the maps to score; layer -> (..., K) bool, True where a map is not finite.
    """
    clean, bad = {}, {}
    for layer, m in maps.items():
        # a NaN makes a map's largest and smallest values NaN, an infinity one of them infinite: two reductions
        # instead of ``isfinite``'s four passes over the maps
        flat = m.flatten(-2)
        bad[layer] = ~(torch.isfinite(flat.amax(-1)) & torch.isfinite(flat.amin(-1)))
        clean[layer] = torch.where(bad[layer][..., None, None], torch.zeros((), dtype=m.dtype, device=m.device), m) \
            if bool(bad[layer].any()) else m
    return clean, bad


def batch_image_rows(metas: Sequence[Mapping[str, Any]], maps: Mapping[int, torch.Tensor],
                     names: Mapping[int, Sequence[str]], targets: Sequence[Target | None], opts: ScoreOptions,
                     extras: Sequence[Mapping[int, Mapping[str, Any]] | None] | None = None,
                     cpu_shortcuts: bool | None = None, threads: int = 1) -> list[list[dict]]:
    """Every ``results.csv`` row of B images.

    With ``upsample=nearest`` the layers on the same grid are scored as one block (a ViT's 12 layers x K maps
    in one sort per map); ``bilinear`` maps are scored at image size, one image and one layer at a time (which
    bounds memory), on the CPU.

    Args:
        metas: B dicts of non-metric columns (image, model, method, ...).
        maps: layer -> (B, K, h, w) float maps, on any device (scored there).
        names: layer -> K map names (``"0"``.. for heads, ``"mean"``, ``"l2"``, ...).
        targets: B ground truths at image size (or None where an image has no mask); their cells are computed
            on the CPU and moved to the maps' device.
        opts: thresholds and metric options.
        extras: B of (layer -> column -> (K,) values) or None: more per-map columns computed elsewhere
            (faithfulness: ``deletion_auc``, ...); a ``best`` row takes its head's.
        cpu_shortcuts: NumPy's sort where it is exact and the pointing game without a full upsample; by
            default where the maps are on the CPU (False runs on a CPU what a GPU runs).
        threads: grids (or runs of images, with fewer grids) scored at once, each on one intra-op thread;
            the rows do not depend on it.

    Returns:
        B lists of row dicts: per layer, per threshold, every map, then the ``best`` head (``rows.layer_rows``).

    Raises:
        ValueError: maps whose shape does not match ``metas`` and ``names``.
    """
    extras = list(extras) if extras is not None else [None] * len(metas)
    for layer, layer_maps in maps.items():
        if layer_maps.ndim != 4 or layer_maps.shape[0] != len(metas) or layer_maps.shape[1] != len(names[layer]):
            raise ValueError(f"expected maps (B={len(metas)}, K={len(names[layer])}, h, w) at layer {layer}, "
                             f"got {tuple(layer_maps.shape)}")
    nearest = opts.upsample == "nearest"
    if not nearest:
        maps = {layer: m.cpu() for layer, m in maps.items()}
    maps, nonfinite = finite_maps(maps)
    shortcuts = cpu_shortcuts if cpu_shortcuts is not None else all(m.device.type == "cpu" for m in maps.values())
    units = _units(_grid_blocks(maps), len(metas), threads) if nearest else \
        [([layer], [b]) for b in range(len(metas)) for layer in maps]
    # the tolerant pointing game's images (those with mask pixels) and their masks' sums, shared by every grid
    pointed = [b for b, t in enumerate(targets) if t is not None and t.has_pixels]
    sums = None
    if pointed:
        device = next(iter(maps.values())).device
        sums = mask_sums(torch.stack([targets[b].mask for b in pointed]).to(device), opts.pointing_tolerance)
    for t in targets:  # the image-sized work of each mask, once, before the grids share it
        if t is not None:
            t.mask_cells()
    at = {b: j for j, b in enumerate(pointed)}  # an image's row in the masks' sums

    def score(unit: Unit) -> list[LayerScores]:
        layers, images = unit
        run = slice(images[0], images[-1] + 1)  # a run of consecutive images
        stacked = torch.cat([maps[layer][run] for layer in layers], 1)  # (B, R, h, w)
        mine = [b for b in images if b in at]
        table = sums if len(images) == len(metas) or sums is None else (sums[0][[at[b] for b in mine]], *sums[1:])
        return _score(stacked, [targets[b] for b in images], [b in at for b in images], opts, shortcuts, table,
                      nearest)

    scored: list[dict[int, LayerScores]] = [{} for _ in metas]
    for (layers, images), block in zip(units, map_threads(score, units, threads)):
        for i, b in enumerate(images):
            start = 0
            for layer in layers:
                k = maps[layer].shape[1]
                part = slice(start, start + k)
                scored[b][layer] = LayerScores({c: v[part] for c, v in block[i].columns.items()},
                                               block[i].notes[part], block[i].target)
                start += k
    rows = []
    for b, meta in enumerate(metas):
        image = []
        for layer, layer_maps in maps.items():
            grid_h, grid_w = layer_maps.shape[-2:]
            info = {**meta, "threshold_rule": opts.rule, "layer": layer, "grid_h": grid_h, "grid_w": grid_w}
            extra = (extras[b] or {}).get(layer, {})
            image += [{**info, **row} for row in layer_rows(names[layer], scored[b][layer], extra,
                                                            nonfinite[layer][b].tolist(), opts.thresholds)]
        rows.append(image)
    return rows


def image_rows(meta: Mapping[str, Any], maps: Mapping[int, torch.Tensor], names: Mapping[int, Sequence[str]],
               target: Target | None, opts: ScoreOptions,
               extra: Mapping[int, Mapping[str, Any]] | None = None) -> list[dict]:
    """Every ``results.csv`` row of one image: ``batch_image_rows`` of a batch of one.

    Args:
        meta: the image's non-metric columns.
        maps: layer -> (K, h, w) float maps, as saved.
        names: layer -> K map names.
        target: the image's ground truth, or None.
        opts: thresholds and metric options.
        extra: layer -> column -> (K,) values computed elsewhere (``batch_image_rows``' ``extras``).

    Raises:
        ValueError: maps that are not (K, h, w) with K names.
    """
    for layer, layer_maps in maps.items():
        if layer_maps.ndim != 3 or layer_maps.shape[0] != len(names[layer]):
            raise ValueError(f"expected maps (K, h, w) with K={len(names[layer])} names at layer {layer}, "
                             f"got {tuple(layer_maps.shape)}")
    return batch_image_rows([meta], {layer: m.unsqueeze(0) for layer, m in maps.items()}, names, [target], opts,
                            [extra])[0]


def _grid_blocks(maps: Mapping[int, torch.Tensor]) -> list[list[int]]:
    """The layers of each grid and dtype (scored as one block), the largest blocks first: the threads then
    finish together (the longest work is never started last)."""
    blocks: dict[tuple, list[int]] = {}
    for layer, layer_maps in maps.items():
        blocks.setdefault((tuple(layer_maps.shape[-2:]), layer_maps.dtype), []).append(layer)
    return sorted(blocks.values(), key=lambda layers: -sum(maps[layer][0].numel() for layer in layers))


def _units(blocks: list[list[int]], images: int, threads: int) -> list[Unit]:
    """The work ``batch_image_rows`` spreads over ``threads``: (layers, images) pairs, each grid's block whole,
    or, with fewer grids than threads, the blocks split into runs of images (one grid: a ViT's layers)."""
    parts = max(1, min(images, -(-threads // len(blocks)))) if threads > 1 else 1
    bounds = [images * i // parts for i in range(parts + 1)]
    return [(layers, list(range(lo, hi))) for layers in blocks for lo, hi in zip(bounds, bounds[1:])]


def _score(maps: torch.Tensor, targets: Sequence[Target | None], with_pixels: Sequence[bool], opts: ScoreOptions,
           shortcuts: bool, sums_table: tuple | None, nearest: bool) -> list[LayerScores]:
    """Every enabled per-image metric of B images' R maps on one grid.

    Args:
        maps: (B, R, h, w).
        targets: B ground truths or None.
        with_pixels: B bools, True where the ground truth has mask pixels (the tolerant pointing game's images).
        shortcuts: the CPU's exact shortcuts (``batch_image_rows``' ``cpu_shortcuts``).
        sums_table: ``mask_sums`` of the masks of the images with mask pixels, in order.
        nearest: score on the grid's cells (``upsample=nearest``), else upsampled to the image.

    Returns:
        B ``LayerScores`` of the R maps (split into layers by the caller).
    """
    with_target = [i for i, t in enumerate(targets) if t is not None]
    scored_maps = ScoredMaps(maps, opts, shortcuts=shortcuts)
    if with_target:
        sub = maps.index_select(0, torch.tensor(with_target, device=maps.device)) \
            if len(with_target) < len(targets) else maps
        mine = [targets[i] for i in with_target]
        if nearest:
            cells, scored = [t.cells(tuple(maps.shape[-2:])) for t in mine], sub.flatten(-2)
        else:  # one image: its maps smoothed to its size, one cell a pixel
            cells, scored = [t.cells(t.size) for t in mine], upsample(sub, mine[0].size, opts.upsample).flatten(-2)
        pointed = [j for j, i in enumerate(with_target) if with_pixels[i]]
        scored_maps = ScoredMaps(maps, opts, with_target, cells, [t.fraction for t in mine], scored, pointed,
                                 torch.stack([mine[j].mask for j in pointed]) if pointed else None, sums_table,
                                 shortcuts, numpy_sort=nearest, on_grid=nearest)
    flat = scored_maps.flat  # a map has mass where a value is not 0 (sum |map| > 0), read from its extremes
    has_mass = ((flat.amax(-1) > 0) | (flat.amin(-1) < 0)).tolist()
    # a mask metric of a batch without ground truths is not computed: its rows hold the undefined value
    values = {p.metric.name: (p, scored_maps.value(p.metric.name, p.compute).cpu().tolist()
                              if with_target or not p.metric.needs_mask else None) for p in SCORED if p.enabled(opts)}
    rows = maps.shape[1]
    at = {i: j for j, i in enumerate(with_target)}
    out = []
    for i, target in enumerate(targets):
        columns = {}
        for name, (p, v) in values.items():
            if not p.metric.needs_mask:
                columns[name] = v[i]
            elif v is not None and i in at:
                columns[name] = v[at[i]]
            else:
                undefined = p.metric.undefined
                empty = [undefined] * len(opts.thresholds) if p.metric.threshold_dependent else undefined
                columns[name] = [empty] * rows
        if target is None:
            condition: tuple[str, ...] = (NO_MASK,)
        else:
            cell = scored_maps.cells[at[i]]
            condition = (NO_DEFECT,) if cell.n_pos == 0 else (FULL_MASK,) if cell.n_neg == 0 else ()
        out.append(LayerScores(columns, [notes(condition if m else (*condition, NO_MASS)) for m in has_mass[i]],
                               target is not None))
    return out
