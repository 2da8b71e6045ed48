"""Taking batches from DataLoader workers in a background thread, so the study never waits for the hand-over.

A batch from a worker process arrives through a pipe and is copied out of its shared-memory slot
(``data.handover``); at the end the DataLoader joins its worker processes, which on a busy machine takes
tens of milliseconds. Taken here, ahead of time, while the study runs the backbone on the batch before,
both leave the study's critical path; the study takes ready batches from an in-process queue.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

_END = object()


class Prefetched:
    """Iterate over ``batches`` (any iterator) with up to ``ahead`` of them taken in advance by a thread.

    An exception raised by ``batches`` is raised by ``next`` in the caller's thread, in its place in the
    sequence. ``close()`` (also on leaving early: Ctrl-C, an error) stops the thread at its next step.

    Args:
        batches: the iterator (e.g. a DataLoader's).
        ahead: batches held ready at most.
    """

    def __init__(self, batches: Iterator[Any], ahead: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(batches,), name="layerscope-data", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, batches: Iterator[Any]) -> None:
        try:
            for batch in batches:
                if not self._put((batch, None)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, raised there
            self._put((None, e))
            return
        finally:  # a generator's clean-up (stopping DataLoader workers) runs in the thread that drove it
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        self._put((_END, None))

    def __iter__(self) -> "Prefetched":
        return self

    def __next__(self) -> Any:
        batch, error = self._queue.get()
        if error is not None:
            self._queue.put((None, error))  # raised again by any later next(), like a spent generator's end
            raise error
        if batch is _END:
            self._queue.put((_END, None))
            raise StopIteration
        return batch

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking batches and wait (up to ``timeout`` seconds) for the thread to end: it finishes the batch
        it is taking, if any, and closes ``batches``. Safe to call twice.

        The wait matters at exit (Ctrl-C): a daemon thread still inside the DataLoader's C++ code when the
        interpreter finalises can abort the whole process (SIGABRT instead of exit 130).
        """
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
