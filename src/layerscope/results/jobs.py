"""Which runs of a run or sweep folder finished, failed or stopped, and the sweep jobs never started.

Read by ``layerscope-collect``, ``layerscope-report`` (a warning line) and ``layerscope-view`` (the runs table).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from . import layout


def planned_jobs(sweep_dir: Path) -> int | None:
    """How many jobs Hydra's sweep planned, from the product of ``multirun.yaml``'s sweep lists."""
    path = sweep_dir / layout.MULTIRUN
    if not path.exists():
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.load(path)
    overrides = list(cfg.hydra.overrides.task)
    params = cfg.hydra.sweeper.get("params") or {}
    overrides += [f"{k}={v}" for k, v in params.items()]
    n = 1
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_sweep_override():
            n *= len(list(o.sweep_iterator()))
    return n


def job_state(job: Path, name: str = layout.RESULTS) -> tuple[str, str]:
    """Whether the run in folder ``job`` finished: (``finished`` | ``failed`` | ``unfinished``, why).

    ``failed``: the job wrote ``failed.txt`` (its one-line error is the why). ``unfinished``: no rows
    yet, or no ``run_summary.json`` (killed, or still running).
    """
    failed = Path(job) / layout.FAILED
    if failed.is_file():
        return "failed", failed.read_text(errors="replace").strip() or layout.FAILED
    results = Path(job) / name
    if not results.is_file() or results.stat().st_size == 0:
        return "unfinished", f"no {name} (stopped before its first image, or still running)"
    if not layout.is_complete(job):
        return "unfinished", f"no {layout.SUMMARY} (stopped, or still running): only its finished images count"
    return "finished", ""


def job_states(folder: Path, name: str = layout.RESULTS) -> tuple[list[tuple[str, str, str]], int]:
    """Every run at or below ``folder`` and how it ended, and the sweep's planned jobs never started.

    A run is a folder holding ``name``, or a Hydra job folder (``.hydra/``) or one with ``failed.txt``
    (a job that failed before its first row).

    Returns:
        ([(job, state, why)], never_started): job is the folder relative to ``folder`` (``.`` itself),
        sorted as Hydra numbers jobs; state and why as ``job_state``.
    """
    folder = Path(folder)
    found = set(layout.run_dirs(folder, name)) | set(layout.run_dirs(folder, layout.FAILED))
    found |= {p.parent for p in folder.rglob(layout.HYDRA) if p.is_dir()} if folder.is_dir() else set()
    jobs = sorted(found, key=lambda p: _order(p.relative_to(folder)))
    states = [(str(p.relative_to(folder)) if p != folder else ".", *job_state(p, name)) for p in jobs]
    try:
        planned = planned_jobs(folder)
    except Exception:  # noqa: BLE001 - a damaged multirun.yaml: the jobs on disk are still listed
        planned = None
    started = sum(1 for p in jobs if p.parent == folder)
    return states, max(0, planned - started) if planned is not None else 0


def job_problems(folder: Path, name: str = layout.RESULTS) -> list[str]:
    """``job_states`` as lines, one per job that failed or did not finish (and one for jobs never started)."""
    states, never = job_states(folder, name)
    lines = [f"{'run' if job == '.' else 'job ' + job} {state}: {why}" for job, state, why in states
             if state != "finished"]
    return lines + ([f"{never} planned job(s) never started"] if never else [])


def _order(rel: Path) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in rel.parts)
