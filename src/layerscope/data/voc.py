"""PASCAL VOC 2012 segmentation, one sample per object instance (the DINO evaluation).

Layout: ``<root>/JPEGImages/<id>.jpg``, ``<root>/SegmentationObject/<id>.png`` (instance
index per pixel, 255 = border, ignored), ``<root>/SegmentationClass/<id>.png`` (class
index), ``<root>/ImageSets/Segmentation/<split>.txt``. Each object of each image becomes
one sample (``group`` = the image), so results average over objects, then over images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .base import DatasetBase, Sample
from .images import read_image

CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
IGNORE = 255


def _index_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise ValueError(f"{path}: expected an indexed (palette) PNG of object/class ids, got mode {im.mode}")
        return np.asarray(im)


class VOCObjects(DatasetBase):
    """VOC 2012 segmentation split, one sample per object instance.

    Args:
        root: the ``VOC2012`` folder (holding ``JPEGImages`` etc.).
        split: a file name in ``ImageSets/Segmentation`` without ``.txt`` (``val``, ``train``).
        limit: use only the first ``limit`` images (quick looks), or None.

    Raises:
        FileNotFoundError: missing folder or split file.
        ValueError: an id whose image or annotation is missing, or annotations of another size.
    """

    def __init__(self, root: str, split: str = "val", limit: int | None = None):
        self.root = Path(root).expanduser()
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        for folder in ("JPEGImages", "SegmentationObject", "SegmentationClass"):
            if not (self.root / folder).is_dir():
                raise FileNotFoundError(f"data.root={self.root}: no {folder}/ folder (expected a VOC2012 folder)")
        if not split_file.exists():
            raise FileNotFoundError(f"{split_file}: missing (data.split={split})")
        ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if limit is not None:
            ids = ids[: int(limit)]
        if not ids:
            raise ValueError(f"{split_file}: lists no images")
        self.items: list[tuple[str, int]] = []
        for image_id in ids:
            paths = self._paths(image_id)
            for p in paths:
                if not p.exists():
                    raise ValueError(f"{p}: missing (listed in {split_file})")
            objects = _index_png(paths[1])
            with Image.open(paths[0]) as im:
                if im.size != (objects.shape[1], objects.shape[0]):
                    raise ValueError(f"{paths[1]}: {objects.shape[1]}x{objects.shape[0]}, image is "
                                     f"{im.size[0]}x{im.size[1]}; expected the same size")
            self.items += [(image_id, int(k)) for k in np.unique(objects) if k not in (0, IGNORE)]

    def _paths(self, image_id: str) -> tuple[Path, Path, Path]:
        return (self.root / "JPEGImages" / f"{image_id}.jpg", self.root / "SegmentationObject" / f"{image_id}.png",
                self.root / "SegmentationClass" / f"{image_id}.png")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        image_id, k = self.items[i]
        image_path, object_path, class_path = self._paths(image_id)
        objects, classes = _index_png(object_path), _index_png(class_path)
        mask = objects == k
        values, counts = np.unique(classes[mask], return_counts=True)
        cls = int(values[np.argmax(counts)])
        return Sample(id=f"{image_id}_obj{k}", image=read_image(image_path), mask=mask,
                      category=CLASSES[cls] if cls < len(CLASSES) else str(cls), source=str(image_path),
                      ignore=objects == IGNORE, group=image_id)
