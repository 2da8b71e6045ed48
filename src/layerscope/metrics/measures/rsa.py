"""Representational similarity analysis (Kriegeskorte et al. 2008): the Spearman correlation between the
two layers' representational dissimilarity matrices (RDMs) over the pairs of distinct images.

RDM entries: the Euclidean distance between two images' representations (rsatoolbox's default
``euclidean``, up to a monotone transform that Spearman ignores; Kriegeskorte et al. 2008 used
1 - Pearson correlation). Each layer is prepared once as its RDM's centred ranks (average ranks for ties),
so the Spearman correlation is a normalised inner product of two rank matrices and a permuted image
order re-indexes one of them. Bootstrap: pairs of an image with its own copy are left out (as
rsatoolbox's bootstrap over patterns does) and the ranks are those among all images.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from .base import ISOTROPIC_SCALING, ORTHOGONAL, TRANSLATION, Measure, Options, as_2d
from .resampling import cross_permuted, quadratic


@dataclass
class Ranks:
    """(n, n) centred ranks of the RDM's off-diagonal entries (symmetric, zero diagonal), and their norm."""

    r: np.ndarray
    norm: float


def distances(x: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of x (n, D) -> (n, n)."""
    sq = (x * x).sum(1)
    return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0))


class RSA(Measure):
    name = "rsa"
    title = "RSA"
    paper = "Kriegeskorte et al. 2008: Spearman correlation of Euclidean-distance RDMs (rsatoolbox's RDM)"
    invariances = frozenset({ORTHOGONAL, ISOTROPIC_SCALING, TRANSLATION})
    square = True

    def prepare(self, x: np.ndarray, opts: Options) -> Ranks:
        x = as_2d(x)
        x = x - x.mean(0)  # distances do not change; rounding does less
        n = len(x)
        iu = np.triu_indices(n, 1)
        ranks = rankdata(distances(x)[iu])
        r = np.zeros((n, n))
        r[iu] = ranks - ranks.mean()
        r = r + r.T
        return Ranks(r, float(np.linalg.norm(r)))

    def points(self, sa, sb, opts):
        a, b = np.stack([s.r for s in sa]), np.stack([s.r for s in sb])
        return _normalise(np.einsum("aij,bij->ab", a, b), sa, sb)

    def permuted(self, sa, sb, perms, opts):
        inner = cross_permuted(np.stack([s.r for s in sa]), np.stack([s.r for s in sb]), perms, symmetric=True)
        return _normalise(inner, sa, sb)

    def boot(self, sa, sb, draws, counts, opts):
        """Weighted Pearson correlation of the ranks over image pairs a != b, each weighing w_a w_b."""
        w = counts
        total = w.sum(1) ** 2 - (w * w).sum(1)
        stats = [(quadratic(w, s.r) / total, quadratic(w, s.r * s.r) / total) for s in sa]
        stats_b = stats if sa is sb else [(quadratic(w, s.r) / total, quadratic(w, s.r * s.r) / total) for s in sb]
        out = np.empty((len(sa), len(sb), len(draws)))
        for i, a in enumerate(sa):
            ma, qa = stats[i]
            for j, b in enumerate(sb):
                if sa is sb and j < i:
                    out[i, j] = out[j, i]
                    continue
                mb, qb = stats_b[j]
                cov = quadratic(w, a.r * b.r) / total - ma * mb
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[i, j] = cov / np.sqrt((qa - ma ** 2) * (qb - mb ** 2))
        return out


def _normalise(inner: np.ndarray, sa, sb) -> np.ndarray:
    na = np.array([s.norm for s in sa])[:, None]
    nb = np.array([s.norm for s in sb])[None, :]
    denom = na * nb
    if inner.ndim == 3:
        denom = denom[:, :, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, inner / np.where(denom > 0, denom, 1.0), np.nan)
