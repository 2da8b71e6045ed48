"""MVTec AD layout: ``<root>/<category>/{train/good, test/<defect>, ground_truth/<defect>}``.

The tree is parsed into one table at construction and checked there, before any model
loads: every defective test image has exactly one mask ``<name>_mask.png`` of the same size
with binary values, no mask lacks its image, and ``good`` images have none.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .base import DatasetBase, Sample
from .folder import IMAGE_SUFFIXES, header_size
from .images import read_image
from .references import draw, without_test_copies


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_binary_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A mask file as bool (H, W); values must be {0, 255} or {0, 1} and the size must be ``size`` (W, H).

    Raises:
        ValueError: naming the file and what was expected.
    """
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # as read_image does to its image
            if im.size != size:
                raise ValueError(f"{path}: mask is {im.size[0]}x{im.size[1]}, its image is {size[0]}x{size[1]}; "
                                 "expected the same size")
            arr = np.asarray(im.convert("L") if im.mode in ("RGB", "RGBA", "P", "LA") else im)
    except OSError as e:
        raise ValueError(f"{path}: unreadable mask ({e})") from None
    values = np.unique(arr)
    if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
        shown = ", ".join(map(str, values[:6])) + (", ..." if len(values) > 6 else "")
        raise ValueError(f"{path}: mask values {{{shown}}} are not binary; expected 0 and 255 (or 0 and 1)")
    return arr > 0


class MVTecAD(DatasetBase):
    """One MVTec AD category, test split, with masks; ``train/good`` as normal references.

    Args:
        root: the MVTec AD folder (holding one folder per category).
        category: e.g. ``bottle``, ``carpet``.
        defects: defect types to include (``good`` included), or None for all.

    Raises:
        FileNotFoundError: missing root, category or split folder.
        ValueError: an unpaired image or mask, a mask of the wrong size or with non-binary
            values, or an empty category; the message names the file.
    """

    def __init__(self, root: str, category: str, defects: list[str] | None = None):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={self.root}: no such folder (expected the MVTec AD root)")
        self.dir = self.root / str(category)
        if not self.dir.is_dir():
            found = sorted(p.name for p in self.root.iterdir() if (p / "test").is_dir())
            raise FileNotFoundError(f"data.category={category}: no folder {self.dir}; categories here: "
                                    f"{', '.join(found) or 'none'}")
        test, truth = self.dir / "test", self.dir / "ground_truth"
        if not test.is_dir():
            raise FileNotFoundError(f"{test}: missing; expected {self.dir}/test/<defect type>/*.png")
        types = sorted(p.name for p in test.iterdir() if p.is_dir())
        if defects is not None:
            unknown = sorted(set(defects) - set(types))
            if unknown:
                raise ValueError(f"data.defects={list(defects)}: {unknown} not in {test} (found {', '.join(types)})")
            types = [t for t in types if t in defects]
        self.items: list[tuple[str, Path, Path | None]] = []  # (defect type, image, mask)
        for defect in types:
            images = _images(test / defect)
            if defect == "good":
                self.items += [(defect, p, None) for p in images]
                continue
            mask_dir = truth / defect
            masks = {p.name: p for p in _images(mask_dir)} if mask_dir.is_dir() else {}
            for p in images:
                m = masks.pop(f"{p.stem}_mask.png", None)
                if m is None:
                    raise ValueError(f"{p}: no mask; expected {mask_dir / (p.stem + '_mask.png')}")
                size = header_size(p)  # after EXIF rotation, as read_image reads it
                if size is None:
                    raise ValueError(f"{p}: unreadable image")
                read_binary_mask(m, size)
                self.items.append((defect, p, m))
            if masks:
                extra = sorted(masks.values())[0]
                raise ValueError(f"{extra}: mask without an image; expected {test / defect / extra.name.replace('_mask', '')}")
        if not self.items:
            raise ValueError(f"{test}: no test images found for category {category}")
        train = self.dir / "train" / "good"
        self.train = _images(train) if train.is_dir() else []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        defect, path, mask_path = self.items[i]
        image = read_image(path)
        h, w = image.shape[:2]
        mask = read_binary_mask(mask_path, (w, h)) if mask_path else np.zeros((h, w), bool)
        return Sample(id=f"{defect}_{path.stem}", image=image, mask=mask, category=defect, source=str(path))

    has_references = True  # train/good; references() names the folder when it is empty

    def references(self, n: int | None, seed: int = 0) -> list[Sample]:
        """``n`` images of ``train/good`` (normal, no masks) drawn by ``seed`` (``data.references.draw``; None:
        all), none of them a test image (same file or same bytes).

        Raises:
            ValueError: the category has no ``train/good`` images, or fewer than ``n``.
        """
        folder = self.dir / "train" / "good"
        pool = without_test_copies(self.train, [path for _, path, _ in self.items])
        if not pool:
            raise ValueError(f"{folder}: no normal training images (needed by method=patch_knn)")
        chosen = [pool[i] for i in draw(len(pool), n, seed, str(folder))]
        return [Sample(id=f"train_{p.stem}", image=read_image(p), category="good", source=str(p)) for p in chosen]
