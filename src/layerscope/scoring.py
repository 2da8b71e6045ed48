"""Scoring one image's maps at one layer: the metric columns of ``results.csv``.

Used by a study run and by ``layerscope.rescore`` alike, so saved maps rescore to the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from .methods import upsample
from .methods.threshold import RULES
from .methods.upsample import MODES
from .metrics import (Cells, mass_in_mask_counts, normalized_entropy, pointing_game_counts,
                      top_score)
from .metrics.localization import MaskCells, iou_from_kept_counts, rank_metrics
from .metrics.rank_groups import Ranked, rank_rows
from .runtime import one_thread, serial  # noqa: F401 - one_thread: the study scores under it too
from .config.schema import MetricsOptions, StudyConfig, typed


@dataclass
class ScoreOptions:
    """How maps become masks and numbers: the scoring part of a run's options, defaults from the schema
    (``options.StudyConfig``, ``options.MetricsOptions``).

    Attributes:
        thresholds: values for ``rule`` (keep-mass fractions or min-max levels).
        rule: ``keep_mass`` or ``minmax``.
        upsample: ``nearest`` (score on the grid with pixel counts, exact) or ``bilinear``
            (score the smoothed map pixel by pixel; thresholds apply to it too).
        fpr_limit: AUPRO integration limit.
        topk: fraction of cells averaged for ``score_topk``.
        pointing_tolerance: pixels around the mask a map's maximum may fall (``pointing_tol``).
    """

    thresholds: list[float]
    rule: str = StudyConfig.threshold_rule
    upsample: str = StudyConfig.upsample
    fpr_limit: float = MetricsOptions.aupro_fpr_limit
    topk: float = MetricsOptions.image_topk
    pointing_tolerance: float = MetricsOptions.pointing_tolerance
    sparseness: bool = MetricsOptions.sparseness  # the gini and complexity columns

    @classmethod
    def of(cls, threshold: Any, rule: str, upsample_mode: str, metrics: MetricsOptions) -> "ScoreOptions":
        """Check ``threshold``, ``threshold_rule``, ``upsample`` and the scoring ``metrics.*`` options.

        Raises:
            ValueError: naming the option and what it accepts.
        """
        thresholds = OmegaConf.to_container(threshold) if OmegaConf.is_config(threshold) else threshold
        thresholds = list(thresholds) if isinstance(thresholds, (list, tuple)) else [thresholds]
        if not thresholds or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in thresholds):
            raise ValueError(f"threshold={thresholds}: expected a number or a list of numbers in [0, 1]")
        bad = [t for t in thresholds if not 0 <= t <= 1]
        if bad:
            raise ValueError(f"threshold={bad}: thresholds must be in [0, 1]")
        if rule not in RULES:
            raise ValueError(f"threshold_rule={rule}: expected one of {', '.join(RULES)}")
        if upsample_mode not in MODES:
            raise ValueError(f"upsample={upsample_mode}: expected one of {', '.join(MODES)}")
        limit, topk, tolerance = metrics.aupro_fpr_limit, metrics.image_topk, metrics.pointing_tolerance
        if not 0 < limit <= 1:
            raise ValueError(f"metrics.aupro_fpr_limit={limit:g}: expected a value in (0, 1]")
        if not 0 < topk <= 1:
            raise ValueError(f"metrics.image_topk={topk:g}: expected a fraction in (0, 1]")
        if tolerance < 0:
            raise ValueError(f"metrics.pointing_tolerance={tolerance:g}: expected pixels >= 0")
        return cls([float(t) for t in thresholds], rule, upsample_mode, float(limit), float(topk), float(tolerance),
                   bool(getattr(metrics, "sparseness", False)))

    @classmethod
    def from_config(cls, cfg: DictConfig | Mapping[str, Any]) -> "ScoreOptions":
        """Read and check the scoring options of a whole config, such as a run's saved ``config.yaml``
        (missing keys take the schema's defaults).

        Raises:
            ValueError: naming the option and what it accepts.
        """
        opts = typed(StudyConfig, {k: cfg[k] for k in ("threshold", "threshold_rule", "upsample", "metrics")
                                   if k in cfg})
        return cls.of(opts.threshold, opts.threshold_rule, opts.upsample, opts.metrics)


class Target:
    """One image's ground truth at scoring resolution, with cell counts cached per grid."""

    def __init__(self, mask: torch.Tensor, valid: torch.Tensor | None = None):
        self.mask, self.valid = mask.bool(), valid
        self._cells: dict[tuple[int, int], Cells] = {}
        self._mask_cells: MaskCells | None = None
        self._fraction: float | None = None

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.mask.shape)

    @serial
    def mask_cells(self) -> MaskCells:
        """The image-sized work shared by every grid (an integral image, the connected regions), once."""
        if self._mask_cells is None:
            self._mask_cells = MaskCells(self.mask, self.valid)
        return self._mask_cells

    @serial
    def cells(self, grid: tuple[int, int]) -> Cells:
        if grid not in self._cells:  # cells_from_mask's counts
            self._cells[grid] = self.mask_cells().at(grid)
        return self._cells[grid]

    @property
    @serial
    def fraction(self) -> float:
        if self._fraction is None:  # every layer asks: two passes over an image-sized mask, once
            valid = self.valid if self.valid is not None else torch.ones_like(self.mask)
            self._fraction = float((self.mask & valid).sum() / valid.sum().clamp_min(1))
        return self._fraction


