"""Running small-tensor work on one intra-op thread.

Scoring works on small tensors (a layer's maps on their grid, one image's mask): splitting each op
over OpenMP threads costs more than the op, and every op stalls while another thread (the study's
background writer, another process) holds a core. Measured on 2 loaded cores: an image's rows 4x
slower with 2 threads than with 1, ``cells_from_mask`` 12x. The backbone keeps every thread.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread inside the block, the previous count restored after (also on an exception)."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def serial(fn: F) -> F:
    """Decorate ``fn`` to run under ``one_thread``."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_thread():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@functools.lru_cache(maxsize=None)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="layerscope-score")


def map_threads(fn: Callable[[Any], Any], items: Sequence[Any], threads: int) -> list[Any]:
    """``[fn(item) for item in items]`` on up to ``threads`` threads at once, each op on one intra-op thread.

    The threads are kept for the next call. They start, and make their first torch op, inside
    ``one_thread``: a thread takes the intra-op thread count in force at its first op and keeps it, so these
    keep one whatever the caller sets later. An exception of ``fn`` is raised here.
    """
    with one_thread():
        if threads <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        return list(_pool(threads).map(fn, items))
