"""Centered kernel alignment (Kornblith et al. 2019) with the field's three HSIC estimators.

``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` over the Gram matrices K, L (n, n) of two layers:

- ``full``: the unbiased HSIC_1 (Song et al. 2012) over all images (this project's default; see
  ``metrics.similarity`` for why);
- ``biased``: ``tr(K H L H) / (n - 1)^2`` with H = I - 11^T/n, Kornblith et al. 2019's estimator, the
  one Kornblith et al. 2019 and Raghu et al. 2021 published heatmaps with (inflated at small n);
- ``minibatch``: Nguyen et al. 2021 (point values only: no Gram matrix of all images is held).

Kernels: ``linear`` and ``rbf`` (width ``rbf_sigma`` times the median distance, the median over distinct
pairs or over all entries). Nulls and bootstrap re-index the Gram matrices computed once per layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .. import similarity as sim
from .base import ISOTROPIC_SCALING, ORTHOGONAL, TRANSLATION, Measure, Options, as_2d
from .resampling import cross_permuted, quadratic

ESTIMATORS = ("auto", "full", "biased", "minibatch")
PAPERS = {
    "full": "Kornblith et al. 2019 CKA with the unbiased HSIC_1 of Song et al. 2012",
    "biased": "Kornblith et al. 2019 CKA with the biased HSIC tr(KHLH)/(n-1)^2",
    "minibatch": "Nguyen et al. 2021 minibatch CKA (HSIC_1 averaged over minibatches)",
}
MEDIAN_RULES = {
    "distinct": "median over distinct pairs (Gretton et al. 2005 median heuristic)",
    "all": "median over all n^2 entries, diagonal zeros included (Kornblith et al. 2019 code, ckatorch)",
}


@dataclass
class GramState:
    """One layer's Gram matrix, held once: its off-diagonal part and its diagonal.

    Attributes:
        kt: (n, n) the Gram matrix with a zero diagonal (what HSIC_1 reads); d: (n,) its diagonal.
        x: the features, kept for the minibatch estimator only (else None).
    """

    kt: np.ndarray | None
    d: np.ndarray | None
    x: np.ndarray | None = None

    @property
    def k(self) -> np.ndarray:
        """The full Gram matrix (a new array)."""
        return self.kt + np.diag(self.d)


def centred_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """The biased HSIC up to its constant: tr(K H L H) for (n, n) Gram matrices."""
    n = len(k)
    rk, rl = k.sum(1), l.sum(1)
    return float(np.vdot(k, l) - 2.0 / n * rk @ rl + rk.sum() * rl.sum() / n ** 2)


class CKA(Measure):
    name = "cka"
    title = "CKA"
    paper = PAPERS["full"]
    invariances = frozenset({ORTHOGONAL, ISOTROPIC_SCALING, TRANSLATION})
    bounded = True
    symmetric = True

    @staticmethod
    def _estimator(opts: Options) -> str:
        if opts.estimator not in ESTIMATORS:
            raise ValueError(f"--estimator {opts.estimator}: expected one of {', '.join(ESTIMATORS)}")
        if opts.estimator == "auto":
            raise ValueError("estimator auto: resolve it with metrics.similarity.choose_estimator first")
        return opts.estimator

    def resamples(self, opts: Options) -> bool:
        return self._estimator(opts) != "minibatch"

    def holds_matrices(self, opts: Options) -> bool:
        return self._estimator(opts) != "minibatch"

    def convention(self, opts: Options) -> str:
        kernel = "linear kernel" if opts.kernel == "linear" else (
            f"RBF kernel, width {opts.rbf_sigma:g} x the median distance, {MEDIAN_RULES[opts.rbf_median]}")
        return f"{PAPERS[self._estimator(opts)]}; {kernel}"

    def check(self, n: int, opts: Options) -> None:
        if n < sim.MIN_IMAGES:
            raise ValueError(f"CKA needs at least {sim.MIN_IMAGES} images, got {n}")
        if opts.kernel not in sim.KERNELS:
            raise ValueError(f"--kernel {opts.kernel}: expected one of {', '.join(sim.KERNELS)}")
        self._estimator(opts)

    def prepare(self, x: np.ndarray, opts: Options) -> GramState:
        x = as_2d(x)
        if self._estimator(opts) == "minibatch":
            return GramState(None, None, x)
        s = sim.rbf_bandwidth(x, opts.seed, opts.rbf_sigma, opts.rbf_median) if opts.kernel == "rbf" else None
        k = sim.gram(x, opts.kernel, s)
        d = np.diag(k).copy()
        k[np.diag_indices(len(k))] = 0.0
        return GramState(k, d)

    def points(self, sa: Sequence[GramState], sb: Sequence[GramState], opts: Options) -> np.ndarray:
        est = self._estimator(opts)
        if est == "minibatch":
            return sim.cka_matrix(dict(enumerate(s.x for s in sa)), dict(enumerate(s.x for s in sb)), opts.kernel,
                                  "minibatch", opts.batch_size, opts.seed, rbf_sigma=opts.rbf_sigma,
                                  rbf_median=opts.rbf_median)[0]
        if est == "full":  # the same arithmetic as metrics.similarity.cka_matrix, so the same numbers
            xs, ys = [_stats(s) for s in sa], [_stats(s) for s in sb]
            return sim._ratio(*sim._pair_hsic(xs, ys))
        ka, kb = [s.k for s in sa], [s.k for s in sb]
        xy = np.array([[centred_hsic(a, b) for b in kb] for a in ka])
        return sim._ratio(xy, np.array([centred_hsic(a, a) for a in ka]), np.array([centred_hsic(b, b) for b in kb]))

    def permuted(self, sa, sb, perms, opts):
        est = self._estimator(opts)
        if est == "minibatch":
            return np.full((len(sa), len(sb), len(perms)), np.nan)
        n = perms.shape[1]
        inner = cross_permuted(np.stack([s.kt for s in sa]), np.stack([s.kt for s in sb]), perms, symmetric=True)
        if est == "full":
            ra = np.stack([s.kt.sum(1) for s in sa])  # (La, n)
            rb = np.stack([s.kt.sum(1) for s in sb])[:, perms]  # (Lb, P, n)
            rows = np.einsum("an,bpn->abp", ra, rb)
            ta, tb = ra.sum(1)[:, None, None], rb[:, 0].sum(1)[None, :, None]
            xy = (inner + ta * tb / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * rows) / (n * (n - 3))
            xx = np.array([sim._hsic(st, st, float(np.vdot(st.k, st.k))) for st in map(_stats, sa)])
            yy = np.array([sim._hsic(st, st, float(np.vdot(st.k, st.k))) for st in map(_stats, sb)])
        else:
            inner = inner + np.einsum("an,bpn->abp", np.stack([s.d for s in sa]), np.stack([s.d for s in sb])[:, perms])
            ra = np.stack([s.kt.sum(1) + s.d for s in sa])
            rb = np.stack([s.kt.sum(1) + s.d for s in sb])[:, perms]
            rows = np.einsum("an,bpn->abp", ra, rb)
            ta, tb = ra.sum(1)[:, None, None], rb[:, 0].sum(1)[None, :, None]
            xy = inner - 2.0 / n * rows + ta * tb / n ** 2
            xx = np.array([centred_hsic(k, k) for k in (s.k for s in sa)])
            yy = np.array([centred_hsic(k, k) for k in (s.k for s in sb)])
        return _ratio3(xy, xx, yy)

    def boot(self, sa, sb, draws, counts, opts):
        """Each draw's CKA recomputed on the resampled images (a copy of an image is a separate row), from
        the counts: sum over pairs of positions of K L = w^T (K o L) w, row sums = K w, ..."""
        est = self._estimator(opts)
        if est == "minibatch":
            return np.full((len(sa), len(sb), len(draws)), np.nan)
        n = counts.shape[1]
        w = counts

        def sums(p: GramState, q: GramState) -> np.ndarray:
            """w^T (K o L) w per draw: the off-diagonal part, then the diagonal's."""
            return quadratic(w, p.kt * q.kt) + (w * w) @ (p.d * q.d)

        def hsic(p: GramState, q: GramState, kw, lw, kl):
            if est == "full":  # positions i != j: drop each image's own term w_a K_aa L_aa
                rk, rl = kw - p.d, lw - q.d
                pairs = kl - w @ (p.d * q.d)
                tk, tl = np.einsum("bi,bi->b", w, rk), np.einsum("bi,bi->b", w, rl)
                rows = np.einsum("bi,bi,bi->b", w, rk, rl)
                return (pairs + tk * tl / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * rows) / (n * (n - 3))
            tk, tl = np.einsum("bi,bi->b", w, kw), np.einsum("bi,bi->b", w, lw)
            rows = np.einsum("bi,bi,bi->b", w, kw, lw)
            return kl - 2.0 / n * rows + tk * tl / n ** 2

        # the resampled Gram's row sums at each image, (B, n): K w
        kws = [w @ s.kt + w * s.d for s in sa]
        lws = kws if sa is sb else [w @ s.kt + w * s.d for s in sb]
        xx = np.stack([hsic(s, s, kw, kw, sums(s, s)) for s, kw in zip(sa, kws)])  # (La, B)
        yy = xx if sa is sb else np.stack([hsic(s, s, lw, lw, sums(s, s)) for s, lw in zip(sb, lws)])
        out = np.empty((len(sa), len(sb), len(draws)))
        for i, (p, kw) in enumerate(zip(sa, kws)):
            for j, (q, lw) in enumerate(zip(sb, lws)):
                if sa is sb and j < i:
                    out[i, j] = out[j, i]
                    continue
                out[i, j] = _ratio3(hsic(p, q, kw, lw, sums(p, q))[None, None], xx[i][None], yy[j][None])[0, 0]
        return out


def _stats(s: GramState) -> "sim._Stats":
    """metrics.similarity's HSIC_1 statistics of a prepared layer, without a second n x n copy."""
    st = sim._Stats.__new__(sim._Stats)
    st.n, st.k, st.rows, st.total = len(s.kt), s.kt, s.kt.sum(1), float(s.kt.sum())
    return st


def _ratio3(xy: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """xy (La, Lb, R) / sqrt(xx (La[, R]) yy (Lb[, R])), NaN where a self-HSIC is not positive."""
    xx = np.clip(xx, 0, None)
    yy = np.clip(yy, 0, None)
    xx = xx[:, None, None] if xx.ndim == 1 else xx[:, None, :]
    yy = yy[None, :, None] if yy.ndim == 1 else yy[None, :, :]
    denom = np.sqrt(xx * yy)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, xy / np.where(denom > 0, denom, 1.0), np.nan)
