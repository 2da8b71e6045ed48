"""A batch of maps being scored: B images' R maps on one grid, their images' ground truths, and the work
several per-image metrics share (one sort per map, tie-group sums, pixels kept per threshold), each computed
once, when a metric first asks for it.

The per-image metrics (``metrics/per_image/``) read what they need from here; the scoring engine
(``layerscope.scoring``) builds one per grid and batch and places the values in rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Sequence

import torch

from .kept_pixels import group_sums_per_row, kept_pixels
from .localization import Cells, pro_fpr_weights
from .rank_groups import Ranked


@dataclass
class ScoredMaps:
    """B images' R maps on one grid and what the metrics need of them.

    Attributes:
        maps: (B, R, h, w) the maps on their grid, in their dtype (the mask-free metrics read these).
        opts: the scoring options (``scoring.ScoreOptions``: thresholds, rule, fpr_limit, topk,
            pointing_tolerance).
        with_target: the B' images (indices into B) that have a ground truth; the mask metrics return
            (B', R) values for them.
        cells: B' pixel counts of those images' ground truths on the cells of ``scored``.
        fractions: B' mask area shares (valid pixels only).
        scored: (B', R, n) those images' maps as scored against ``cells``, in the maps' dtype: the grid maps
            flattened (``upsample=nearest``: exact on cells), or the maps upsampled to the image (one cell a
            pixel).
        pointed: positions in ``with_target`` of the images with mask pixels (the tolerant pointing game).
        masks: their (P, H, W) bool masks.
        mask_sums: ``pointing.mask_sums`` of ``masks`` (shared by every grid of a batch), or None.
        shortcuts: the CPU's exact shortcuts (NumPy's sort, the pointing game without a full upsample).
        numpy_sort: NumPy's sort with ``shortcuts``: faster for grid maps, slower for maps smoothed to the image
            (their many equal values send most rows to ``torch.sort`` again).
        on_grid: ``scored`` is the grid maps flattened (``upsample=nearest``).
    """

    maps: torch.Tensor
    opts: Any
    with_target: list[int] = field(default_factory=list)
    cells: Sequence[Cells] = ()
    fractions: Sequence[float] = ()
    scored: torch.Tensor | None = None
    pointed: list[int] = field(default_factory=list)
    masks: torch.Tensor | None = None
    mask_sums: tuple | None = None
    shortcuts: bool = True
    numpy_sort: bool = True
    on_grid: bool = True
    computed: dict[str, torch.Tensor] = field(default_factory=dict)

    def value(self, name: str, compute: Callable[[ScoredMaps], torch.Tensor]) -> torch.Tensor:
        """The values of the per-image metric ``name`` (``compute``), computed once: a metric may build on
        another's."""
        if name not in self.computed:
            self.computed[name] = compute(self)
        return self.computed[name]

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.maps.shape[-2:])

    @cached_property
    def flat(self) -> torch.Tensor:
        """(B, R, h w) float32 grid maps."""
        return self.maps.flatten(-2).float()

    @property
    def sorted_flat(self) -> torch.Tensor | None:
        """(B, R, h w) float32 grid maps sorted ascending, from the threshold's sort, where it sorted every image's
        float32 grid maps (each image has a ground truth, ``on_grid``); else None."""
        if not self.on_grid or len(self.with_target) != self.maps.shape[0] or self.maps.dtype != torch.float32:
            return None
        return self.kept[2].values.view(self.flat.shape)

    @cached_property
    def masses(self) -> torch.Tensor:
        """(B, R, h w) float64 grid maps, each shifted to start at 0 where it has a negative value (entropy and,
        on the grid, mass in mask read the same)."""
        from .distribution import shifted_masses

        return shifted_masses(self.maps.flatten(-2))

    @cached_property
    def scored_masses(self) -> torch.Tensor:
        """(B', R, n) float64 ``scored``, shifted as ``masses``: ``masses`` itself where ``scored`` is every
        image's grid maps."""
        from .distribution import shifted_masses

        if self.on_grid and len(self.with_target) == self.maps.shape[0]:
            return self.masses
        return shifted_masses(self.scored)

    @cached_property
    def pos(self) -> torch.Tensor:
        """(B', n) mask pixels per cell, on the maps' device."""
        return torch.stack([c.pos for c in self.cells]).to(self.maps.device)

    @cached_property
    def neg(self) -> torch.Tensor:
        """(B', n) background (valid, unmasked) pixels per cell."""
        return torch.stack([c.neg for c in self.cells]).to(self.maps.device)

    @cached_property
    def n_pos(self) -> torch.Tensor:
        """(B',) float64 mask pixels per image."""
        return torch.tensor([c.n_pos for c in self.cells], dtype=torch.float64, device=self.maps.device)

    @cached_property
    def n_neg(self) -> torch.Tensor:
        """(B',) float64 background pixels per image."""
        return torch.tensor([c.n_neg for c in self.cells], dtype=torch.float64, device=self.maps.device)

    def per_image(self, defined: Sequence[bool], values: torch.Tensor) -> torch.Tensor:
        """(B', R) ``values`` with the rows of images where ``defined`` is False made NaN."""
        if all(defined):
            return values
        keep = torch.tensor(list(defined), dtype=torch.bool, device=values.device).unsqueeze(-1)
        return torch.where(keep, values, torch.full((), float("nan"), dtype=values.dtype, device=values.device))

    @cached_property
    def kept(self) -> tuple[torch.Tensor, torch.Tensor, Ranked]:
        """(inter, kept_neg, ranked): (B', R, T) float64 mask and background pixels each threshold keeps, and the
        (B' x R, n) maps ranked as the rank metrics need them (``kept_pixels.kept_pixels``)."""
        o = self.opts
        return kept_pixels(self.scored, o.thresholds, o.rule, self.pos, self.neg, self.shortcuts and self.numpy_sort)

    @cached_property
    def group_sums(self) -> torch.Tensor:
        """(4, B' x R, n) float64 sums over each ranked map's tie groups (ascending) of the mask pixels, background
        pixels, share of PRO and share of FPR of its image's cells (zero where an image has no regions)."""
        b, n = self.pos.shape
        device = self.maps.device
        pro = torch.zeros(b, n, dtype=torch.float64, device=device)
        fpr = torch.zeros(b, n, dtype=torch.float64, device=device)
        for j, c in enumerate(self.cells):
            if c.regions.shape[1] and c.n_neg and c.n_pos:
                p, f = pro_fpr_weights(c)
                pro[j], fpr[j] = p.to(device), f.to(device)
        return group_sums_per_row(self.kept[2], torch.stack([self.pos, self.neg, pro, fpr]))

    @cached_property
    def count_cumsums(self) -> torch.Tensor:
        """(2, B' x R, n) float64 running sums of ``group_sums``' mask and background pixels along each ranked
        map (integer counts: exact), which AUROC and the oracle IoU share."""
        return torch.cumsum(self.group_sums[:2], -1)

    def rows_per_image(self, values: torch.Tensor) -> torch.Tensor:
        """(B' x R, ...) values of the ranked rows -> (B', R, ...)."""
        return values.view(len(self.cells), -1, *values.shape[1:])
