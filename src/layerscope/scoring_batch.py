"""Scoring every image of a batch at once: the rows of ``scoring.image_rows``, from one pass per grid.

A study scores its images a batch at a time: the maps of all images on a grid are stacked into one
``(B x R, n)`` block, so a sort, a cumulative sum or a group sum runs once per batch instead of once per
image and layer, and on a GPU the maps are scored where they were computed (only the metric columns come
back to the host). Every step is ``scoring._score_block``'s, applied row by row with each image's own
pixel counts, so on the CPU the rows equal ``image_rows``'s exactly, and on a GPU to float rounding.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import normalized_entropy, top_score
from .metrics.localization import aupro_from_groups, iou_from_kept_counts, iou_oracle_from_groups, pro_fpr_weights
from .metrics.pointing import mask_sums, pointing_game_tolerance_batch
from .metrics.rank_groups import Ranked, auroc_from_groups
from .runtime import map_threads
from .scoring import ScoreOptions, Target, _notes, assemble_rows, finite_maps, image_rows, sparseness_columns


def batch_image_rows(metas: Sequence[Mapping[str, Any]], maps: Mapping[int, torch.Tensor],
                     names: Mapping[int, Sequence[str]], targets: Sequence[Target | None], opts: ScoreOptions,
                     extras: Sequence[Mapping[int, Mapping[str, Any]] | None] | None = None,
                     cpu_shortcuts: bool | None = None, threads: int = 1) -> list[list[dict]]:
    """Every ``results.csv`` row of B images, each image's rows equal to ``image_rows``'s for it.

    Args:
        metas: B dicts of non-metric columns.
        maps: layer -> (B, K, h, w) float maps, on any device (scored there).
        names: layer -> K map names.
        targets: B ground truths (or None where an image has no mask); their cells are computed on the
            CPU and moved to the maps' device.
        opts: thresholds and metric options.
        extras: B of (layer -> column -> (K,) values) or None, as ``image_rows``'s ``extra``.
        cpu_shortcuts: NumPy's sort where it is exact and the pointing game without a full upsample; by
            default where the maps are on the CPU (False runs on a CPU what a GPU runs).
        threads: grids (or runs of images, with fewer grids) scored at once, each on one intra-op thread;
            the rows do not depend on it.

    Returns:
        B lists of row dicts.
    """
    extras = list(extras) if extras is not None else [None] * len(metas)
    for layer, layer_maps in maps.items():
        if layer_maps.ndim != 4 or layer_maps.shape[0] != len(metas) or layer_maps.shape[1] != len(names[layer]):
            raise ValueError(f"expected maps (B={len(metas)}, K={len(names[layer])}, h, w) at layer {layer}, "
                             f"got {tuple(layer_maps.shape)}")
    if opts.upsample != "nearest":  # image-sized maps: one image at a time bounds memory, as image_rows does
        return [image_rows(meta, {layer: m[b].cpu() for layer, m in maps.items()}, names, targets[b], opts, extras[b])
                for b, meta in enumerate(metas)]
    maps, nonfinite = finite_maps(maps)  # as image_rows: such a map is scored as zeros, its row emptied
    blocks: dict[tuple, list[int]] = {}
    for layer, layer_maps in maps.items():
        blocks.setdefault((tuple(layer_maps.shape[-2:]), layer_maps.dtype), []).append(layer)
    # the largest grids first: the threads then finish together (the longest work is never started last)
    order = sorted(blocks.values(), key=lambda layers: -sum(maps[layer][0].numel() for layer in layers))
    scored: list[dict[int, tuple]] = [{} for _ in metas]
    pointing: list[dict[int, list[float]]] = [{} for _ in metas]
    shortcuts = cpu_shortcuts if cpu_shortcuts is not None else all(m.device.type == "cpu" for m in maps.values())
    # the tolerant pointing game's images (image_rows's condition) and their masks' sums, shared by every grid
    pointed = [b for b, t in enumerate(targets) if t is not None and bool(t.mask.any())]
    sums = None
    if pointed:
        device = next(iter(maps.values())).device
        sums = mask_sums(torch.stack([targets[b].mask for b in pointed]).to(device), opts.pointing_tolerance)
    for t in targets:  # the image-sized work of each mask, once, before the grids share it
        if t is not None:
            t.mask_cells()
    units = _units(order, len(metas), threads)
    at = {b: j for j, b in enumerate(pointed)}  # an image's row in the masks' sums

    def score(unit: tuple[list[int], list[int]]) -> tuple:
        layers, images = unit
        run = slice(images[0], images[-1] + 1)  # a run of consecutive images
        stacked = torch.cat([maps[layer][run] for layer in layers], 1)  # (B, R, h, w)
        mine = [i for i, b in enumerate(images) if b in at]
        whole = len(images) == len(metas)
        table = sums if whole or sums is None else (sums[0][[at[images[i]] for i in mine]], *sums[1:])
        return _score_batch(stacked, [targets[b] for b in images], opts, shortcuts, (mine, table))

    for (layers, images), (columns, notes, ious, tol) in zip(units, map_threads(score, units, threads)):
        for i, b in enumerate(images):
            start = 0
            for layer in layers:
                k = maps[layer].shape[1]
                scored[b][layer] = ({c: v[i][start:start + k] for c, v in columns.items() if v[i] is not None},
                                    notes[i][start:start + k],
                                    ious[i][start:start + k] if ious[i] is not None else None)
                if tol[i] is not None:
                    pointing[b][layer] = tol[i][start:start + k]
                start += k
    rows = []
    grids = {layer: tuple(layer_maps.shape[-2:]) for layer, layer_maps in maps.items()}
    for b, meta in enumerate(metas):
        extra = {layer: dict((extras[b] or {}).get(layer, {})) for layer in maps}
        for layer, values in pointing[b].items():
            extra[layer]["pointing_tol"] = values
        rows.append(assemble_rows(meta, grids, names, scored[b], extra, opts,
                                  {layer: bad[b].tolist() for layer, bad in nonfinite.items()}))
    return rows


def _units(blocks: list[list[int]], images: int, threads: int) -> list[tuple[list[int], list[int]]]:
    """The work ``batch_image_rows`` spreads over ``threads``: (layers, images) pairs, each grid's block whole,
    or, with fewer grids than threads, the blocks split into runs of images (one grid: a ViT's layers)."""
    parts = max(1, min(images, -(-threads // len(blocks)))) if threads > 1 else 1
    bounds = [images * i // parts for i in range(parts + 1)]
    return [(layers, list(range(lo, hi))) for layers in blocks for lo, hi in zip(bounds, bounds[1:])]


def _score_batch(maps: torch.Tensor, targets: Sequence[Target | None], opts: ScoreOptions, shortcuts: bool,
                 pointing: tuple[list[int], tuple | None]
                 ) -> tuple[dict[str, list], list[list[str]], list[list | None], list[list | None]]:
    """``scoring._score_block`` for B images' R maps on one grid, plus the tolerant pointing game.

    Args:
        maps: (B, R, h, w).
        targets: B ground truths or None.
        shortcuts: the CPU's exact shortcuts (``batch_image_rows``'s ``cpu_shortcuts``).
        pointing: the images with mask pixels, and ``mask_sums`` of their masks.

    Returns:
        (columns, notes, ious, pointing_tol): column name -> B lists of R values; B lists of R notes;
        B lists of R lists of T IoUs (None without a target); B lists of R ``pointing_tol`` values (None
        where the mask is missing or empty).
    """
    b_all, rows = maps.shape[:2]
    grid = tuple(maps.shape[-2:])
    device = maps.device
    flat = maps.flatten(-2).float()
    common = {"entropy": normalized_entropy(maps), "score_max": flat.amax(-1), "score_topk": top_score(flat, opts.topk)}
    common.update(sparseness_columns(maps, opts))
    has_mass = (flat.abs().sum(-1) > 0).tolist()
    # image_rows's columns in its order; an image without a target has the first three only (None below)
    columns: dict[str, list] = {c: [None] * b_all for c in (*common, "iou_oracle", "auroc", "aupro", "mass_in_mask",
                                                             "mass_ratio", "pointing")}
    notes: list[list[str]] = [[] for _ in range(b_all)]
    ious: list[list | None] = [None] * b_all
    tol: list[list | None] = [None] * b_all
    common_lists = {c: v.tolist() for c, v in common.items()}
    for b in range(b_all):
        for c, v in common_lists.items():
            columns[c][b] = v[b]
    with_target = [b for b in range(b_all) if targets[b] is not None]
    for b in range(b_all):
        if targets[b] is None:
            notes[b] = [_notes(None, None, m) for m in has_mass[b]]
    if not with_target:
        return columns, notes, ious, tol
    index = torch.tensor(with_target, device=device)
    sub = maps.index_select(0, index) if len(with_target) < b_all else maps
    cells = [targets[b].cells(grid) for b in with_target]
    pos = torch.stack([c.pos for c in cells]).to(device)  # (B', n)
    neg = torch.stack([c.neg for c in cells]).to(device)
    n_pos = torch.tensor([c.n_pos for c in cells], dtype=torch.float64, device=device)
    n_neg = torch.tensor([c.n_neg for c in cells], dtype=torch.float64, device=device)
    scored = sub.flatten(-2)  # (B', R, n) in the maps' dtype
    s = scored.double()
    inter, kept_neg, ranked = _kept_pixels_batch(scored, opts.thresholds, opts.rule, pos, neg, shortcuts)
    iou = iou_from_kept_counts(inter, kept_neg, n_pos.view(-1, 1, 1))  # (B', R, T)
    metrics = _rank_metrics_batch(ranked, cells, pos, neg, n_pos, n_neg, opts.fpr_limit, device)
    metrics["mass_in_mask"] = _mass_in_mask(s, pos, neg)
    metrics["pointing"] = _pointing(s, pos, n_pos)
    host = {c: v.cpu() for c, v in metrics.items()}
    lists = {c: v.tolist() for c, v in host.items()}
    iou = iou.tolist()
    for j, b in enumerate(with_target):
        target, cell = targets[b], cells[j]
        note = {m: _notes(target, cell, m) for m in (True, False)}
        notes[b] = [note[m] for m in has_mass[b]]
        for c in ("auroc", "aupro", "iou_oracle", "mass_in_mask", "pointing"):
            columns[c][b] = lists[c][j]
        frac = target.fraction
        columns["mass_ratio"][b] = (host["mass_in_mask"][j] / frac).tolist() if frac > 0 else [None] * rows
        ious[b] = iou[j]
    pointed, sums = pointing
    if pointed:
        masks = torch.stack([targets[b].mask for b in pointed])
        at = {b: j for j, b in enumerate(with_target)}
        hits = pointing_game_tolerance_batch(scored[[at[b] for b in pointed]].float(), masks, grid,
                                             opts.pointing_tolerance, fast=None if shortcuts else False, sums=sums)
        for k, b in enumerate(pointed):
            tol[b] = hits[k].tolist()
    return columns, notes, ious, tol


def _kept_pixels_batch(flat: torch.Tensor, thresholds: Sequence[float], rule: str, pos: torch.Tensor,
                       neg: torch.Tensor, shortcuts: bool = True) -> tuple[torch.Tensor, torch.Tensor, Ranked]:
    """``scoring._kept_pixels`` for B images at once, each with its own pixel counts.

    Args:
        flat: (B, R, n) maps in their own dtype.
        pos, neg: (B, n) mask and background pixels per cell.
        shortcuts: NumPy's sort where it is exact (``sort_rows``).

    Returns:
        (inter, kept_neg, ranked): (B, R, T) float64 pixel counts; the (B x R, n) rows ranked as the
        rank metrics of each image need them (the threshold's sort where every map of that image is
        non-negative, else a sort of the maps themselves in float64, as ``_score_block`` decides per image).
    """
    b, r, n = flat.shape
    rows = flat.reshape(b * r, n)
    if rule == "keep_mass":
        low = rows.amin(dim=-1, keepdim=True)
        sorted_rows = torch.where(low < 0, rows - low, rows)  # as keep_mass_maps: signed maps start at 0
        signed = (low < 0).view(b, r).any(1)  # per image, as _score_block decides for its block
    else:
        sorted_rows = rows
        signed = torch.zeros(b, dtype=torch.bool, device=flat.device)
    values, order, ties, own = sort_rows(sorted_rows, shortcuts)
    if rule == "keep_mass":
        level = torch.cumsum(values / values.sum(dim=-1, keepdim=True), dim=-1)
        cut = torch.tensor([1 - t for t in thresholds], dtype=level.dtype, device=flat.device)
        empty = level.isnan().all(-1)
        gate = ~empty
    else:
        low, high = rows.amin(-1, keepdim=True), rows.amax(-1, keepdim=True)
        level = (values - low) / (high - low).clamp_min(torch.finfo(rows.dtype).tiny)
        cut = torch.tensor(list(thresholds), dtype=level.dtype, device=flat.device)
        empty = torch.zeros(b * r, dtype=torch.bool, device=flat.device)
        gate = (high > low).squeeze(-1)
    level = torch.where(empty.unsqueeze(-1), torch.zeros_like(level), level)
    # pixel counts are small integers: int32 sums are exact (and the same numbers as float64's)
    counts = torch.stack([pos, neg], -1).to(torch.int32)  # (B, n, 2)
    monotone = not bool(level.isnan().any()) and bool((level[:, 1:] >= level[:, :-1]).all())
    if monotone:
        above = n - torch.searchsorted(level, cut.expand(b * r, -1).contiguous(), right=True)
        start = torch.where(gate.unsqueeze(-1), n - above, n)  # (B x R, T) first kept position
        inside = (start > 0) & (start < n)
        before = values.gather(1, (start - 1).clamp(0, n - 1))
        at = values.gather(1, start.clamp(0, n - 1))
        redo = ~own & (inside & (before == at)).any(-1)  # a cut between two equal cells: torch.sort's order decides
    else:
        start, redo = None, ~own
    if bool(redo.any()):
        index = torch.nonzero(redo).flatten()
        values[index], order[index] = torch.sort(sorted_rows[index], dim=-1)
    sorted_counts = _in_sorted_order(counts, order)  # (B x R, n, 2) each row's pixels in its sorted order
    if monotone:
        # every threshold keeps a top block of the sorted order, whose size one binary search found
        prefix = F.pad(torch.cumsum(sorted_counts, 1, dtype=torch.int32), (0, 0, 1, 0))  # (B x R, n + 1, 2)
        kept = (prefix[:, -1:] - prefix.gather(1, start.unsqueeze(-1).expand(-1, -1, 2))).double()
    else:  # NaN or infinite values somewhere in the batch: cell by cell, as the threshold does
        keep = (level.unsqueeze(1) > cut.view(1, -1, 1)) & gate.view(-1, 1, 1) & ~empty.view(-1, 1, 1)
        kept = torch.einsum("rtn,rnc->rtc", keep.double(), sorted_counts.double())
    ranked = Ranked.from_sorted(values, order)
    # those images' rank metrics sort the unshifted maps in float64, as _score_block does. A row the shift
    # left without ties had none before it either: its one ascending order is the one found already; so is a
    # row that was not shifted (float64 holds float32 exactly) whose only ties are pairs (sums over a pair commute)
    shifted = (low < 0).squeeze(-1) if rule == "keep_mass" else torch.zeros_like(ties)
    again = signed.repeat_interleave(r) & ties & (shifted | own)
    if bool(again.any()):
        values64, order64, _, _ = sort_rows(rows[again].double(), shortcuts)
        redone = Ranked.from_sorted(values64, order64)
        order_all, group_all = ranked.order.clone(), ranked.group.clone()
        order_all[again], group_all[again] = redone.order, redone.group
        ranked = Ranked(order_all, group_all, group_all[:, -1] + 1)
    t = len(thresholds)
    return kept[..., 0].view(b, r, t), kept[..., 1].view(b, r, t), ranked


def sort_rows(x: torch.Tensor, shortcuts: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.sort(x, dim=-1)``'s values, and a permutation that sorts them, faster on a CPU.

    A row without ties has one ascending permutation, which NumPy's vectorised sort finds in less than
    half ``torch.sort``'s time. Large maps often hold a few pairs of equal values (float32 collisions):
    such rows keep NumPy's order too, which may list a pair the other way round from ``torch.sort``. That
    changes nothing a sum over the pair computes (addition commutes), so only a threshold cutting between
    the two needs ``torch.sort``'s order (``_kept_pixels_batch`` redoes those rows). Rows with three or
    more equal values, or a NaN, are sorted by ``torch.sort`` itself.

    Args:
        x: (R, n) float.
        shortcuts: use NumPy (on a CPU); False: ``torch.sort`` alone.

    Returns:
        (values, order, ties, own): (R, n) each; (R,) bool rows holding equal values (or a NaN); (R,)
        bool rows whose order is ``torch.sort``'s own.
    """
    if not shortcuts or x.device.type != "cpu" or x.ndim != 2 or x.shape[-1] < 3:
        values, order = torch.sort(x, dim=-1)
        equal = values[:, 1:] == values[:, :-1]
        return values, order, equal.any(-1) | values[:, -1].isnan(), torch.ones(x.shape[0], dtype=torch.bool,
                                                                                 device=x.device)
    order = torch.from_numpy(np.argsort(x.numpy(), axis=-1))
    values = x.gather(-1, order)
    equal = values[:, 1:] == values[:, :-1]
    nan = values[:, -1].isnan()  # NaN sorts last in both
    own = (equal[:, 1:] & equal[:, :-1]).any(-1) | nan
    if bool(own.any()):
        rows = torch.nonzero(own).flatten()
        values[rows], order[rows] = torch.sort(x[rows], dim=-1)
    return values, order, equal.any(-1) | nan, own


def _in_sorted_order(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Each row's per-cell values in its sorted order: values (B, n, C) of the rows' images, order (B x R, n)
    -> (B x R, n, C). One gather of whole C-vectors (row r belongs to image r // R)."""
    b, n, c = values.shape
    r = order.shape[0] // b
    base = (torch.arange(b, device=order.device) * n).repeat_interleave(r).unsqueeze(1)
    return values.reshape(b * n, c).index_select(0, (order + base).flatten()).view(b * r, n, c)


def _group_sums(ranked: Ranked, weights: torch.Tensor) -> torch.Tensor:
    """``rank_groups.group_sums`` with each row's own weights: (B x R, n) ranked rows, weights (B, n, C) -> (B x R, n, C).

    A row without ties has one item per group: its sums are its weights in sorted order (0 + w is w), so
    only rows with ties are summed.
    """
    rows, n = ranked.order.shape
    b, _, c = weights.shape
    w = _in_sorted_order(weights.double(), ranked.order)
    tied = torch.nonzero(ranked.n_groups < n).flatten()
    if tied.numel() == 0:
        return w
    offsets = torch.arange(tied.numel(), device=w.device).unsqueeze(1) * n
    sums = torch.zeros(tied.numel() * n, c, dtype=torch.float64, device=w.device)
    sums.index_add_(0, (ranked.group[tied] + offsets).flatten(), w[tied].reshape(-1, c))
    w[tied] = sums.view(-1, n, c)
    return w


def _rank_metrics_batch(ranked: Ranked, cells: list, pos: torch.Tensor, neg: torch.Tensor, n_pos: torch.Tensor,
                        n_neg: torch.Tensor, fpr_limit: float, device: torch.device) -> dict[str, torch.Tensor]:
    """``localization.rank_metrics`` for B images' rows: ``auroc``, ``aupro``, ``iou_oracle``, (B, R) float32 each."""
    b, n = pos.shape
    r = ranked.order.shape[0] // b
    regions = [c.regions.shape[1] > 0 and c.n_neg > 0 for c in cells]
    pro = torch.zeros(b, n, dtype=torch.float64, device=device)
    fpr = torch.zeros(b, n, dtype=torch.float64, device=device)
    for j, c in enumerate(cells):
        if c.regions.shape[1] and c.n_neg and c.n_pos:
            p, f = pro_fpr_weights(c)
            pro[j], fpr[j] = p.to(device), f.to(device)
    g = _group_sums(ranked, torch.stack([pos, neg, pro, fpr], -1))  # (B x R, n, 4)
    oracle = iou_oracle_from_groups(g[..., 0], g[..., 1], n_pos.repeat_interleave(r).unsqueeze(-1)).float()
    # the sum over pixel pairs; each image's division by its n_pos x n_neg follows, a Python float as in rank_metrics
    pairs = auroc_from_groups(g[..., 0], g[..., 1], 1.0, 1.0)
    aupro = aupro_from_groups(g[..., 2], g[..., 3], fpr_limit).float()
    nan = torch.full((r,), float("nan"), device=device)
    out = {"iou_oracle": [], "auroc": [], "aupro": []}
    for j, c in enumerate(cells):
        rows = slice(j * r, (j + 1) * r)
        defined = c.n_pos > 0
        out["iou_oracle"].append(oracle[rows] if defined else nan)
        out["auroc"].append((pairs[rows] / (c.n_pos * c.n_neg)).float() if defined and c.n_neg else nan)
        out["aupro"].append(aupro[rows] if defined and regions[j] else nan)
    return {k: torch.stack(v) for k, v in out.items()}


def _mass_in_mask(s: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``localization.mass_in_mask_counts`` with each image's counts: s (B, R, n) float64 -> (B, R) float32."""
    low = s.amin(-1, keepdim=True)
    s = torch.where(low < 0, s - low, s)
    inside = (s * pos.unsqueeze(1)).sum(-1)
    total = (s * (pos + neg).unsqueeze(1)).sum(-1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.full_like(total, float("nan"))).float()


def _pointing(s: torch.Tensor, pos: torch.Tensor, n_pos: torch.Tensor) -> torch.Tensor:
    """``localization.pointing_game_counts`` with each image's counts: (B, R) float32, NaN without mask pixels."""
    top = s.argmax(-1)  # (B, R)
    hit = (pos.gather(1, top) > 0).float()
    return torch.where((n_pos > 0).unsqueeze(-1), hit, torch.tensor(float("nan"), device=s.device))