NONFINITE_NOTE = "map has NaN/inf values: every metric undefined"


def finite_maps(maps: Mapping[int, torch.Tensor]) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """The maps to score, each map holding a NaN or infinite value replaced by zeros, and which those were.

    A NaN has no rank and an infinity no share of a mass, so no metric of such a map means anything: it
    is scored as zeros only so that the maps beside it are scored as usual (each map's columns depend on
    that map alone), and ``assemble_rows`` then empties its columns and names it in ``notes``.

    Args:
        maps: layer -> (..., K, h, w) maps.

    Returns:
        (maps, bad): the maps to score; layer -> (..., K) bool, True where a map is not finite.
    """
    clean, bad = {}, {}
    for layer, m in maps.items():
        bad[layer] = ~torch.isfinite(m.flatten(-2)).all(-1)
        clean[layer] = torch.where(bad[layer][..., None, None], torch.zeros((), dtype=m.dtype, device=m.device), m) \
            if bool(bad[layer].any()) else m
    return clean, bad


def sparseness_columns(maps: torch.Tensor, opts: ScoreOptions) -> dict[str, torch.Tensor]:
    """``gini`` and ``complexity`` of maps (..., h, w) -> (...) each, with ``metrics.sparseness``; else nothing."""
    if not opts.sparseness:
        return {}
    from .metrics.sparseness import complexity, gini

    return {"gini": gini(maps), "complexity": complexity(maps)}


def _notes(target: Target | None, cells: Cells | None, has_mass: bool) -> str:
    """Why some metrics of a row are empty: undefined, not zero, and not silently missing."""
    notes = []
    if target is None:
        notes.append("no mask: iou, iou_oracle, auroc, aupro, mass_in_mask, mass_ratio, pointing undefined")
    elif cells.n_pos == 0:
        notes.append("no defect pixels: iou_oracle, auroc, aupro, mass_ratio, pointing undefined")
    elif cells.n_neg == 0:
        notes.append("mask covers the whole image: auroc, aupro undefined")
    if not has_mass:
        notes.append("map is all zero: entropy, mass_in_mask undefined")
    return "; ".join(notes)


