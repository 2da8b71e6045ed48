"""Representation similarity between layers and models: centered kernel alignment (CKA).

CKA (Kornblith et al. 2019) compares two sets of representations of the same n images through their
n x n Gram matrices K and L: ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``. HSIC here is the
unbiased estimator HSIC_1 of Song et al. (2012), for two reasons: it is what the minibatch estimator
averages (Nguyen et al. 2021), so both estimators measure the same quantity; and the biased estimator
``tr(K H L H)`` inflates CKA when n is small against the feature dimension (at n = 50 and D = 384 two
independent random representations score far above 0), which is the regime of a small study.

- ``full``: HSIC_1 over all n images at once (Gram matrices of every layer held in memory);
- ``minibatch`` (Nguyen et al. 2021): images shuffled (seeded) into minibatches; CKA is the mean over
  minibatches of HSIC_1(K_i, L_i) over the root of the product of the means of HSIC_1(K_i, K_i) and
  HSIC_1(L_i, L_i). Memory is that of one minibatch.

Kernels: ``linear`` (K = X X^T) and ``rbf`` (K_ij = exp(-|x_i - x_j|^2 / (2 s)), s the median of the
squared distances between distinct images: the median heuristic, fixed per layer from at most
``BANDWIDTH_SAMPLE`` images so both estimators use the same kernel). numpy only.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

KERNELS = ("linear", "rbf")
RBF_MEDIANS = ("distinct", "all")
ESTIMATORS = ("auto", "full", "minibatch")
MIN_IMAGES = 4  # HSIC_1 divides by n (n - 3)
BANDWIDTH_SAMPLE = 2048  # images used for the RBF median heuristic
MAX_GRAM_BYTES = 2 << 30  # auto: full batch while the Gram matrices of both models fit in this


def _as_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected representations (n, D), got {x.shape}")
    return x


def _squared_distances(x: np.ndarray) -> np.ndarray:
    sq = (x * x).sum(1)
    return np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)


def rbf_bandwidth(x: np.ndarray, seed: int = 0, sigma: float = 1.0, median: str = "distinct") -> float:
    """The median heuristic: ``sigma**2`` times the median squared Euclidean distance, (n, D) -> s.

    Args:
        sigma: the kernel width as a multiple of the median distance (Kornblith et al. 2019's ``threshold``).
        median: ``distinct`` (the median over pairs of distinct images, Gretton et al. 2005's heuristic,
            this project's default) or ``all`` (over all n^2 entries, the zero diagonal included, as
            Kornblith et al. 2019's reference code and ckatorch compute it).

    At most ``BANDWIDTH_SAMPLE`` images (a seeded sample) are used.
    """
    if median not in RBF_MEDIANS:
        raise ValueError(f"median={median!r}: expected one of {', '.join(RBF_MEDIANS)}")
    if not sigma > 0:
        raise ValueError(f"sigma={sigma!r}: expected a number > 0 (a multiple of the median distance)")
    x = _as_2d(x)
    if x.shape[0] > BANDWIDTH_SAMPLE:
        x = x[np.random.default_rng(seed).choice(x.shape[0], BANDWIDTH_SAMPLE, replace=False)]
    d = _squared_distances(x)
    s = float(np.median(d[~np.eye(len(d), dtype=bool)] if median == "distinct" else d))
    s = s if s > 0 else 1.0  # identical rows: any bandwidth gives the same constant kernel
    return s if sigma == 1.0 else float(sigma) ** 2 * s


def gram(x: np.ndarray, kernel: str = "linear", bandwidth: float | None = None) -> np.ndarray:
    """The Gram matrix of representations x (n, D) -> (n, n) float64.

    Args:
        kernel: ``linear`` or ``rbf``.
        bandwidth: the RBF's s (``rbf_bandwidth``); None computes it from ``x``.
    """
    x = _as_2d(x)
    if kernel == "linear":
        return x @ x.T
    if kernel == "rbf":
        s = rbf_bandwidth(x) if bandwidth is None else float(bandwidth)
        return np.exp(-_squared_distances(x) / (2 * s))
    raise ValueError(f"kernel={kernel!r}: expected one of {', '.join(KERNELS)}")


class _Stats:
    """What HSIC_1 needs of one Gram matrix: the matrix with a zero diagonal, its row sums, its sum."""

    def __init__(self, k: np.ndarray):
        n = k.shape[0]
        if n < MIN_IMAGES:
            raise ValueError(f"unbiased HSIC needs at least {MIN_IMAGES} images, got {n}")
        k = k.copy()
        k[np.diag_indices(n)] = 0.0
        self.n, self.k, self.rows, self.total = n, k, k.sum(1), float(k.sum())


def _hsic(a: _Stats, b: _Stats, inner: float) -> float:
    """HSIC_1 (Song et al. 2012, eq. 5) from the statistics of K and L and ``inner`` = tr(K~ L~)."""
    n = a.n
    return (inner + a.total * b.total / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(a.rows @ b.rows)) / (n * (n - 3))


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """The unbiased HSIC_1 of two (n, n) Gram matrices (n >= 4)."""
    a, b = _Stats(np.asarray(k, np.float64)), _Stats(np.asarray(l, np.float64))
    return _hsic(a, b, float((a.k * b.k).sum()))


def cka(x: np.ndarray, y: np.ndarray, kernel: str = "linear") -> float:
    """CKA of two representations of the same n images, full batch: x (n, D1), y (n, D2) -> float.

    NaN when a representation is constant over the images (its HSIC is not positive).
    """
    x, y = _as_2d(x), _as_2d(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"expected the same images in both, got {x.shape[0]} and {y.shape[0]} rows")
    return float(cka_matrix({0: x}, {0: y}, kernel, "full")[0][0, 0])


def _ratio(xy: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    denom = np.sqrt(np.clip(xx, 0, None)[:, None] * np.clip(yy, 0, None)[None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, xy / np.where(denom > 0, denom, 1.0), np.nan)


def _pair_hsic(xs: list[_Stats], ys: list[_Stats]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HSIC_1 of every (x layer, y layer) pair and of each layer with itself."""
    def inner(a: _Stats, b: _Stats) -> float:
        return float(np.vdot(a.k, b.k))  # tr(K~ L~) of symmetric matrices, no n x n temporary

    xy = np.array([[_hsic(a, b, inner(a, b)) for b in ys] for a in xs])
    xx = np.array([_hsic(a, a, inner(a, a)) for a in xs])
    yy = np.array([_hsic(b, b, inner(b, b)) for b in ys])
    return xy, xx, yy


def choose_estimator(n: int, layers: int, estimator: str = "auto", max_bytes: int = MAX_GRAM_BYTES) -> str:
    """``full`` while ``layers`` Gram matrices of n x n float64 (and one copy) fit ``max_bytes``, else ``minibatch``."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}: expected one of {', '.join(ESTIMATORS)}")
    if estimator != "auto":
        return estimator
    return "full" if (layers + 1) * n * n * 8 <= max_bytes else "minibatch"


def cka_matrix(xs: Mapping[int, np.ndarray], ys: Mapping[int, np.ndarray], kernel: str = "linear",
               estimator: str = "auto", batch_size: int = 256, seed: int = 0,
               max_bytes: int = MAX_GRAM_BYTES, rbf_sigma: float = 1.0,
               rbf_median: str = "distinct") -> tuple[np.ndarray, str]:
    """CKA between every layer of one model and every layer of another, on the same n images.

    Args:
        xs: layer -> (n, D) representations of the first model (rows: the same images, same order as ys).
        ys: layer -> (n, D') of the second.
        kernel: ``linear`` or ``rbf``.
        estimator: ``full``, ``minibatch`` or ``auto`` (full while the Gram matrices fit ``max_bytes``).
        batch_size: images per minibatch (the last ones may hold up to twice as many: no minibatch is
            smaller than ``batch_size``, none below 4 images).
        seed: minibatch shuffling and RBF bandwidth sampling.
        rbf_sigma, rbf_median: the RBF width (see ``rbf_bandwidth``).

    Returns:
        (matrix (len(xs), len(ys)) in the layers' sorted order, the estimator used).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: expected one of {', '.join(KERNELS)}")
    xl, yl = [_as_2d(xs[k]) for k in sorted(xs)], [_as_2d(ys[k]) for k in sorted(ys)]
    n = xl[0].shape[0]
    if any(a.shape[0] != n for a in xl + yl):
        raise ValueError(f"expected the same images in every layer, got {sorted({a.shape[0] for a in xl + yl})} rows")
    if n < MIN_IMAGES:
        raise ValueError(f"CKA needs at least {MIN_IMAGES} images, got {n}")
    used = choose_estimator(n, len(xl) + len(yl), estimator, max_bytes)
    bw_x = [rbf_bandwidth(a, seed, rbf_sigma, rbf_median) if kernel == "rbf" else None for a in xl]
    bw_y = [rbf_bandwidth(a, seed, rbf_sigma, rbf_median) if kernel == "rbf" else None for a in yl]
    if used == "full":
        xy, xx, yy = _pair_hsic([_Stats(gram(a, kernel, s)) for a, s in zip(xl, bw_x)],
                                [_Stats(gram(a, kernel, s)) for a, s in zip(yl, bw_y)])
        return _ratio(xy, xx, yy), used
    size = max(int(batch_size), MIN_IMAGES)
    order = np.random.default_rng(seed).permutation(n)
    batches = np.array_split(order, max(1, n // size))
    sums = [np.zeros((len(xl), len(yl))), np.zeros(len(xl)), np.zeros(len(yl))]
    for idx in batches:
        parts = _pair_hsic([_Stats(gram(a[idx], kernel, s)) for a, s in zip(xl, bw_x)],
                           [_Stats(gram(a[idx], kernel, s)) for a, s in zip(yl, bw_y)])
        for total, part in zip(sums, parts):
            total += part
    return _ratio(*(s / len(batches) for s in sums)), used
