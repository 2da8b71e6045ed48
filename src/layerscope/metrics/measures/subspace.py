"""Measures computed from the singular values of a cross-covariance: orthogonal Procrustes, SVCCA, PWCCA.

Each layer is prepared once as its centred features in principal coordinates (U S, n x r, r its rank):
every one of these measures is unchanged by that rotation, and r <= min(n - 1, D). A replicate (a
permutation, a bootstrap draw) re-indexes those rows and re-centres them; the per-replicate cost is a
cross-covariance and an SVD, so these measures are the slow ones of ``--measure all``.

- ``procrustes`` (Ding et al. 2021; Williams et al. 2021): with X, Y centred and scaled to unit Frobenius
  norm, ``||X^T Y||_*`` (the nuclear norm), the cosine of Williams et al.'s angular shape metric
  ``arccos(value)``; Ding et al.'s Procrustes distance is ``2 - 2 value``.
- ``svcca`` (Raghu et al. 2017): the directions explaining ``svcca_variance`` of each layer's variance kept
  (SVD), then the mean of the canonical correlations between the two kept subspaces.
- ``pwcca`` (Morcos et al. 2018): CCA between the two layers; the canonical correlations averaged with
  weights ``sum_j |<h_i, x_j>|`` (h_i the i-th canonical variate of the first layer, x_j its neurons).
  Not symmetric: the first representation's neurons weigh.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import ISOTROPIC_SCALING, ORTHOGONAL, TRANSLATION, Measure, Options, as_2d

RANK_TOL = 1e-10  # singular values below this share of the largest are a null direction


@dataclass
class Coords:
    """One layer in principal coordinates.

    Attributes:
        xr: (n, r) the centred features' principal coordinates U S.
        v: (D, r) the directions (xr = centred x @ v).
    """

    xr: np.ndarray
    v: np.ndarray


def principal(x: np.ndarray, variance: float | None = None) -> Coords:
    """Centred x (n, D) in principal coordinates, its null directions dropped; with ``variance``, only the
    leading directions that together explain at least that share of the variance (SVCCA's rule)."""
    xc = as_2d(x) - as_2d(x).mean(0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    keep = s > RANK_TOL * (s[0] if len(s) and s[0] > 0 else 1.0)
    r = max(int(keep.sum()), 1)
    if variance is not None:
        share = np.cumsum(s[:r] ** 2) / max(float(np.sum(s[:r] ** 2)), 1e-300)
        r = int(np.searchsorted(share, variance - 1e-12) + 1)
    return Coords(u[:, :r] * s[:r], vt[:r].T)


def _whiten(x: np.ndarray) -> np.ndarray:
    """(r, k) W with x W orthonormal columns (x centred, (n, r)), null directions dropped."""
    evals, evecs = np.linalg.eigh(x.T @ x)
    keep = evals > RANK_TOL * max(float(evals.max()), 1e-300)
    return evecs[:, keep] / np.sqrt(evals[keep])


class _Subspace(Measure):
    variance: bool = False  # SVCCA keeps leading directions

    def prepare(self, x: np.ndarray, opts: Options) -> Coords:
        return principal(x, opts.svcca_variance if self.variance else None)

    def pair(self, a: Coords, b: Coords, rows_a, rows_b, opts: Options) -> float:
        x = a.xr if rows_a is None else a.xr[rows_a]
        y = b.xr if rows_b is None else b.xr[rows_b]
        return self.centred(x - x.mean(0), y - y.mean(0), a)

    def centred(self, x: np.ndarray, y: np.ndarray, a: Coords) -> float:
        raise NotImplementedError


class Procrustes(_Subspace):
    name = "procrustes"
    title = "orthogonal Procrustes"
    paper = ("Ding et al. 2021 / Williams et al. 2021: ||X^T Y||_* of centred, unit-norm X, Y (Procrustes "
             "distance 2 - 2 value; angular shape metric arccos(value))")
    invariances = frozenset({ORTHOGONAL, ISOTROPIC_SCALING, TRANSLATION})

    def centred(self, x, y, a):
        norm = np.linalg.norm(x) * np.linalg.norm(y)
        return float(np.linalg.svd(x.T @ y, compute_uv=False).sum() / norm) if norm > 0 else float("nan")


class SVCCA(_Subspace):
    name = "svcca"
    title = "SVCCA"
    paper = "Raghu et al. 2017: mean canonical correlation of the leading SVD directions"
    invariances = frozenset({ORTHOGONAL, ISOTROPIC_SCALING, TRANSLATION})
    variance = True

    def convention(self, opts: Options) -> str:
        return (f"Raghu et al. 2017: directions explaining {opts.svcca_variance:.0%} of each layer's variance "
                "kept, then the mean canonical correlation")

    def centred(self, x, y, a):
        wx, wy = _whiten(x), _whiten(y)
        if not wx.shape[1] or not wy.shape[1]:
            return float("nan")
        return float(np.linalg.svd(wx.T @ (x.T @ y) @ wy, compute_uv=False).mean())


class PWCCA(_Subspace):
    name = "pwcca"
    title = "PWCCA"
    paper = "Morcos et al. 2018: canonical correlations weighted by the first layer's projection weights"
    invariances = frozenset({ISOTROPIC_SCALING, TRANSLATION})
    symmetric = False

    def centred(self, x, y, a):
        wx, wy = _whiten(x), _whiten(y)
        if not wx.shape[1] or not wy.shape[1]:
            return float("nan")
        u, rho, _ = np.linalg.svd(wx.T @ (x.T @ y) @ wy)
        m = len(rho)
        # <h_i, x_j> for the canonical variates h_i = x wx u_i and the neurons x_j (columns of x v^T)
        weights = np.abs(a.v @ ((x.T @ x) @ wx @ u[:, :m])).sum(0)
        return float(weights @ rho / weights.sum()) if weights.sum() > 0 else float("nan")