def _kept_pixels(flat: torch.Tensor, thresholds: Sequence[float], rule: str, cells: Cells
                 ) -> tuple[torch.Tensor, torch.Tensor, Ranked | None]:
    """Mask and background pixels each threshold keeps, for every map and threshold from one sort.

    The kept set is exactly ``maps.threshold_maps(maps, t, rule)``'s: the same shift, the same
    ``torch.sort`` call (so cells tied across the keep-mass boundary are split the same way),
    the same float arithmetic in the maps' dtype. Both rules keep the top of the sorted order,
    so each threshold is a count of kept cells and a lookup in prefix sums of the pixel counts.

    Args:
        flat: (R, n) maps in their own dtype.
        thresholds: T values for ``rule``.
        rule: ``keep_mass`` or ``minmax``.
        cells: the ground truth's pixel counts for the n cells.

    Returns:
        (inter, kept_neg, ranked): (R, T) float64 mask and background pixels kept, and the maps
        sorted with their tie groups when the threshold sorted the maps themselves (for the rank
        metrics), or None when keep_mass had to shift a signed map first (a shift may merge ties).
    """
    rows, n = flat.shape
    if rule == "keep_mass":
        low = flat.amin(dim=-1, keepdim=True)
        shifted = torch.where(low < 0, flat - low, flat)  # as keep_mass_maps: signed maps start at 0
        values, order = torch.sort(shifted, dim=-1)
        reusable = not bool((low < 0).any())
        level = torch.cumsum(values / values.sum(dim=-1, keepdim=True), dim=-1)
        # comparing with a Python float casts it to the maps' dtype: so must the tensor of thresholds
        cut = torch.tensor([1 - t for t in thresholds], dtype=level.dtype)
        empty = level.isnan().all(-1)  # an all-zero map: 0/0 everywhere, and `nan > cut` keeps nothing
        gate = ~empty
    else:
        values, order = torch.sort(flat, dim=-1)
        reusable = True
        low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
        level = (values - low) / (high - low).clamp_min(torch.finfo(flat.dtype).tiny)
        cut = torch.tensor(list(thresholds), dtype=level.dtype)
        empty = torch.zeros(rows, dtype=torch.bool)
        gate = (high > low).squeeze(-1)  # a constant map keeps nothing
    counts = torch.stack([cells.pos, cells.neg], -1)[order]  # (R, n, 2) pixels in sorted order
    level = torch.where(empty.unsqueeze(-1), torch.zeros_like(level), level)
    if not bool(level.isnan().any()) and bool((level[:, 1:] >= level[:, :-1]).all()):
        # non-decreasing along the sorted order (the rule): every threshold keeps a top block of it, whose size
        # one binary search finds; no (R, T, n) tensor, so thresholds cost almost nothing
        above = n - torch.searchsorted(level, cut.expand(rows, -1).contiguous(), right=True)  # (R, T) cells > cut
        start = torch.where(gate.unsqueeze(-1), n - above, n).unsqueeze(-1).expand(-1, -1, 2)  # (R, T, 2)
        prefix = torch.cat([torch.zeros_like(counts[:, :1]), torch.cumsum(counts, 1)], 1)  # (R, n + 1, 2)
        kept = prefix[:, -1:] - prefix.gather(1, start)  # integer pixel counts: exact in float64
    else:  # NaN or infinite values in a map: decide cell by cell as the threshold does
        keep = (level.unsqueeze(1) > cut.view(1, -1, 1)) & gate.view(-1, 1, 1) & ~empty.view(-1, 1, 1)
        kept = torch.einsum("rtn,rnc->rtc", keep.double(), counts)
    return kept[..., 0], kept[..., 1], Ranked.from_sorted(values, order) if reusable else None


def _score_block(maps: torch.Tensor, target: Target | None, opts: ScoreOptions) -> tuple[dict, list, list | None]:
    """The metric columns of R maps on one grid, each metric computed for all maps at once.

    Args:
        maps: (R, h, w) maps (one layer, or several layers of the same grid stacked).
        target: the ground truth, or None.
        opts: thresholds and metric options.

    Returns:
        (columns, notes, ious): column name -> R Python floats (or None), R notes, and
        R lists of T thresholded IoUs (None without a target).
    """
    grid = tuple(maps.shape[-2:])
    flat = maps.flatten(-2).float()
    common = {"entropy": normalized_entropy(maps), "score_max": flat.amax(-1), "score_topk": top_score(flat, opts.topk)}
    common.update(sparseness_columns(maps, opts))
    has_mass = (flat.abs().sum(-1) > 0).tolist()
    if target is None:
        notes = [_notes(None, None, m) for m in has_mass]
        return {c: v.tolist() for c, v in common.items()}, notes, None
    if opts.upsample == "nearest":
        scored, cells = maps, target.cells(grid)
    else:
        scored, cells = upsample(maps, target.size, opts.upsample), target.cells(target.size)
    scored = scored.flatten(-2)
    s = scored.double()
    inter, kept_neg, ranked = _kept_pixels(scored, opts.thresholds, opts.rule, cells)
    ious = iou_from_kept_counts(inter, kept_neg, cells.n_pos)
    ranked = ranked if ranked is not None else rank_rows(s)  # the one sort, or a second one for signed maps
    mass = mass_in_mask_counts(s, cells)
    frac = target.fraction
    common.update(rank_metrics(ranked, cells, opts.fpr_limit), mass_in_mask=mass,
                  mass_ratio=mass / frac if frac > 0 else None, pointing=pointing_game_counts(s, cells))
    note = {m: _notes(target, cells, m) for m in (True, False)}
    notes = [note[m] for m in has_mass]
    columns = {c: (v.tolist() if v is not None else [None] * len(notes)) for c, v in common.items()}
    return columns, notes, ious.tolist()


