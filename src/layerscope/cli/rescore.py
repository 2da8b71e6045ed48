"""Score a finished run again from its saved maps, with new thresholds or metric options; no model runs.

    layerscope-rescore RUN_OR_MULTIRUN_DIR threshold=[0.3,0.5,0.7] [threshold_rule=minmax]
        [upsample=bilinear] [metrics.aupro_fpr_limit=0.1] [metrics.image_topk=0.05]
        [metrics.pointing_tolerance=10] [--out results_rescored.csv]

Every folder below that holds ``config.yaml`` and ``maps/`` is rescored into ``--out`` beside
its ``results.csv``, with the same columns, so ``layerscope-report --results NAME`` ranks it.
``metrics.faithfulness*`` need the model and are not rescored (their columns stay empty).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..rescoring import OPTIONS, rescore_dir, run_dirs
from ..results.layout import RESCORED
from .errors import Parser, UsageError, command


@command(errors=(ValueError, OSError))
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="layerscope-rescore", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a run folder or a multirun folder")
    p.add_argument("overrides", nargs="*", help=f"key=value for {', '.join(OPTIONS)}")
    p.add_argument("--out", default=RESCORED, help="file name written in each run folder")
    a = p.parse_args(argv)
    if Path(a.out).name != a.out:
        raise UsageError(f"--out {a.out}: expected a file name (it is written inside each run folder)")
    dirs = run_dirs(a.folder) if a.folder.is_dir() else []
    if not dirs:
        raise UsageError(f"{a.folder}: no run with config.yaml and saved maps/ below it (was save_maps=false?)")
    for d in dirs:
        print(f"rescored: {rescore_dir(d, a.overrides, a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
