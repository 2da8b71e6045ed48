"""Bootstrap draws, permutations and what a row reports of them (interval, null, p-value).

Every replicate re-indexes what ``prepare`` computed once per layer (a Gram matrix, an RDM's ranks, a
neighbour graph): a permutation of the second representation's images is ``M[p][:, p]``, a bootstrap
draw is a vector of counts. No feature is recomputed.
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np

CHUNK_BYTES = 64 << 20  # re-indexed matrices held at once by ``cross_permuted``
LEVEL = 0.95


_LOCK = threading.Lock()
_HELD: list = []  # the limits in force while any ``one_thread`` block runs (one entry: the outermost's)
_DEPTH = [0]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """BLAS on one thread while replicates run: on 2 busy cores a threaded OpenBLAS spun instead of working
    (measured there: a 99 x 99 SVD 90 times slower; CKA's null and bootstrap for 12 + 5 layers and 500
    images 19 s of CPU against 11 s single-threaded); ``in_threads`` runs the replicates on several Python
    threads instead, each on a single-threaded BLAS. Re-entrant from any thread: the limit is set by the
    first block to enter and restored by the last to leave (threadpoolctl's limits are process-wide, so two
    threads each restoring their own would lift it under the other). A no-op where threadpoolctl is absent."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with _LOCK:
        if _DEPTH[0] == 0:
            _HELD.append(threadpool_limits(1, user_api="blas"))
        _DEPTH[0] += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH[0] -= 1
            if _DEPTH[0] == 0:
                _HELD.pop().restore_original_limits()


def workers() -> int:
    """The Python threads ``in_threads`` uses: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def in_threads(fn: Callable[..., np.ndarray], *arrays: np.ndarray, threads: int | None = None) -> np.ndarray:
    """``fn(*arrays)`` computed on ``threads`` (default ``workers()``) contiguous slices of the arrays' rows
    (the replicates: permutations, bootstrap draws) at once, each under a single-threaded BLAS, and joined
    along the last axis. Each replicate's value is computed as it would be alone, so the result does not
    depend on the thread count; numpy and LAPACK release the GIL in the products and decompositions that
    make up the work.

    Args:
        fn: maps row slices of ``arrays`` (R', ...) to (..., R').
        arrays: arrays of the same length R.
    """
    count = len(arrays[0])
    threads = min(workers() if threads is None else threads, count)
    with one_thread():
        if threads <= 1:
            return fn(*arrays)
        cuts = np.linspace(0, count, threads + 1).astype(int)
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(lambda s: fn(*(a[s[0]:s[1]] for a in arrays)), zip(cuts[:-1], cuts[1:])))
    return np.concatenate(parts, axis=-1)


def permutations(n: int, count: int, seed: int = 0) -> np.ndarray:
    """(count, n) independent uniform permutations of range(n), seeded."""
    rng = np.random.default_rng([seed, n, 1])
    return np.argsort(rng.random((count, n)), axis=1)


def bootstrap_draws(n: int, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` resamples of n images with replacement, seeded: indices (count, n) sorted within a draw,
    and counts (count, n) float64 (how often each image was drawn)."""
    rng = np.random.default_rng([seed, n, 2])
    draws = np.sort(rng.integers(0, n, size=(count, n)), axis=1)
    counts = np.zeros((count, n))
    np.add.at(counts, (np.repeat(np.arange(count), n), draws.ravel()), 1.0)
    return draws, counts


def cross_permuted(a: np.ndarray, b: np.ndarray, perms: np.ndarray, symmetric: bool = False,
                   dtype: type = np.float64) -> np.ndarray:
    """``<a_i, b_j[p][:, p]>`` (the sum of the elementwise product) for every i, j and permutation p.

    Args:
        a: (La, n, n); b: (Lb, n, n); perms: (P, n).
        symmetric: every matrix is symmetric with a zero diagonal (Gram matrices with their diagonal
            taken out, RDM ranks): only the upper triangles are gathered and multiplied, half the work.
        dtype: the arithmetic; float32 halves the memory traffic and is exact for 0/1 matrices (k-NN graphs:
            the sums are integers far below 2^24).

    Returns:
        (La, Lb, P). One gather of each b_j per permutation, shared by every layer of a (one matrix product).
    """
    la, n = a.shape[0], a.shape[1]
    if symmetric:
        rows, cols = np.triu_indices(n, 1)
        flat = a[:, rows, cols].astype(dtype)
    else:
        rows, cols = (g.ravel() for g in np.indices((n, n)))
        flat = a.reshape(la, n * n).astype(dtype)
    b = b.astype(dtype, copy=False)
    out = np.empty((la, b.shape[0], len(perms)))
    step = max(1, CHUNK_BYTES // (np.dtype(dtype).itemsize * len(rows)))
    for s in range(0, len(perms), step):
        p = perms[s:s + step]
        where = p[:, rows] * n + p[:, cols]  # flat indices into each b_j, shared by every b_j
        for j, m in enumerate(b):
            # (P', m) @ (m, La): this orientation runs at BLAS speed; flat @ gathered.T did not
            out[:, j, s:s + len(p)] = (m.ravel().take(where) @ flat.T).T
    return out * 2 if symmetric else out


def quadratic(counts: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``w^T m w`` for every row w of counts (B, n), m (n, n) -> (B,)."""
    return np.einsum("bi,bi->b", counts @ m, counts)


NULL_AT_ONE = 1e-3  # a null mean this close to 1: calibrated is undefined


def summarise(value: float, null: np.ndarray | None, boot: np.ndarray | None, bounded: bool) -> dict[str, float]:
    """The row's columns from its point value, null values (P,) and bootstrap values (B,).

    ``ci_low``/``ci_high``: the percentile bootstrap's 95% interval; ``null_mean``, ``null_q95``: the
    permutation null's mean and 95% quantile; ``p_value``: (1 + #null >= value) / (P + 1) (one-sided, a
    Monte Carlo permutation p-value that is never 0); ``calibrated``: (value - null_mean) / (1 - null_mean)
    for measures bounded by 1 whose null mean stays below 1 - ``NULL_AT_ONE`` (a null at 1, as canonical
    correlations of fewer images than dimensions give, leaves nothing to calibrate against), NaN otherwise.
    NaN where not computed.
    """
    nan = float("nan")
    row = {"ci_low": nan, "ci_high": nan, "null_mean": nan, "null_q95": nan, "p_value": nan, "calibrated": nan}
    if boot is not None and len(boot):
        finite = boot[np.isfinite(boot)]
        if len(finite):
            tail = (1 - LEVEL) / 2 * 100
            row["ci_low"], row["ci_high"] = (float(v) for v in np.percentile(finite, [tail, 100 - tail]))
    if null is not None and len(null) and np.isfinite(value):
        finite = null[np.isfinite(null)]
        if len(finite):
            row["null_mean"] = float(finite.mean())
            row["null_q95"] = float(np.quantile(finite, LEVEL))
            # a tolerance so that a null value equal to the point value up to rounding counts as reaching it
            row["p_value"] = float((1 + np.sum(finite >= value - 1e-12)) / (len(finite) + 1))
            if bounded and row["null_mean"] < 1 - NULL_AT_ONE:
                row["calibrated"] = (value - row["null_mean"]) / (1 - row["null_mean"])
    return row
