"""The ``layerscope-view`` command: options in, ``view.page.build``, one line per error (exit 2)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..results import catalog, layout
from ..view.page import DEFAULT_METRICS, build
from .errors import Parser, UsageError, command


# a full disk, a read-only folder: the earlier page and pictures stay as they were
@command(errors=(FileNotFoundError, ValueError), write="; the earlier page is kept")
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="layerscope-view", description="One self-contained HTML page per run or sweep "
                      "(DIR/report.html + DIR/report_files/), to look at offline.")
    p.add_argument("folder", type=Path, help="a run folder (results.csv + maps/) or a sweep folder above several")
    p.add_argument("--out", type=Path, default=None, help="the HTML file (default: FOLDER/report.html)")
    p.add_argument("--metric", default=None, help=f"the page's metric, one of {', '.join(catalog.MAP_METRICS)} "
                   f"(default: the first of {', '.join(DEFAULT_METRICS)} with values)")
    p.add_argument("--depth", choices=("layer", "relative"), default="layer",
                   help="x-axis of the curves when the page opens (a switch on the page changes it)")
    p.add_argument("--top", type=int, default=5, help="candidates shown per defect type")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of the 95%% CIs")
    a = p.parse_args(argv)
    if not a.folder.is_dir():
        raise UsageError(f"{a.folder}: no such folder")
    started = time.perf_counter()
    path = build(a.folder, a.out, a.metric, a.depth, a.top, a.boot)
    files = layout.page_files(path)
    size = path.stat().st_size + sum(f.stat().st_size for f in files.rglob("*") if f.is_file())
    print(path)
    print(f"written in {time.perf_counter() - started:.1f} s: page {path.stat().st_size / 1e6:.2f} MB, "
          f"with its pictures {size / 1e6:.1f} MB; open it in any browser (no network needed)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
