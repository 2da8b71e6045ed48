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
        ignore: (H, W) bool, True where pixels count for no metric (VOC's object
            borders), or None.
        group: the source image when one image yields several samples (one per
            VOC object), so results average over objects, then images; "" otherwise.
    """

    id: str
    image: np.ndarray
    mask: np.ndarray | None = None
    category: str = ""
    source: str = ""
    ignore: np.ndarray | None = None
    group: str = ""
