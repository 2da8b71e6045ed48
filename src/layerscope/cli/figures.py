"""``layerscope-figures DIR``: publication figures from a finished run or multirun folder.

    layerscope-figures RUN_OR_MULTIRUN_DIR [--out DIR] [--metric iou auroc ...] [--formats png pdf]
                          [--max-images 4] [--kinds metric_vs_layer ...] [--depth layer|relative]

Reads only saved results (``results.csv``, ``maps/*.npz``); never loads a model. Prints each file
written; a kind with nothing to draw is skipped with its reason on stderr.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..figures.figure_inputs import METRICS
from ..figures.paper import KINDS, make_all
from ..figures.style import AXES
from .errors import Parser, UsageError, command


# --out below a file, a read-only or full disk: one line naming the path
@command(errors=(FileNotFoundError, ValueError), write="")
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="layerscope-figures", description=__doc__.split("\n\n")[0].strip("`: "))
    p.add_argument("folder", type=Path, help="a run folder (results.csv + maps/) or a multirun folder above several")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: FOLDER/figures_paper)")
    p.add_argument("--metric", nargs="+", default=list(METRICS), metavar="METRIC",
                   help=f"metrics for the metric-vs-layer and layer x head figures (default: {' '.join(METRICS)})")
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], metavar="FMT", help="file formats (default: png pdf)")
    p.add_argument("--max-images", type=int, default=4, help="images per (model, method) in the layer x head grids")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), metavar="KIND",
                   help=f"figure kinds (default: all: {' '.join(KINDS)})")
    p.add_argument("--depth", choices=AXES, default="layer",
                   help="x-axis of metric_vs_layer: layer index, or relative depth (0 = first layer, 1 = last: "
                        "models of different depths on one axis; written as metric_vs_depth_<metric>)")
    a = p.parse_args(argv)
    for name in ("layerscope.figures", "layerscope.analysis.saved"):  # the figures' reasons, not fontTools' chatter
        log = logging.getLogger(name)
        if not log.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(handler)
        log.setLevel(logging.INFO)
    if not a.folder.is_dir():
        raise UsageError(f"{a.folder}: no such folder")
    if a.max_images < 1:
        raise UsageError(f"--max-images {a.max_images}: expected an int >= 1")
    written = make_all(a.folder, a.out, a.formats, a.max_images, a.metric, a.kinds, a.depth)
    n = 0
    for paths in written.values():
        for path in paths:
            print(path)
            n += 1
    skipped = [kind for kind, paths in written.items() if not paths]
    print(f"{n} files written" + (f"; skipped: {', '.join(skipped)}" if skipped else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