def _rows(names: Sequence[str], columns: dict, notes: list, ious: list | None, opts: ScoreOptions) -> list[dict]:
    """One layer's rows from its scored columns: per threshold, every map, then the ``best`` head."""
    per_map = [{c: v[k] for c, v in columns.items()} for k in range(len(names))]
    heads = [k for k, n in enumerate(names) if n != "mean"] if "mean" in names else []
    rows = []
    for j, t in enumerate(opts.thresholds):
        block = [{"head": name, "threshold": t, "iou": ious[k][j] if ious is not None else None, **per_map[k],
                  "notes": notes[k]} for k, name in enumerate(names)]
        rows += block
        if ious is not None and heads:
            best = max(heads, key=lambda k: float("-inf") if ious[k][j] != ious[k][j] else ious[k][j])
            rows.append(dict(block[best], head="best", best_head=names[best]))
    return rows


@serial
def score_layer(maps: torch.Tensor, names: list[str], target: Target | None, opts: ScoreOptions) -> list[dict]:
    """Metric rows of one image at one layer.

    Every metric is computed for the layer's K maps at once; AUROC, AUPRO, oracle IoU and the
    thresholded IoU of every threshold share one sort of each map (``_kept_pixels``, ``rank_metrics``).

    Args:
        maps: (K, h, w) float on the layer's grid.
        names: K map names (``"0"``.. for heads, ``"mean"``, ``"l2"``, ``"knn"``, ...).
        target: the ground truth at image size, or None (threshold-free columns only).
        opts: thresholds and metric options.

    Returns:
        One dict per (map, threshold) with the metric columns, plus, where the maps are
        heads with their mean, a ``best`` row per threshold: the head with the highest IoU
        on this image (the DINO protocol), its name in ``best_head``.
    """
    if maps.ndim != 3 or maps.shape[0] != len(names):
        raise ValueError(f"expected maps (K, h, w) with K={len(names)} names, got {tuple(maps.shape)}")
    return _rows(names, *_score_block(maps, target, opts), opts)


