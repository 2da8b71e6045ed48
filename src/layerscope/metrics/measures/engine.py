"""Every layer of one model against every layer of another under one measure, with the paired
bootstrap interval and the permutation null (``resampling``), and layer monotonicity.

``compare`` prepares each layer once and shares the draws and permutations across all pairs; the
Gram-based measures (CKA, RSA, mutual k-NN, CKNNA) compute every replicate as a re-indexed product.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy.stats import spearmanr

from .base import Measure, Options, as_2d
from .resampling import bootstrap_draws, in_threads, one_thread, permutations, summarise

MAX_MATRIX_BYTES = 4 << 30  # the n x n matrices of every layer prepared at once


def prepare(arrays: Mapping[int, np.ndarray], measure: Measure, opts: Options) -> tuple[list[int], list[Any]]:
    """Each layer's state under ``measure`` (computed once, reused by every pair): (sorted layers, states)."""
    layers = sorted(arrays)
    return layers, [measure.prepare(arrays[k], opts) for k in layers]


def check(n: int, layers: int, measure: Measure, opts: Options) -> None:
    """Raise ValueError when ``layers`` layers of n images cannot be compared under ``measure``."""
    measure.check(n, opts)
    if measure.holds_matrices(opts) and layers * n * n * 8 > MAX_MATRIX_BYTES:
        raise ValueError(f"--measure {measure.name}: {layers} layers x {n} images need "
                         f"{layers * n * n * 8 / 2 ** 30:.1f} GiB of n x n matrices; compare fewer images "
                         "(CKA alone: --estimator minibatch)")


def compare_states(sa: Sequence[Any], sb: Sequence[Any], n: int, measure: Measure, opts: Options,
                   n_perm: int = 200, n_boot: int = 1000, seed: int = 0, threads: int | None = None
                   ) -> tuple[np.ndarray, list[list[dict[str, float]]]]:
    """Values (La, Lb) and per-pair ``summarise`` columns from prepared states of n images each (pass the
    same list twice for a model against itself: symmetric work is done once); the replicates run on
    ``threads`` Python threads (default: one per core, ``resampling.in_threads``)."""
    with one_thread():
        values = measure.points(sa, sb, opts)
    resample = measure.resamples(opts)
    null = boot = None
    if resample and n_perm:
        null = in_threads(lambda p: measure.permuted(sa, sb, p, opts), permutations(n, n_perm, seed), threads=threads)
    if resample and n_boot:
        draws, counts = bootstrap_draws(n, n_boot, seed)
        boot = in_threads(lambda d, c: measure.boot(sa, sb, d, c, opts), draws, counts, threads=threads)
    if sa is sb and measure.symmetric:  # layer j against i is layer i against j: one null, one interval
        low = np.tril_indices(len(sa), -1)
        for replicates in (null, boot):
            if replicates is not None:
                replicates[low] = replicates.transpose(1, 0, 2)[low]
    columns = [[summarise(float(values[i, j]), None if null is None else null[i, j],
                          None if boot is None else boot[i, j], measure.bounded) for j in range(len(sb))]
               for i in range(len(sa))]
    return values, columns


def compare(xs: Mapping[int, np.ndarray], ys: Mapping[int, np.ndarray], measure: Measure, opts: Options,
            n_perm: int = 200, n_boot: int = 1000, seed: int = 0
            ) -> tuple[list[int], list[int], np.ndarray, list[list[dict[str, float]]]]:
    """The measure between every layer of xs and every layer of ys, rows of the same n images.

    Args:
        xs, ys: layer -> (n, D) representations (``ys is xs``: each layer prepared once).
        n_perm: permutations of ys's images for the null (0: none).
        n_boot: bootstrap draws of images, the same for both (0: none).
        seed: draws and permutations (the same for every pair of layers).

    Returns:
        (xs's layers sorted, ys's layers sorted, values (La, Lb), per-pair ``summarise`` columns).
    """
    n = as_2d(next(iter(xs.values()))).shape[0]
    if any(as_2d(v).shape[0] != n for v in [*xs.values(), *ys.values()]):
        raise ValueError("expected the same images in every layer")
    check(n, len(xs) + (0 if ys is xs else len(ys)), measure, opts)
    la, sa = prepare(xs, measure, opts)
    lb, sb = (la, sa) if ys is xs else prepare(ys, measure, opts)
    values, columns = compare_states(sa, sb, n, measure, opts, n_perm, n_boot, seed)
    return la, lb, values, columns


def monotonicity(layers: list[int], values: np.ndarray) -> tuple[float, int]:
    """ReSi's layer monotonicity within one model: the Spearman correlation between |i - j| and the
    similarity of layers i != j (i < j and j < i both), over a (L, L) matrix in ``layers``' order.

    Returns:
        (rho, number of pairs); rho is negative when similarity falls with layer distance (NaN under 3
        layers or for constant values).
    """
    idx = np.array(layers)
    i, j = np.where(~np.eye(len(idx), dtype=bool))
    v = values[i, j]
    keep = np.isfinite(v)
    if len(idx) < 3 or keep.sum() < 3:
        return float("nan"), int(keep.sum())
    # values equal to 12 decimals are ties: the two orders of a symmetric measure's pair, computed apart, can
    # differ in the last bits, and which of them ranks first must not move rho (up to 0.1 on 5 layers)
    gap, v = np.abs(idx[i] - idx[j])[keep], np.round(v[keep], 12)
    if np.ptp(v) == 0 or np.ptp(gap) == 0:
        return float("nan"), int(keep.sum())
    return float(spearmanr(gap, v)[0]), int(keep.sum())
