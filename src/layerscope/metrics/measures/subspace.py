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
from .resampling import one_thread

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


def _svd(m: np.ndarray, compute_uv: bool = False):
    """``np.linalg.svd`` of a stack of matrices (..., a, b), reduced. Where LAPACK's divide-and-conquer
    driver does not converge (seen on ill-conditioned cross products of real layers), that matrix is
    decomposed again by QR iteration (``gesvd``); a matrix with a NaN (a layer whose centred features are
    all zero: no direction to compare), or one neither driver decomposes, gives NaN instead of stopping
    every other pair."""
    k = min(m.shape[-2:])
    finite = np.isfinite(m).all(axis=(-2, -1))
    if finite.all():
        try:
            return np.linalg.svd(m, full_matrices=False, compute_uv=compute_uv)
        except np.linalg.LinAlgError:
            pass
    s = np.full(m.shape[:-2] + (k,), np.nan)
    u = np.full(m.shape[:-1] + (k,), np.nan)
    for idx in np.ndindex(m.shape[:-2]):
        if finite[idx]:
            try:
                out = np.linalg.svd(m[idx], full_matrices=False, compute_uv=compute_uv)
            except np.linalg.LinAlgError:  # gesdd's divide and conquer gives up: the slower QR iteration
                from scipy.linalg import LinAlgError, svd

                try:
                    out = svd(m[idx], full_matrices=False, compute_uv=compute_uv, lapack_driver="gesvd")
                except LinAlgError:
                    continue
            if compute_uv:
                u[idx], s[idx] = out[0], out[1]
            else:
                s[idx] = out
    return (u, s, None) if compute_uv else s


def _whiten(x: np.ndarray) -> np.ndarray:
    """(r, k) W with x W orthonormal columns (x centred, (n, r)), null directions dropped."""
    evals, evecs = np.linalg.eigh(x.T @ x)
    keep = evals > RANK_TOL * max(float(evals.max()), 1e-300)
    return evecs[:, keep] / np.sqrt(evals[keep])


def _orthonormal(x: np.ndarray) -> np.ndarray:
    """(n, k) an orthonormal basis of the columns of x (n, r), null directions dropped, from the smaller of
    x's two Gram matrices: x^T x (whitening, r <= n) or x x^T (its eigenvectors, n < r: a bootstrap draw's
    distinct images). Canonical correlations depend on the subspace alone, not on the basis."""
    if x.shape[0] >= x.shape[1]:
        return x @ _whiten(x)
    evals, evecs = np.linalg.eigh(x @ x.T)
    keep = evals > RANK_TOL * max(float(evals.max()), 1e-300)
    return evecs[:, keep]


def _canonical(cross: np.ndarray) -> np.ndarray:
    """The singular values of a stack of cross products (..., a, b) of orthonormal bases (canonical
    correlations, in [0, 1]), from the eigenvalues of the smaller of C C^T and C^T C: a symmetric
    eigenproblem costs about half an SVD. A value's error is at most sqrt(eps) ~ 1.5e-8 (where it is near
    0), so a mean of them stays within 1e-6 of the SVD's. NaN where the stack holds a NaN."""
    k = min(cross.shape[-2:])
    if not np.isfinite(cross).all():
        return _svd(cross)
    t = np.swapaxes(cross, -1, -2)
    gram = cross @ t if cross.shape[-2] <= cross.shape[-1] else t @ cross
    try:
        evals = np.linalg.eigvalsh(gram)
    except np.linalg.LinAlgError:  # pragma: no cover - syevd has not been seen to fail where gesdd works
        return _svd(cross)
    return np.sqrt(np.clip(evals[..., -k:], 0.0, 1.0))


@dataclass
class Basis:
    """What a pair needs of one layer on one set of rows: q (n, k) (unit-norm features for Procrustes, an
    orthonormal basis of the kept directions for SVCCA and PWCCA) and, for PWCCA, g (D, k) with
    ``g u`` = the projections <h, x_j> of the canonical variates h = q u onto the neurons x_j."""

    q: np.ndarray
    g: np.ndarray | None = None


