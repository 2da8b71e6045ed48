"""Writing an image's saved maps and grid picture off the critical path, then marking it done.

A study scores image ``i + 1`` (and runs the backbone on the next batch) while a worker thread
compresses image ``i``'s ``.npz`` and encodes its PNG; zlib and PIL release the GIL while they work.
With ``threads`` > 1 (a many-core machine feeding a GPU) several images are written at once by a pool,
and one thread marks them done in submission order.

Bookkeeping, and why it stays correct when a run is interrupted:

- ``results.csv`` rows are appended by the study, synchronously, *before* the image is handed here.
- The worker writes the image's files (each to a temporary name, then renamed), and only after all
  of them are written appends the image's id to ``done.txt`` (and flushes it). The marking thread
  takes images in submission order (waiting for each image's writes), so ``done.txt`` stays in run order.
- So every id in ``done.txt`` has its rows and its complete files. An image whose rows are in
  ``results.csv`` but whose id is not in ``done.txt`` (files not yet written) is redone on resume,
  its rows dropped first (``results.rundir.previous_progress``), as for an image cut off mid-scoring.
- ``close()`` drains the queue, also when the study is leaving on an exception or Ctrl-C: nothing
  submitted is lost. The worker is not a daemon thread, so even a second Ctrl-C during ``close()``
  lets it finish the queue before the interpreter exits.
- Durability is the process-crash kind, as the synchronous run had: files are closed and renamed
  before their id is flushed to ``done.txt`` (no ``fsync``: a power cut is out of scope).

An error in the worker (a full disk, a read-only folder) is raised in the study's thread at the
next ``submit`` or at ``close``, as an ``OSError`` naming the file; the failed image and every image
after it stay out of ``done.txt``.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .maps_io import save_maps

log = logging.getLogger(__name__)

Task = tuple[Path, Callable[[], None]]  # (the file it writes, the call that writes it)


class WriteError(OSError):
    """Writing one of an image's files failed in the background; ``filename`` names the file."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class BackgroundWriter:
    """A bounded queue of images to write and one worker thread that writes them in order.

    Args:
        done_path: the run's ``done.txt``; each image's id is appended after its files are written.
        max_pending: images queued at most; ``submit`` waits beyond that (bounded memory, and the
            study cannot run ahead of the disk).
        threads: images written at once (a pool of this many threads when > 1).

    Attributes:
        busy_seconds: time the worker spent writing.
        wait_seconds: time the study's thread spent waiting in ``submit`` (queue full) and ``close``.
        images: images marked done.
    """

    def __init__(self, done_path: Path, max_pending: int = 8, threads: int = 1):
        if max_pending < 1:
            raise ValueError(f"max_pending={max_pending}: expected at least 1")
        if threads < 1:
            raise ValueError(f"threads={threads}: expected at least 1")
        self.done_path = Path(done_path)
        self.busy_seconds = self.wait_seconds = 0.0
        self.images = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._closing = threading.Event()
        self._error: WriteError | None = None
        self._raised = False
        self._closed = False
        self._done = open(self.done_path, "a")
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="layerscope-write") if threads > 1 else None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="layerscope-writer", daemon=False)
        self._thread.start()

    def submit(self, image_id: str, tasks: Sequence[Task], line: str | None = None) -> None:
        """Queue one image's files; its ``done.txt`` line is appended once they are all written.

        Args:
            image_id: the image.
            tasks: (file, call that writes it) pairs, run in order.
            line: the ``done.txt`` line (``results.rundir.done_line``); ``image_id`` alone by default.

        Raises:
            OSError: a write that failed since the last call, naming its file.
        """
        self._raise_pending()
        if self._closed:
            raise RuntimeError("BackgroundWriter.submit after close")
        t0 = time.perf_counter()
        work = self._pool.submit(self._write, list(tasks)) if self._pool is not None else list(tasks)
        self._queue.put((line if line is not None else image_id + "\n", work))  # waits while full
        self.wait_seconds += time.perf_counter() - t0

    def close(self, raise_errors: bool = True) -> None:
        """Write everything queued, mark it done, stop the worker; safe to call twice.

        Args:
            raise_errors: raise a failed write (else log it: the caller is already leaving on
                another exception, which must not be masked).

        Raises:
            OSError: a write that failed and was not raised yet, naming its file.
        """
        self._closed = True
        self._closing.set()  # set first: an interrupted close() still lets the worker drain and exit
        try:
            self._queue.put_nowait(None)  # wakes an idle worker now, not at its next poll (up to 50 ms)
        except queue.Full:
            pass  # a busy worker finds the queue empty and closing set after its last image
        if self._thread.is_alive():  # joined again if a Ctrl-C cut the first join short
            t0 = time.perf_counter()
            self._thread.join()
            self.wait_seconds += time.perf_counter() - t0
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._done.close()
        if raise_errors:
            self._raise_pending()
        elif self._error is not None and not self._raised:
            self._raised = True
            log.error("writing failed: %s", self._error)

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(raise_errors=kind is None)

    def _raise_pending(self) -> None:
        if self._error is not None and not self._raised:
            self._raised = True
            raise self._error

    def _write(self, tasks: Sequence[Task]) -> tuple[Exception | None, Path | None]:
        """Run one image's writes; (the exception and the file it was writing) or (None, None)."""
        t0 = time.perf_counter()
        path = None
        try:
            for path, write in tasks:
                write()
            path = None
        except Exception as e:  # noqa: BLE001 - any failure is the study's to report, naming the file
            return e, path
        finally:
            with self._lock:
                self.busy_seconds += time.perf_counter() - t0
        return None, None

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            if item is None:  # close(): nothing was submitted after it
                return
            line, work = item
            # a pooled image may be writing already: wait for it even after a failure (nothing is left half done)
            error, path = work.result() if isinstance(work, Future) else (None, None)
            if self._error is not None:  # after a failure: keep draining so submit never blocks, mark nothing
                continue
            if not isinstance(work, Future):
                error, path = self._write(work)
            try:
                if error is None:
                    path = self.done_path
                    self._done.write(line)  # after its files: an id in done.txt has all of them
                    self._done.flush()
                    self.images += 1
            except Exception as e:  # noqa: BLE001
                error = e
            if error is not None:
                errno = error.errno if isinstance(error, OSError) else None
                reason = (error.strerror if isinstance(error, OSError) and error.strerror
                          else f"{type(error).__name__}: {error}")
                self._error = WriteError(errno, reason, str(path if path is not None else self.done_path))
                self._error.__cause__ = error


