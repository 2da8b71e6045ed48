"""The record every dataset yields."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Sample:
    """One image with its optional ground-truth mask.

    Attributes:
        id: unique, filesystem-safe name of the image within its dataset.
        image: RGB image, (H, W, 3) uint8.
        mask: ground truth, (H, W) bool, or None where the dataset has no mask.
        category: defect type or object class ("" when unknown).
        source: where the image came from (texture name, file path, ...).
    """

    id: str
    image: np.ndarray
    mask: np.ndarray | None = None
    category: str = ""
    source: str = ""
