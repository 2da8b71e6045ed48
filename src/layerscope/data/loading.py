"""The DataLoader that prepares a run's images: its worker processes, and how their batches reach the study.

Workers prepare images (``handover.Prepared``) and hand each batch over through shared memory
(``handover.SlotRing``); where workers cannot run or share memory, the study's own process prepares them.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Iterator

import torch

from ..config.schema import StudyConfig
from ..runtime import usable_cores
from .base import Dataset
from .handover import Prepared, SlotRing, no_leftover_segments, pack, unpack

log = logging.getLogger(__name__)


def _quiet_hang_ups(worker_id: int) -> None:
    """In a DataLoader worker: a batch handed over while the study stops (Ctrl-C, an error) loses its reader
    mid-transfer, and multiprocessing's handle-sharing thread would print that broken connection as a
    traceback on the run's stderr. The study reports why it stopped; other errors still print."""
    import sys

    default = sys.excepthook

    def hook(kind, value, tb) -> None:
        if not issubclass(kind, (EOFError, ConnectionError)):
            default(kind, value, tb)

    sys.excepthook = hook


def _from_workers(batches: Iterator[Any], ring: SlotRing | None) -> Iterator[Any]:
    """The workers' batches, unpacked; closing it (``Prefetched`` does, from its own thread) stops the worker
    processes there and then, so that no thread is still inside the DataLoader when the interpreter exits."""
    try:
        for batch in batches:
            yield unpack(batch, ring=ring)
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # torch's own clean-up, else run when collected
        if shutdown is not None:
            shutdown()


def image_batches(cfg: StudyConfig, dataset: Dataset, size: int, device: torch.device) -> tuple[Any, int]:
    """An iterator over batches of prepared images, and the DataLoader workers preparing them.

    Workers are forked (on Linux; no pickling, also inside a joblib sweep job) when the iterator is made,
    before the study starts its writer thread. With ``num_workers=auto``, a machine where they cannot start
    or cannot share memory with this process (a small or full ``/dev/shm``, a file-size limit) prepares
    the images in this process instead, with a warning; an explicit ``num_workers`` stops with one line.

    Raises:
        ValueError: an explicit ``num_workers`` whose workers cannot start.
    """
    import multiprocessing
    import sys

    batch_size = int(cfg.batch_size)
    workers = loader_workers(cfg.num_workers, len(dataset), batch_size)
    prefetch = 2  # the DataLoader's prefetch_factor: batches in flight per worker

    def loader(n: int, ring: SlotRing | None = None):
        context = multiprocessing.get_context("fork") if n and sys.platform.startswith("linux") else None
        return torch.utils.data.DataLoader(Prepared(dataset, size), batch_size=batch_size, num_workers=n,
                                           collate_fn=functools.partial(pack, ring=ring),
                                           pin_memory=device.type == "cuda", multiprocessing_context=context,
                                           worker_init_fn=_quiet_hang_ups if n else None,
                                           prefetch_factor=prefetch if n else None)

    if not workers:
        return map(unpack, loader(0)), 0
    try:
        # the workers write batches into shared memory allocated here, before they are forked; where it cannot
        # hold them all (a small /dev/shm), each batch crosses in blocks of its own, as big as one batch
        try:
            ring = SlotRing(batch_size, size, slots=prefetch * workers + 2)
        except Exception as e:  # noqa: BLE001 - the same failures as below, for a larger block
            log.info("batches cross from the DataLoader workers one shared block at a time (%s)",
                     " ".join(str(e).split())[:200] or type(e).__name__)
            ring = None
            with no_leftover_segments():  # where it cannot be sized either, no empty file is left in /dev/shm
                torch.empty(batch_size * 3 * size * size).share_memory_()
        return _from_workers(iter(loader(workers, ring)), ring), workers
    except Exception as e:  # noqa: BLE001 - any failure to start workers or share memory has the same remedy
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        if cfg.num_workers != "auto":
            raise ValueError(f"num_workers={cfg.num_workers}: cannot start DataLoader worker processes "
                             f"({reason}); use num_workers=0") from None
        log.warning("num_workers=auto: DataLoader workers cannot run here (%s); preparing images in this process",
                    reason)
        return map(unpack, loader(0)), 0


def loader_workers(value: Any, images: int, batch_size: int) -> int:
    """``num_workers``: an int >= 0, or ``auto``: DataLoader worker processes preparing images (decoding,
    resizing, painting synthetic defects) beside the model when there is more than one core: one per core
    but one, at most 4, and no more than there are batches; 0 (in the study's process) on a single core.

    Raises:
        ValueError: naming the option and what it accepts.
    """
    if value == "auto":
        import multiprocessing

        if multiprocessing.current_process().name != "MainProcess":  # a launcher's worker (joblib's loky)
            return 0  # cannot start DataLoader processes of its own
        batches = -(-images // max(batch_size, 1))
        return max(0, min(usable_cores() - 1, 4, batches))
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"num_workers={value}: expected an int >= 0 or auto")
    return value
