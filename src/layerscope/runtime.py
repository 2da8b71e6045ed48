"""Where and how a run runs: its device, the cores it may use, intra-op threads, freed memory.

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


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when visible), ``cpu`` or ``cuda`` (``config.schema.Device``); ValueError naming the option
    otherwise."""
    from .config.schema import check_choice  # here: the thread helpers below import nothing of the config

    check_choice("device", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda: no CUDA device is visible; use device=cpu or device=auto")
    return torch.device(name)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, else the machine's count)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def score_threads() -> int:
    """Grids a study scores at once (``scoring.batch_image_rows``): one per usable core, at most 8."""
    return max(1, min(8, usable_cores()))


def writer_threads() -> int:
    """Images written at once by the study's background writer: one, or a few on a many-core machine (a GPU
    study outruns one thread compressing saved maps)."""
    return max(1, min(4, usable_cores() // 4))


def reuse_freed_memory(threshold: int = 32 * 2 ** 20, trim: int = 256 * 2 ** 20) -> bool:
    """Let glibc keep freed blocks below ``threshold`` bytes for reuse instead of unmapping them.

    Scoring makes and frees many 1-10 MB tensors per batch; by default each is a fresh ``mmap`` whose pages
    the kernel faults in and zeroes on first touch, a third of the time of an element-wise op of that size
    (measured: scoring 25 % faster). The process keeps up to ``trim`` bytes of freed memory mapped. Linux
    with glibc only; elsewhere nothing changes.

    Returns:
        Whether the setting was applied.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h> constants
    return bool(mallopt(m_mmap_threshold, threshold)) and bool(mallopt(m_trim_threshold, trim))
