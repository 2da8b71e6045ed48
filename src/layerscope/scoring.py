"""Scoring one image's maps at one layer: the metric columns of ``results.csv``.

Used by a study run and by ``layerscope.rescore`` alike, so saved maps rescore to the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from .maps import threshold_maps, upsample
from .maps.threshold import RULES
from .maps.upsample import MODES
from .metrics import (Cells, aupro_counts, auroc_counts, cells_from_mask, iou_counts, iou_oracle_counts,
                      mass_in_mask_counts, normalized_entropy, pointing_game_counts, top_score)


@dataclass
class ScoreOptions:
    """How maps become masks and numbers.

    Attributes:
        thresholds: values for ``rule`` (keep-mass fractions or min-max levels).
        rule: ``keep_mass`` or ``minmax``.
        upsample: ``nearest`` (score on the grid with pixel counts, exact) or ``bilinear``
            (score the smoothed map pixel by pixel; thresholds apply to it too).
        fpr_limit: AUPRO integration limit.
        topk: fraction of cells averaged for ``score_topk``.
    """

    thresholds: list[float]
    rule: str = "keep_mass"
    upsample: str = "nearest"
    fpr_limit: float = 0.3
    topk: float = 0.01

    @classmethod
    def from_config(cls, cfg: DictConfig | Mapping[str, Any]) -> "ScoreOptions":
        """Read and check ``threshold``, ``threshold_rule``, ``upsample`` and ``metrics.*``.

        Raises:
            ValueError: naming the option and what it accepts.
        """
        thresholds = OmegaConf.to_container(cfg["threshold"]) if OmegaConf.is_config(cfg["threshold"]) else cfg["threshold"]
        thresholds = thresholds if isinstance(thresholds, list) else [thresholds]
        if not thresholds or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in thresholds):
            raise ValueError(f"threshold={thresholds}: expected a number or a list of numbers in [0, 1]")
        bad = [t for t in thresholds if not 0 <= t <= 1]
        if bad:
            raise ValueError(f"threshold={bad}: thresholds must be in [0, 1]")
        if cfg["threshold_rule"] not in RULES:
            raise ValueError(f"threshold_rule={cfg['threshold_rule']}: expected one of {', '.join(RULES)}")
        if cfg["upsample"] not in MODES:
            raise ValueError(f"upsample={cfg['upsample']}: expected one of {', '.join(MODES)}")
        metrics = cfg.get("metrics") or {}
        limit, topk = float(metrics.get("aupro_fpr_limit", 0.3)), float(metrics.get("image_topk", 0.01))
        if not 0 < limit <= 1:
            raise ValueError(f"metrics.aupro_fpr_limit={limit}: expected a value in (0, 1]")
        if not 0 < topk <= 1:
            raise ValueError(f"metrics.image_topk={topk}: expected a fraction in (0, 1]")
        return cls([float(t) for t in thresholds], cfg["threshold_rule"], cfg["upsample"], limit, topk)


class Target:
    """One image's ground truth at scoring resolution, with cell counts cached per grid."""

    def __init__(self, mask: torch.Tensor, valid: torch.Tensor | None = None):
        self.mask, self.valid = mask.bool(), valid
        self._cells: dict[tuple[int, int], Cells] = {}

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.mask.shape)

    def cells(self, grid: tuple[int, int]) -> Cells:
        if grid not in self._cells:
            self._cells[grid] = cells_from_mask(self.mask, grid, self.valid)
        return self._cells[grid]

    @property
    def fraction(self) -> float:
        valid = self.valid if self.valid is not None else torch.ones_like(self.mask)
        return float((self.mask & valid).sum() / valid.sum().clamp_min(1))


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


def _f(t: torch.Tensor | None, k: int) -> float | None:
    return None if t is None else float(t[k])


def score_layer(maps: torch.Tensor, names: list[str], target: Target | None, opts: ScoreOptions) -> list[dict]:
    """Metric rows of one image at one layer.

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
    grid = tuple(maps.shape[-2:])
    flat = maps.flatten(-2).float()
    common = {"entropy": normalized_entropy(maps), "score_max": flat.amax(-1), "score_topk": top_score(flat, opts.topk)}
    scored = maps
    if target is not None:
        if opts.upsample == "nearest":
            cells = target.cells(grid)
        else:
            scored = upsample(maps, target.size, opts.upsample)
            cells = target.cells(target.size)
        s = scored.flatten(-2).double()
        mass = mass_in_mask_counts(s, cells)
        frac = target.fraction
        common.update(auroc=auroc_counts(s, cells.pos, cells.neg), aupro=aupro_counts(s, cells, opts.fpr_limit),
                      iou_oracle=iou_oracle_counts(s, cells), mass_in_mask=mass,
                      mass_ratio=mass / frac if frac > 0 else None, pointing=pointing_game_counts(s, cells))
    notes = [_notes(target, cells if target is not None else None, bool(flat[k].abs().sum() > 0)) for k in range(len(names))]
    rows = []
    heads = [k for k, n in enumerate(names) if n != "mean"] if "mean" in names else []
    for t in opts.thresholds:
        ious = iou_counts(threshold_maps(scored, t, opts.rule).flatten(-2), cells) if target is not None else None
        block = [{"head": name, "threshold": t, "iou": _f(ious, k), **{c: _f(v, k) for c, v in common.items()},
                  "notes": notes[k]} for k, name in enumerate(names)]
        rows += block
        if ious is not None and heads:
            best = max(heads, key=lambda j: float("-inf") if ious[j] != ious[j] else float(ious[j]))
            rows.append(dict(block[best], head="best", best_head=names[best]))
    return rows


def image_rows(meta: Mapping[str, Any], maps: Mapping[int, torch.Tensor], names: Mapping[int, Sequence[str]],
               target: Target | None, opts: ScoreOptions) -> list[dict]:
    """Every ``results.csv`` row of one image: the one row builder of a run and of ``rescore``.

    Args:
        meta: the image's non-metric columns (image, model, method, ...).
        maps: layer -> (K, h, w) float maps, as saved.
        names: layer -> K map names.
        target: the image's ground truth, or None.
        opts: thresholds and metric options.
    """
    rows = []
    for layer, layer_maps in maps.items():
        grid = {"layer": layer, "grid_h": layer_maps.shape[-2], "grid_w": layer_maps.shape[-1]}
        for row in score_layer(layer_maps, list(names[layer]), target, opts):
            rows.append({**meta, "threshold_rule": opts.rule, **grid, **row})
    return rows
