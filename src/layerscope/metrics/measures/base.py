"""What every similarity measure declares and computes (``registry`` lists them).

A measure compares two representations of the same n images, x (n, D1) and y (n, D2), and is a
similarity (higher = more alike). It works in two steps so that comparing L1 x L2 layers costs L1 + L2
preparations, not L1 x L2: ``prepare`` (per layer, once: a Gram matrix, ranks, neighbours, a basis)
and the pairwise values, for the point estimate, for a permutation null (the second representation's
images re-indexed) and for a paired bootstrap (the same resampled images for both).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

ORTHOGONAL = "orthogonal"  # x -> x Q, Q orthogonal
ISOTROPIC_SCALING = "isotropic_scaling"  # x -> a x, a > 0
TRANSLATION = "translation"  # x -> x + b (the same b for every image)
INVERTIBLE_LINEAR = "invertible_linear"  # x -> x A, A invertible
INVARIANCES = (ORTHOGONAL, ISOTROPIC_SCALING, TRANSLATION, INVERTIBLE_LINEAR)


@dataclass(frozen=True)
class Options:
    """Every convention that changes a value; each measure names the ones it uses in ``convention``.

    Attributes:
        kernel: CKA's kernel, ``linear`` or ``rbf``.
        estimator: CKA's HSIC estimator: ``full`` (HSIC_1 over all images), ``biased`` (Kornblith et al.
            2019), ``minibatch`` (Nguyen et al. 2021; no interval or null) or ``auto``.
        rbf_sigma: the RBF width as a multiple of the median distance.
        rbf_median: ``distinct`` (median over distinct pairs) or ``all`` (over all n^2 entries).
        knn_k: neighbours of mutual k-NN and CKNNA.
        svcca_variance: the share of variance SVCCA's kept directions explain.
        batch_size: images per minibatch (``minibatch``).
        seed: minibatch shuffling, RBF bandwidth sampling.
    """

    kernel: str = "linear"
    estimator: str = "full"
    rbf_sigma: float = 1.0
    rbf_median: str = "distinct"
    knn_k: int = 10
    svcca_variance: float = 0.99
    batch_size: int = 256
    seed: int = 0


def as_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected representations (n, D), got {x.shape}")
    return x


class Measure:
    """One similarity measure. Subclasses set the class attributes and ``prepare`` / ``pair``; the Gram-based
    ones override ``points`` / ``permuted`` / ``boot`` with vectorised versions.

    Attributes:
        name: how ``--measure`` and the rows' ``measure`` column name it.
        title: a short human name.
        paper: the paper whose definition it follows.
        invariances: the transforms of one representation that leave the value unchanged (``INVARIANCES``).
        bounded: values lie in [-1, 1] with 1 for identical representations, so ``calibrated`` applies.
        symmetric: ``value(x, y) == value(y, x)``.
    """

    name: str = ""
    title: str = ""
    paper: str = ""
    invariances: frozenset[str] = frozenset()
    bounded: bool = True
    symmetric: bool = True
    square: bool = False  # prepares an n x n matrix per layer (memory grows with n^2)

    def convention(self, opts: Options) -> str:
        """The conventions behind the value, one line (written in every row)."""
        return self.paper

    def resamples(self, opts: Options) -> bool:
        """Whether ``opts`` allow a null and an interval (minibatch CKA gives point values only)."""
        return True

    def holds_matrices(self, opts: Options) -> bool:
        """Whether ``prepare`` holds an n x n matrix per layer under ``opts``."""
        return self.square

    def check(self, n: int, opts: Options) -> None:
        """Raise ValueError when ``n`` images cannot be compared under ``opts``."""
        if n < 4:
            raise ValueError(f"{self.name} needs at least 4 images, got {n}")

    def prepare(self, x: np.ndarray, opts: Options) -> Any:
        """Per-layer state of x (n, D)."""
        raise NotImplementedError

    def pair(self, a: Any, b: Any, rows_a: np.ndarray | None, rows_b: np.ndarray | None, opts: Options) -> float:
        """The value on images ``rows_a`` of a against ``rows_b`` of b (None: all, in order)."""
        raise NotImplementedError

    def points(self, sa: Sequence[Any], sb: Sequence[Any], opts: Options) -> np.ndarray:
        """(len(sa), len(sb)) point values."""
        return np.array([[self.pair(a, b, None, None, opts) for b in sb] for a in sa], dtype=np.float64)

    def permuted(self, sa: Sequence[Any], sb: Sequence[Any], perms: np.ndarray, opts: Options) -> np.ndarray:
        """(len(sa), len(sb), P): values with b's images re-ordered by each of perms (P, n)."""
        ident = np.arange(perms.shape[1])
        return np.array([[[self.pair(a, b, ident, p, opts) for p in perms] for b in sb] for a in sa])

    def boot(self, sa: Sequence[Any], sb: Sequence[Any], draws: np.ndarray, counts: np.ndarray,
             opts: Options) -> np.ndarray:
        """(len(sa), len(sb), B): values on each bootstrap draw (B, n) of images, the same for a and b."""
        return np.array([[[self.pair(a, b, d, d, opts) for d in draws] for b in sb] for a in sa])

    def value(self, x: np.ndarray, y: np.ndarray, opts: Options | None = None) -> float:
        """The value for two representations x (n, D1), y (n, D2) of the same images."""
        opts = opts or Options()
        x, y = as_2d(x), as_2d(y)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"expected the same images in both, got {x.shape[0]} and {y.shape[0]} rows")
        self.check(x.shape[0], opts)
        return float(self.points([self.prepare(x, opts)], [self.prepare(y, opts)], opts)[0, 0])
