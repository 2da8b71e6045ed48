"""Running small-tensor work on one intra-op thread.

Scoring works on small tensors (a layer's maps on their grid, one image's mask): splitting each op
over OpenMP threads costs more than the op, and every op stalls while another thread (the study's
background writer, another process) holds a core. Measured on 2 loaded cores: an image's rows 4x
slower with 2 threads than with 1, ``cells_from_mask`` 12x. The backbone keeps every thread.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

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
