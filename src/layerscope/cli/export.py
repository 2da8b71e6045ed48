"""Write the built-in synthetic defects as an MVTec AD tree, for other tools (and ``data=mvtec``).

    layerscope-export OUT [--per-combination 5] [--good 5] [--train 20] [--size 256]

Each texture becomes a category: ``OUT/<texture>/train/good``, ``test/<defect>``,
``test/good`` and ``ground_truth/<defect>/<name>_mask.png`` (0/255).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..data.mvtec_export import PAINT, export_mvtec
from ..data.defects import DEFECTS
from ..data.synthetic import TEXTURES
from .errors import Parser, command


# OUT below a file, a read-only or full disk: one line naming the path
@command(errors=(ValueError, FileExistsError), write="")
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="layerscope-export", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder (the MVTec root)")
    p.add_argument("--textures", nargs="+", default=list(TEXTURES), choices=TEXTURES)
    p.add_argument("--defects", nargs="+", default=list(DEFECTS), choices=DEFECTS)
    p.add_argument("--per-combination", type=int, default=5, help="defective test images per defect type")
    p.add_argument("--good", type=int, default=5, help="defect-free test images per texture")
    p.add_argument("--train", type=int, default=20, help="defect-free training images per texture")
    p.add_argument("--size", type=int, default=PAINT["size"])
    p.add_argument("--scale", type=float, default=PAINT["scale"])
    p.add_argument("--contrast", type=float, default=PAINT["contrast"])
    p.add_argument("--seed", type=int, default=PAINT["seed"])
    a = p.parse_args(argv)
    folders = export_mvtec(a.out, a.textures, a.defects, a.per_combination, a.good, a.train, a.size, a.scale,
                           a.contrast, a.seed)
    print(f"wrote {len(folders)} categories under {a.out}: {', '.join(f.name for f in folders)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
