"""Write the built-in synthetic defects as an MVTec AD tree, for other tools (and ``data=mvtec``).

The library behind ``layerscope-export`` (``cli/export.py``). Each texture becomes a category:
``OUT/<texture>/train/good``, ``test/<defect>``, ``test/good`` and ``ground_truth/<defect>/<name>_mask.png``
(0/255).
"""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
from PIL import Image

from .synthetic import DEFECTS, TEXTURES, SyntheticDefects

PAINT = {k: p.default for k, p in inspect.signature(SyntheticDefects).parameters.items()}  # size, scale, contrast, seed:
# the dataset's own defaults, so an exported tree and data=synthetic paint alike unless told otherwise


def export_mvtec(out: Path, textures=TEXTURES, defects=DEFECTS, per_combination: int = 5, good: int = 5,
                 train: int = 20, size: int = PAINT["size"], scale: float = PAINT["scale"],
                 contrast: float = PAINT["contrast"], seed: int = PAINT["seed"]) -> list[Path]:
    """Write one MVTec-layout category per texture under ``out``; returns the category folders.

    Raises:
        FileExistsError: ``out`` is a file, or a category folder already exists and is not empty (nothing
            is overwritten).
    """
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise FileExistsError(f"{out}: is a file; expected a folder (the MVTec root); nothing was written")
    for texture in textures:
        folder = out / texture
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder}: exists and is not empty; choose another output folder")
    written = []
    for texture in textures:
        ds = SyntheticDefects([texture], list(defects), per_combination, size, scale, contrast, seed, good_per_texture=good)
        folder = out / texture
        for i in range(len(ds)):
            s = ds[i]
            name = f"{int(s.id.rsplit('_', 1)[1]):03d}"
            target = folder / "test" / s.category / f"{name}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(s.image).save(target)
            if s.category != "good":
                mask = folder / "ground_truth" / s.category / f"{name}_mask.png"
                mask.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(s.mask.astype(np.uint8) * 255).save(mask)
        for j, s in enumerate(ds.references(train)):
            target = folder / "train" / "good" / f"{j:03d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(s.image).save(target)
        written.append(folder)
    return written

