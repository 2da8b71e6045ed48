"""One image's ground truth at scoring resolution, with its pixel counts per grid computed once."""
from __future__ import annotations

import torch

from ..metrics.bools import any_true
from ..metrics.localization import Cells, MaskCells
from ..runtime import serial


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

    @property
    def has_pixels(self) -> bool:
        """Whether the mask has a pixel (ignored ones too)."""
        return bool(any_true(self.mask))

    @serial
    def mask_cells(self) -> MaskCells:
        """The image-sized work shared by every grid (the mask's pixels and connected regions), once."""
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
        if self._fraction is None:  # every layer asks: once (without ignored pixels, the cells' count of the mask)
            if self.valid is None:
                inside, counted = torch.tensor(self.mask_cells().pixels), torch.tensor(self.mask.numel())
            else:
                inside, counted = (self.mask & self.valid).sum(), self.valid.sum()
            self._fraction = float(inside / counted.clamp_min(1))  # int64 / int64: float32, as ever
        return self._fraction
