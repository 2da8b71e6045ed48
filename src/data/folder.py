"""A folder of the user's images, with optional masks matched by file name."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .base import Sample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3), EXIF rotation applied."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def read_mask(path: Path) -> np.ndarray:
    """Bool (H, W): any non-zero pixel is defect/object."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L") if im.mode not in ("1", "L", "I", "I;16", "F") else im)
    return arr > 0


class Folder:
    """Every image under ``root``; a mask for ``x.png`` is ``mask_dir/x.png`` or ``mask_dir/x_mask.png``.

    Args:
        root: folder of images (searched recursively when ``recursive``).
        mask_dir: folder of masks, or None for no masks.
        recursive: include subfolders; their names become the category.
        normal_dir: folder of defect-free images, the references of ``method=patch_knn``.

    Raises:
        FileNotFoundError: ``root`` (or ``mask_dir``) is missing.
        ValueError: no images found.
    """

    def __init__(self, root: str, mask_dir: str | None = None, recursive: bool = False, normal_dir: str | None = None):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={self.root}: no such folder")
        self.mask_dir = Path(mask_dir).expanduser() if mask_dir else None
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise FileNotFoundError(f"data.mask_dir={self.mask_dir}: no such folder")
        self.normal_dir = Path(normal_dir).expanduser() if normal_dir else None
        if self.normal_dir is not None and not self.normal_dir.is_dir():
            raise FileNotFoundError(f"data.normal_dir={self.normal_dir}: no such folder")
        pattern = "**/*" if recursive else "*"
        self.files = sorted(p for p in self.root.glob(pattern)
                            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                            and (self.mask_dir is None or self.mask_dir not in p.parents))
        if not self.files:
            raise ValueError(f"data.root={self.root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")

    def __len__(self) -> int:
        return len(self.files)

    def _mask_path(self, image: Path) -> Path | None:
        if self.mask_dir is None:
            return None
        rel = image.relative_to(self.root).with_suffix("")
        for cand in (self.mask_dir / rel.parent / f"{rel.name}{s}" for s in ("_mask.png", ".png", "_mask.bmp", ".bmp")):
            if cand.exists():
                return cand
        return None

    def __getitem__(self, i: int) -> Sample:
        path = self.files[i]
        image = read_image(path)
        mask_path = self._mask_path(path)
        mask = read_mask(mask_path) if mask_path else None
        if mask is not None and mask.shape != image.shape[:2]:
            raise ValueError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, image {path.name} is "
                             f"{image.shape[1]}x{image.shape[0]}; expected the same size")
        rel = path.relative_to(self.root)
        sample_id = "__".join(rel.with_suffix("").parts)
        return Sample(id=sample_id, image=image, mask=mask, category=rel.parent.name if rel.parent.parts else "",
                      source=str(path))

    def references(self, n: int) -> list[Sample]:
        """The first ``n`` images of ``normal_dir``.

        Raises:
            ValueError: no ``normal_dir`` was given, or it holds no images.
        """
        if self.normal_dir is None:
            raise ValueError("this method needs defect-free reference images: set data.normal_dir=/path/to/good")
        files = sorted(p for p in self.normal_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise ValueError(f"data.normal_dir={self.normal_dir}: no images found")
        return [Sample(id=f"normal_{p.stem}", image=read_image(p), category="good", source=str(p)) for p in files[:n]]