class _Subspace(Measure):
    variance: bool = False  # SVCCA keeps leading directions

    def prepare(self, x: np.ndarray, opts: Options) -> Coords:
        return principal(x, opts.svcca_variance if self.variance else None)

    def basis(self, x: np.ndarray, a: Coords) -> Basis:
        """The basis of centred rows x (n, r) of layer a."""
        raise NotImplementedError

    def combine(self, a: Basis, cross: np.ndarray) -> np.ndarray:
        """Values from a's basis and cross = q_a^T q_b, (..., ka, kb) -> (...)."""
        raise NotImplementedError

    def _rows(self, a: Coords, rows) -> Basis:
        x = a.xr if rows is None else a.xr[rows]
        return self.basis(x - x.mean(0), a)

    def _weighted(self, a: Coords, rows: np.ndarray, weights: np.ndarray) -> Basis:
        """The basis of a bootstrap draw from its distinct images ``rows`` and their counts ``weights``:
        rows centred at the draw's weighted mean and scaled by sqrt(count) have the cross products of the
        draw's rows with their copies (x^T W y), on about 63% of the rows."""
        x = a.xr[rows]
        x = (x - weights @ x / weights.sum()) * np.sqrt(weights)[:, None]
        return self.basis(x, a)

    def pair(self, a: Coords, b: Coords, rows_a, rows_b, opts: Options) -> float:
        ba, bb = self._rows(a, rows_a), self._rows(b, rows_b)
        return float(self.combine(ba, ba.q.T @ bb.q))

    def permuted(self, sa, sb, perms, opts):
        """The bases of all images, once per layer; a permutation re-indexes the second one's rows
        (centring and whitening do not change when rows are permuted)."""
        ba, bb = [self._rows(a, None) for a in sa], [self._rows(b, None) for b in sb]
        out = np.empty((len(sa), len(sb), len(perms)))
        with one_thread():
            self._permuted(ba, bb, perms, out, sb is sa)
        return out

    def _permuted(self, ba, bb, perms, out, same: bool) -> None:
        for j, b in enumerate(bb):
            step = max(1, (32 << 20) // (8 * b.q.size))
            for s in range(0, len(perms), step):
                moved = b.q[perms[s:s + step]]  # (P', n, kb)
                for i, a in enumerate(ba):
                    if same and self.symmetric and j < i:
                        continue  # the engine mirrors a model's own symmetric null
                    out[i, j, s:s + len(moved)] = self.combine(a, np.matmul(a.q.T, moved))

    def boot(self, sa, sb, draws, counts, opts):
        """Each draw's bases once per layer (re-centred, re-whitened on the resampled rows), then every pair."""
        out = np.empty((len(sa), len(sb), len(draws)))
        with one_thread():
            self._boot(sa, sb, counts, out)
        return out

    def _boot(self, sa, sb, counts, out) -> None:
        for d, w in enumerate(counts):
            rows = np.flatnonzero(w)
            ba = [self._weighted(a, rows, w[rows]) for a in sa]
            bb = ba if sb is sa else [self._weighted(b, rows, w[rows]) for b in sb]
            for i, a in enumerate(ba):
                for j, b in enumerate(bb):
                    if sb is sa and self.symmetric and j < i:
                        out[i, j, d] = out[j, i, d]
                    else:
                        out[i, j, d] = self.combine(a, a.q.T @ b.q)


class Procrustes(_Subspace):
    name = "procrustes"
    title = "orthogonal Procrustes"
    paper = ("Ding et al. 2021 / Williams et al. 2021: ||X^T Y||_* of centred, unit-norm X, Y (Procrustes "
             "distance 2 - 2 value; angular shape metric arccos(value))")
    invariances = frozenset({ORTHOGONAL, ISOTROPIC_SCALING, TRANSLATION})

    def basis(self, x, a):
        norm = np.linalg.norm(x)
        if not norm > 0:
            return Basis(np.full_like(x, np.nan))
        x = x / norm
        if x.shape[0] < x.shape[1]:
            # fewer rows than columns (a bootstrap draw's distinct images): x = R^T Q^T with Q^T's rows
            # orthonormal, so x_a^T x_b = Q_a (R_a R_b^T) Q_b^T has the singular values of R_a R_b^T: a smaller
            # product and SVD, and the same value (the orthogonal invariance)
            x = np.linalg.qr(x.T, mode="r").T
        return Basis(x)

    def combine(self, a, cross):
        return _svd(cross).sum(-1)


class SVCCA(_Subspace):
    name = "svcca"
    title = "SVCCA"
    paper = "Raghu et al. 2017: mean canonical correlation of the leading SVD directions"
    invariances = frozenset({ORTHOGONAL, ISOTROPIC_SCALING, TRANSLATION})
    variance = True

    def convention(self, opts: Options) -> str:
        return (f"Raghu et al. 2017: directions explaining {opts.svcca_variance:.0%} of each layer's variance "
                "kept, then the mean canonical correlation")

    def basis(self, x, a):
        return Basis(_orthonormal(x))

    def combine(self, a, cross):
        if not min(cross.shape[-2:]):
            return np.full(cross.shape[:-2], np.nan)
        return _canonical(cross).mean(-1)


class PWCCA(_Subspace):
    name = "pwcca"
    title = "PWCCA"
    paper = "Morcos et al. 2018: canonical correlations weighted by the first layer's projection weights"
    invariances = frozenset({ISOTROPIC_SCALING, TRANSLATION})
    symmetric = False

    def basis(self, x, a):
        q = _orthonormal(x)
        # <h_i, x_j> for h_i = q u_i and the neurons x_j (the columns of x v^T): (v x^T q) u_i
        return Basis(q, a.v @ (x.T @ q))

    def combine(self, a, cross):
        if not min(cross.shape[-2:]):
            return np.full(cross.shape[:-2], np.nan)
        u, rho, _ = _svd(cross, compute_uv=True)
        weights = np.abs(a.g @ u).sum(-2)  # (..., m)
        total = weights.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (weights * rho).sum(-1) / np.where(total > 0, total, 1.0), np.nan)
