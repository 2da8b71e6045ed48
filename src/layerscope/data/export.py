"""Write the built-in synthetic defects as an MVTec AD tree, for other tools (and ``data=mvtec``).

    layerscope-export OUT [--per-combination 5] [--good 5] [--train 20] [--size 256]

Each texture becomes a category: ``OUT/<texture>/train/good``, ``test/<defect>``,
``test/good`` and ``ground_truth/<defect>/<name>_mask.png`` (0/255).
"""
from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .synthetic import DEFECTS, TEXTURES, SyntheticDefects

_PAINT = {k: p.default for k, p in inspect.signature(SyntheticDefects).parameters.items()}  # size, scale, contrast, seed:
# the dataset's own defaults, so an exported tree and data=synthetic paint alike unless told otherwise


def export_mvtec(out: Path, textures=TEXTURES, defects=DEFECTS, per_combination: int = 5, good: int = 5,
                 train: int = 20, size: int = _PAINT["size"], scale: float = _PAINT["scale"],
                 contrast: float = _PAINT["contrast"], seed: int = _PAINT["seed"]) -> list[Path]:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="layerscope-export", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder (the MVTec root)")
    p.add_argument("--textures", nargs="+", default=list(TEXTURES), choices=TEXTURES)
    p.add_argument("--defects", nargs="+", default=list(DEFECTS), choices=DEFECTS)
    p.add_argument("--per-combination", type=int, default=5, help="defective test images per defect type")
    p.add_argument("--good", type=int, default=5, help="defect-free test images per texture")
    p.add_argument("--train", type=int, default=20, help="defect-free training images per texture")
    p.add_argument("--size", type=int, default=_PAINT["size"])
    p.add_argument("--scale", type=float, default=_PAINT["scale"])
    p.add_argument("--contrast", type=float, default=_PAINT["contrast"])
    p.add_argument("--seed", type=int, default=_PAINT["seed"])
    a = p.parse_args(argv)
    try:
        folders = export_mvtec(a.out, a.textures, a.defects, a.per_combination, a.good, a.train, a.size, a.scale,
                               a.contrast, a.seed)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # OUT below a file, a read-only or full disk: one line naming the path
        print(f"error: cannot write{f' {e.filename}' if e.filename else ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"wrote {len(folders)} categories under {a.out}: {', '.join(f.name for f in folders)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