def maps_task(path: Path, image: Callable[[], np.ndarray], mask: np.ndarray | None, maps: Mapping[int, np.ndarray],
              names: Mapping[int, list[str]], info: dict, valid: np.ndarray | None = None,
              columns: Mapping[int, Mapping[str, np.ndarray]] | None = None) -> Task:
    """The task that saves an image's maps (``maps_io.save_maps``).

    Args:
        image: gives the image, (H, W, 3) uint8: called in the writer's thread, so a conversion is done there.
        maps: layer -> (K, h, w), not modified after this call.
    """
    return path, lambda: save_maps(path, image(), mask, maps, names, info, valid=valid, columns=columns)


def grid_task(path: Path, image: Callable[[], np.ndarray], mask: np.ndarray | None, maps: Mapping[int, np.ndarray],
              names: Mapping[int, list[str]], title: str, draw: Callable[..., Any]) -> Task:
    """The task that draws an image's layer x map grid picture with ``draw`` (``figures.grid.layer_head_grid``,
    handed in: the run folder's writer does not import the figures).

    Args:
        image: as for ``maps_task``.
        maps: layer -> (K, h, w).
    """
    # a NaN/inf map (its rows are empty) is drawn blank: it has no colour to give
    shown = {layer: m if np.isfinite(m).all() else np.where(np.isfinite(m), m, 0).astype(m.dtype)
             for layer, m in maps.items()}
    return path, lambda: draw(image(), mask, shown, names, title, path)
