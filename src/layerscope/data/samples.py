"""Real photos shipped with scikit-image, for qualitative figures (no masks)."""
from __future__ import annotations

import numpy as np

from .base import DatasetBase, Sample

PHOTOS = ("cat", "coffee", "astronaut", "rocket", "motorcycle")


def load_photo(name: str) -> np.ndarray:
    """RGB uint8 (H, W, 3) of one of ``PHOTOS``."""
    import skimage.data

    loaders = {
        "cat": skimage.data.chelsea,
        "coffee": skimage.data.coffee,
        "astronaut": skimage.data.astronaut,
        "rocket": skimage.data.rocket,
        "motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
    }
    if name not in loaders:
        raise ValueError(f"data.photos: unknown photo {name!r}; expected some of {', '.join(PHOTOS)}")
    return np.ascontiguousarray(loaders[name]()[..., :3])


class Samples(DatasetBase):
    """The scikit-image photos (cat, coffee, astronaut, rocket, motorcycle).

    Args:
        photos: which of ``PHOTOS`` to use, in order.
    """

    def __init__(self, photos: list[str] | tuple[str, ...] = PHOTOS):
        bad = [p for p in photos if p not in PHOTOS]
        if bad or not photos:
            raise ValueError(f"data.photos={list(photos)}: expected a non-empty list from {', '.join(PHOTOS)}")
        self.photos = list(photos)

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i: int) -> Sample:
        name = self.photos[i]
        return Sample(id=name, image=load_photo(name), mask=None, category="", source=f"skimage:{name}")
