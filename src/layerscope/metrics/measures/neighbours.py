"""Neighbourhood measures of Huh et al. 2024 ("The Platonic Representation Hypothesis"): mutual k-NN
alignment and CKNNA.

Rows are L2-normalised and neighbours are found by inner product (cosine similarity), as Huh et al.
do; an image is not its own neighbour. Each layer is prepared once as its k-NN graph (n, n) 0/1,
so a permuted image order re-indexes a graph. Bootstrap: over query images, each image's neighbours
found among all images (a copy of an image is not its neighbour).

- ``mknn``: the mean over images of |N_x(i) & N_y(i)| / k.
- ``cknna``: ``Align(K, L) / sqrt(Align(K, K) Align(L, L))`` with ``Align(K, L) = sum_i sum_j a_ij
  (K_ij - mean_l K_il)(L_ij - mean_l L_il)``, a_ij = 1 when j != i is a k-NN of i in both (Huh et al.
  2024, Sec. on CKNNA; K, L the cosine kernels).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import ISOTROPIC_SCALING, ORTHOGONAL, Measure, Options, as_2d
from .resampling import cross_permuted


@dataclass
class Neighbours:
    """A layer's k-NN graph a (n, n) 0/1 and, for CKNNA, e = a * (row-centred cosine kernel)."""

    a: np.ndarray
    e: np.ndarray | None = None


def knn_graph(k: np.ndarray, neighbours: int) -> np.ndarray:
    """The k-NN graph (n, n) 0/1 of a similarity matrix k (n, n): row i marks the ``neighbours`` largest
    entries of row i other than i (ties: the lower index first)."""
    n = len(k)
    s = k.copy()
    s[np.diag_indices(n)] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :neighbours]
    a = np.zeros((n, n))
    np.put_along_axis(a, order, 1.0, axis=1)
    return a


def cosine_kernel(x: np.ndarray) -> np.ndarray:
    x = as_2d(x)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norm > 0, norm, 1.0)
    return x @ x.T


class _KNN(Measure):
    invariances = frozenset({ORTHOGONAL, ISOTROPIC_SCALING})
    square = True

    def convention(self, opts: Options) -> str:
        return f"{self.paper}; k = {opts.knn_k}, cosine neighbours"

    def check(self, n: int, opts: Options) -> None:
        super().check(n, opts)
        if not 1 <= opts.knn_k < n:
            raise ValueError(f"--knn-k {opts.knn_k}: expected 1..{n - 1} (the other images)")


class MutualKNN(_KNN):
    name = "mknn"
    title = "mutual k-NN"
    paper = "Huh et al. 2024 mutual k-nearest-neighbour alignment"

    def prepare(self, x, opts):
        return Neighbours(knn_graph(cosine_kernel(x), opts.knn_k))

    def points(self, sa, sb, opts):
        n = sa[0].a.shape[0]
        return np.einsum("aij,bij->ab", np.stack([s.a for s in sa]), np.stack([s.a for s in sb])) / (n * opts.knn_k)

    def permuted(self, sa, sb, perms, opts):
        n = perms.shape[1]
        shared = cross_permuted(np.stack([s.a for s in sa]), np.stack([s.a for s in sb]), perms, dtype=np.float32)
        return shared.astype(np.float64) / (n * opts.knn_k)

    def boot(self, sa, sb, draws, counts, opts):
        per = np.einsum("aij,bij->abi", np.stack([s.a for s in sa]), np.stack([s.a for s in sb])) / opts.knn_k
        return per @ counts.T / counts.shape[1]


class CKNNA(_KNN):
    name = "cknna"
    title = "CKNNA"
    paper = "Huh et al. 2024 centered kernel nearest-neighbour alignment"

    def prepare(self, x, opts):
        k = cosine_kernel(x)
        a = knn_graph(k, opts.knn_k)
        return Neighbours(a, a * (k - k.mean(1, keepdims=True)))

    @staticmethod
    def _self(states) -> np.ndarray:
        return np.stack([(s.e * s.e).sum(1) for s in states])  # (L, n): Align(K, K) per query image

    def points(self, sa, sb, opts):
        xy = np.einsum("aij,bij->ab", np.stack([s.e for s in sa]), np.stack([s.e for s in sb]))
        return _ratio(xy, self._self(sa).sum(1)[:, None], self._self(sb).sum(1)[None, :])

    def permuted(self, sa, sb, perms, opts):
        xy = cross_permuted(np.stack([s.e for s in sa]), np.stack([s.e for s in sb]), perms)
        return _ratio(xy, self._self(sa).sum(1)[:, None, None], self._self(sb).sum(1)[None, :, None])

    def boot(self, sa, sb, draws, counts, opts):
        per = np.einsum("aij,bij->abi", np.stack([s.e for s in sa]), np.stack([s.e for s in sb]))
        xy = per @ counts.T
        xx, yy = self._self(sa) @ counts.T, self._self(sb) @ counts.T  # (La, B), (Lb, B)
        return _ratio(xy, xx[:, None, :], yy[None, :, :])


def _ratio(xy, xx, yy):
    denom = np.sqrt(np.clip(xx, 0, None) * np.clip(yy, 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, xy / np.where(denom > 0, denom, 1.0), np.nan)