@serial
def image_rows(meta: Mapping[str, Any], maps: Mapping[int, torch.Tensor], names: Mapping[int, Sequence[str]],
               target: Target | None, opts: ScoreOptions,
               extra: Mapping[int, Mapping[str, torch.Tensor]] | None = None) -> list[dict]:
    """Every ``results.csv`` row of one image: the one row builder of a run and of ``rescore``.

    With ``upsample=nearest``, layers on the same grid are scored as one stacked block (a ViT's
    12 layers x K maps in one sort), the same rows as ``score_layer`` layer by layer.

    Args:
        meta: the image's non-metric columns (image, model, method, ...).
        maps: layer -> (K, h, w) float maps, as saved.
        names: layer -> K map names.
        target: the image's ground truth, or None.
        opts: thresholds and metric options.
        extra: more per-map columns computed elsewhere (faithfulness: ``deletion_auc``,
            ``insertion_auc``): layer -> column -> (K,) values; a ``best`` row takes its head's.
    """
    for layer, layer_maps in maps.items():
        if layer_maps.ndim != 3 or layer_maps.shape[0] != len(names[layer]):
            raise ValueError(f"expected maps (K, h, w) with K={len(names[layer])} names at layer {layer}, "
                             f"got {tuple(layer_maps.shape)}")
    maps, nonfinite = finite_maps(maps)
    scored: dict[int, tuple[dict, list, list | None]] = {}
    blocks: dict[tuple, list[int]] = {}
    for layer, layer_maps in maps.items():  # bilinear maps are image-sized: one layer at a time bounds memory
        key = (tuple(layer_maps.shape[-2:]), layer_maps.dtype) if opts.upsample == "nearest" else (layer,)
        blocks.setdefault(key, []).append(layer)
    for layers in blocks.values():
        columns, notes, ious = _score_block(torch.cat([maps[layer] for layer in layers]), target, opts)
        start = 0
        for layer in layers:
            k = maps[layer].shape[0]
            scored[layer] = ({c: v[start:start + k] for c, v in columns.items()}, notes[start:start + k],
                             ious[start:start + k] if ious is not None else None)
            start += k
    extra = {layer: dict((extra or {}).get(layer, {})) for layer in maps}
    if target is not None and target.mask.any():
        from .metrics.pointing import tolerant_pointing

        for layer, layer_maps in maps.items():
            extra[layer]["pointing_tol"] = tolerant_pointing(
                layer_maps.flatten(-2).float(), target.mask, tuple(layer_maps.shape[-2:]), opts.pointing_tolerance)
    grids = {layer: tuple(layer_maps.shape[-2:]) for layer, layer_maps in maps.items()}
    return assemble_rows(meta, grids, names, scored, extra, opts, {layer: b.tolist() for layer, b in nonfinite.items()})


def _without(scored: tuple[dict, list, list | None], bad: Sequence[bool]) -> tuple[dict, list, list | None]:
    """One layer's scored columns with the non-finite maps' emptied: None columns, NaN IoUs (never the
    ``best`` head while a finite head has an IoU), ``NONFINITE_NOTE``."""
    columns, notes, ious = scored
    columns = {c: [None if b else v for v, b in zip(values, bad)] for c, values in columns.items()}
    notes = [NONFINITE_NOTE if b else n for n, b in zip(notes, bad)]
    if ious is not None:
        ious = [[float("nan")] * len(v) if b else v for v, b in zip(ious, bad)]
    return columns, notes, ious


def assemble_rows(meta: Mapping[str, Any], grids: Mapping[int, tuple[int, int]], names: Mapping[int, Sequence[str]],
                  scored: Mapping[int, tuple[dict, list, list | None]], extra: Mapping[int, Mapping[str, Any]],
                  opts: ScoreOptions, nonfinite: Mapping[int, Sequence[bool]] | None = None) -> list[dict]:
    """One image's ``results.csv`` rows from its scored columns (``image_rows``'s last step, shared with
    ``scoring_batch``).

    Args:
        meta: the image's non-metric columns.
        grids: layer -> (h, w).
        names: layer -> K map names.
        scored: layer -> (columns: name -> K values, K notes, K lists of T IoUs or None).
        extra: layer -> column -> (K,) values added to every row of that map (a ``best`` row takes its head's).
        opts: thresholds and metric options.
        nonfinite: layer -> K bools, True for a map that held NaN or infinite values (``finite_maps``): its
            rows keep no number, only ``NONFINITE_NOTE``.
    """
    rows = []
    for layer, (grid_h, grid_w) in grids.items():
        grid = {"layer": layer, "grid_h": grid_h, "grid_w": grid_w}
        index = {name: k for k, name in enumerate(names[layer])}
        bad = list((nonfinite or {}).get(layer) or [False] * len(names[layer]))
        layer_scored = _without(scored[layer], bad) if any(bad) else scored[layer]
        for row in _rows(list(names[layer]), *layer_scored, opts):
            k = index[row["best_head"] if row["head"] == "best" else row["head"]]
            row.update({column: None if bad[k] else float(values[k]) for column, values in extra[layer].items()})
            if bad[k]:
                row["iou"] = None
            rows.append({**meta, "threshold_rule": opts.rule, **grid, **row})
    return rows
