"""Every layer of one model against every layer of another under one measure, with the paired
bootstrap interval and the permutation null (``resampling``), and layer monotonicity.

``compare`` prepares each layer once and shares the draws and permutations across all pairs; the
Gram-based measures (CKA, RSA, mutual k-NN, CKNNA) compute every replicate as a re-indexed product.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy.stats import spearmanr

from .base import Measure, Options, as_2d
from .resampling import bootstrap_draws, permutations, summarise

MAX_MATRIX_BYTES = 4 << 30  # the n x n matrices of every layer prepared at once


def compare(xs: Mapping[int, np.ndarray], ys: Mapping[int, np.ndarray], measure: Measure, opts: Options,
            n_perm: int = 200, n_boot: int = 1000, seed: int = 0, same: bool = False
            ) -> tuple[list[int], list[int], np.ndarray, list[list[dict[str, float]]]]:
    """The measure between every layer of xs and every layer of ys, rows of the same n images.

    Args:
        xs, ys: layer -> (n, D) representations (ys may be xs: pass ``same=True`` to prepare once).
        n_perm: permutations of ys's images for the null (0: none).
        n_boot: bootstrap draws of images, the same for both (0: none).
        seed: draws and permutations (the same for every pair of layers).

    Returns:
        (xs's layers sorted, ys's layers sorted, values (La, Lb), per-pair ``summarise`` columns).
    """
    la, lb = sorted(xs), sorted(ys)
    n = as_2d(xs[la[0]]).shape[0]
    if any(as_2d(v).shape[0] != n for v in [*xs.values(), *ys.values()]):
        raise ValueError("expected the same images in every layer")
    measure.check(n, opts)
    layers = len(la) + (0 if same else len(lb))
    if measure.name != "cka" or opts.estimator != "minibatch":
        if layers * n * n * 8 > MAX_MATRIX_BYTES and measure.name in ("cka", "rsa", "mknn", "cknna"):
            raise ValueError(f"--measure {measure.name}: {layers} layers x {n} images need "
                             f"{layers * n * n * 8 / 2 ** 30:.1f} GiB of n x n matrices; compare fewer images "
                             "or layers (CKA: --estimator minibatch)")
    sa = [measure.prepare(xs[k], opts) for k in la]
    sb = sa if same else [measure.prepare(ys[k], opts) for k in lb]
    values = measure.points(sa, sb, opts)
    resample = not (measure.name == "cka" and opts.estimator == "minibatch")
    null = measure.permuted(sa, sb, permutations(n, n_perm, seed), opts) if resample and n_perm else None
    boot = None
    if resample and n_boot:
        draws, counts = bootstrap_draws(n, n_boot, seed)
        boot = measure.boot(sa, sb, draws, counts, opts)
    columns = [[summarise(float(values[i, j]), None if null is None else null[i, j],
                          None if boot is None else boot[i, j], measure.bounded) for j in range(len(lb))]
               for i in range(len(la))]
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
    gap, v = np.abs(idx[i] - idx[j])[keep], v[keep]
    if np.ptp(v) == 0 or np.ptp(gap) == 0:
        return float("nan"), int(keep.sum())
    return float(spearmanr(gap, v)[0]), int(keep.sum())
