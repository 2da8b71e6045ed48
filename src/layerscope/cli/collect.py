"""Merge a multirun folder's job results into one table, with each job's overrides as columns.

    layerscope-collect MULTIRUN_DIR [--out all_results.csv]

Reports jobs that failed (no ``results.csv``, or an empty one) and jobs Hydra planned but
never started (fewer job folders than ``multirun.yaml`` lists), and exits 1 when any is
missing, after writing what there is (``results.jobs``, which ``layerscope-report`` and
``layerscope-view`` also show).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from ..results import layout
from ..results.jobs import job_state, planned_jobs
from ..results.rundir import job_overrides, write_atomic
from ..results.table import read_table
from .errors import Parser, UsageError, command


def collect(sweep_dir: Path, name: str = layout.RESULTS) -> tuple[pd.DataFrame, list[str]]:
    """The merged table (``job`` column + one column per override key) and a list of problems."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such folder")
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / layout.HYDRA).is_dir()),
                  key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir}: no job folders (expected a Hydra multirun folder with 0/, 1/, ...)")
    frames, problems = [], []
    for job in jobs:
        results = job / name
        overrides = " ".join(f"{k}={v}" for k, v in job_overrides(job).items())
        state, why = job_state(job, name)
        if state == "failed":
            problems.append(f"job {job.name} failed ({overrides}): {why}")
            continue
        if not results.exists() or results.stat().st_size == 0:
            problems.append(f"job {job.name}: failed or unfinished, no {name} ({overrides})")
            continue
        df = read_table(results)
        if state == "unfinished":
            problems.append(f"job {job.name}: unfinished (no {layout.SUMMARY}); its {len(df)} rows are merged")
        if df.empty:
            problems.append(f"job {job.name}: {name} has no rows")
            continue
        for key, value in job_overrides(job).items():
            df.insert(0, f"override.{key}", value)
        df.insert(0, "job", job.name)
        frames.append(df)
    planned = planned_jobs(sweep_dir)
    if planned is not None and planned > len(jobs):
        problems.append(f"{planned - len(jobs)} of {planned} planned jobs never started")
    merged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return merged, problems


@command(errors=(FileNotFoundError,), write="")
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="layerscope-collect", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a Hydra multirun folder")
    p.add_argument("--out", default=layout.ALL_RESULTS, help="file written in the folder")
    p.add_argument("--results", default=layout.RESULTS, help="per-job file name to merge")
    a = p.parse_args(argv)
    if Path(a.out).name != a.out:
        raise UsageError(f"--out {a.out}: expected a file name (it is written inside the multirun folder)")
    merged, problems = collect(a.folder, a.results)
    if not merged.empty:
        write_atomic(a.folder / a.out, merged.to_csv(index=False))  # a cut leaves the earlier table or this one
        print(f"merged {merged['job'].nunique()} jobs, {len(merged)} rows -> {a.folder / a.out}")
    for problem in problems:
        print(f"missing: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
