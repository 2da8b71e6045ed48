"""Resume bookkeeping of a run folder: what an earlier run left, and the marker of a finished run."""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import IO, Any, Iterable

from omegaconf import DictConfig, OmegaConf

from .layout import (CONFIG, DONE, HYDRA, HYDRA_OVERRIDES, LOCK, MAPS, RESULTS, SUMMARY, done_line,  # noqa: F401
                     is_complete, map_file, read_done)
from .table import COLUMNS, read_rows

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


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a cut leaves the old file or the new."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:  # a full disk, Ctrl-C: no half-written temporary left beside the file
        tmp.unlink(missing_ok=True)
        raise


def previous_progress(cfg: DictConfig, out_dir: Path) -> dict[str, int] | None:
    """What an earlier run left in ``out_dir``: the finished images (id -> rows) to skip, or None if all is done.

    A finished or interrupted run of the same config is resumed (``resume=true``). Whatever was
    cut (a results.csv cut inside a row, a done.txt line cut, an image listed as done whose rows
    are not all there) is dropped and that image is redone, so the final table equals a clean run's.
    With ``save_maps``, so is an image whose saved-maps file is missing: deleting a damaged map file
    and rerunning rebuilds it, with the rows a clean run writes.

    Raises:
        ValueError: the folder holds results of another config, or ``resume=false`` and it
            holds results; nothing is overwritten.
    """
    import csv
    import io

    out_dir = Path(out_dir)
    results = out_dir / RESULTS
    if not results.exists() or results.stat().st_size == 0:
        return {}
    saved = out_dir / CONFIG
    same = saved.exists() and comparable(OmegaConf.load(saved)) == comparable(cfg)
    if not same:
        raise ValueError(f"{out_dir} holds results of another configuration; choose another output folder "
                         "(hydra.run.dir=... or hydra.sweep.dir=...); nothing was changed")
    if not cfg.resume:
        raise ValueError(f"{out_dir} already holds results and resume=false; choose another output folder")
    header, rows, intact = read_rows(results)
    if header and header != list(COLUMNS):
        raise ValueError(f"{results}: not a results table of this version of layerscope (its columns differ); "
                         "choose another output folder; nothing was changed")
    listed = read_done(out_dir)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[0]] = counts.get(r[0], 0) + 1
    done = {image: counts[image] for image, n in listed.items()
            if image in counts and (n is None or counts[image] == n)}
    unmapped = without_maps(out_dir, done) if cfg.save_maps else []
    if unmapped:
        log.warning("%s: %d finished images have no saved maps (%s%s); redoing them", out_dir, len(unmapped),
                    ", ".join(unmapped[:3]), ", ..." if len(unmapped) > 3 else "")
        lost = set(unmapped)
        done = {image: n for image, n in done.items() if image not in lost}
    if is_complete(out_dir) and intact and len(done) == len(listed):
        return None
    if is_complete(out_dir):
        if len(done) + len(unmapped) != len(listed) or not intact:
            log.warning("%s was marked finished but rows are missing; redoing the images they belong to", out_dir)
        (out_dir / SUMMARY).unlink()
    kept = [r for r in rows if r[0] in done]
    if not intact or len(kept) != len(rows) or not header:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(kept)
        write_atomic(results, buffer.getvalue())  # rows of images cut off half-way are dropped, then redone
    if len(done) != len(listed) or not (out_dir / DONE).exists():
        write_atomic(out_dir / DONE, "".join(done_line(image, n) for image, n in done.items()))
    log.info("resuming %s: %d images already done", out_dir, len(done))
    return done


def without_maps(out_dir: Path, images: Iterable[str]) -> list[str]:
    """The images among ``images`` whose saved-maps file is missing (deleted, say, after it was found damaged)."""
    folder = Path(out_dir) / MAPS
    present = {e.name for e in os.scandir(folder)} if folder.is_dir() else set()
    return [image for image in images if map_file(out_dir, image).name not in present]


def wait_for_lock(handle: IO, waiting: str) -> None:
    """Take an exclusive advisory ``flock`` on the open file ``handle``; when another process holds it, print
    ``waiting`` on stderr once and wait (the kernel releases a lock however its holder ends)."""
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(waiting, file=sys.stderr)
        fcntl.flock(handle, fcntl.LOCK_EX)


class RunLock:
    """Hold a run folder for one run at a time (``<run>/.lock``, an advisory ``flock``).

    The kernel releases the lock when the holder ends, however it ends (Ctrl-C, kill -9, a
    crash), so a stale lock from a killed run never blocks the next one.

    Raises:
        ValueError: on enter, when another live run holds the folder; nothing is changed.
    """

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir)
        self._file = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.dir / LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ValueError(f"{self.dir} is in use by another run ({holder}); wait for it to end or choose another "
                             "output folder (hydra.run.dir=...); nothing was changed") from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def job_overrides(job_dir: Path) -> dict[str, str]:
    """``key=value`` overrides of one job, from Hydra's ``.hydra/overrides.yaml``."""
    path = job_dir / HYDRA / HYDRA_OVERRIDES
    if not path.exists():
        return {}
    out = {}
    for item in OmegaConf.to_container(OmegaConf.load(path)):
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out
