"""Resume bookkeeping of a run folder: what an earlier run left, and the marker of a finished run."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .layout import CONFIG, DONE, RESULTS, SUMMARY

log = logging.getLogger(__name__)

# Options that cannot change a single result row: a run may resume with other values.
NOT_RESULTS = ("progress", "resume", "num_workers", "batch_size", "cache", "logger", "device", "on_bad_image",
               "figures", "dataset_metrics")


def comparable(cfg: DictConfig | dict) -> dict:
    """The part of a config that decides the results (see ``NOT_RESULTS``)."""
    c = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    for key in NOT_RESULTS:
        c.pop(key, None)
    return c


def write_summary(out_dir: Path, summary: dict[str, Any]) -> None:
    """``run_summary.json``, written last (atomically): its presence marks a finished run."""
    tmp = Path(out_dir) / f"{SUMMARY}.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(Path(out_dir) / SUMMARY)


def is_complete(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a finished run."""
    return (Path(out_dir) / SUMMARY).exists()


def read_done(out_dir: Path) -> list[str]:
    """Image ids listed as finished, in order (a last line cut mid-write is ignored)."""
    path = Path(out_dir) / DONE
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    return [line for line in lines[:-1] if line]  # the part after the last newline was never finished


def previous_progress(cfg: DictConfig, out_dir: Path) -> set[str] | None:
    """What an earlier run left in ``out_dir``: the finished image ids to skip, or None if it is all done.

    A finished or interrupted run of the same config is resumed (``resume=true``): images
    already scored are kept and skipped, and rows of an image cut off half-way are dropped.

    Raises:
        ValueError: the folder holds results of another config, or ``resume=false`` and it
            holds results; nothing is overwritten.
    """
    out_dir = Path(out_dir)
    results = out_dir / RESULTS
    if not results.exists() or results.stat().st_size == 0:
        return set()
    saved = out_dir / CONFIG
    same = saved.exists() and comparable(OmegaConf.load(saved)) == comparable(cfg)
    if not same:
        raise ValueError(f"{out_dir} holds results of another configuration; choose another output folder "
                         "(hydra.run.dir=... or hydra.sweep.dir=...); nothing was changed")
    if not cfg.resume:
        raise ValueError(f"{out_dir} already holds results and resume=false; choose another output folder")
    if is_complete(out_dir):
        return None
    done = set(read_done(out_dir))
    import pandas as pd

    rows = pd.read_csv(results, dtype=str, keep_default_na=False)
    kept = rows[rows["image"].isin(done)]
    if len(kept) != len(rows):  # drop rows of an image whose writing was cut off
        tmp = results.with_suffix(".tmp")
        kept.to_csv(tmp, index=False)
        tmp.replace(results)
    log.info("resuming %s: %d images already done", out_dir, len(done))
    return done
