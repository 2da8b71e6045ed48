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
    """One layer's Gram matrix and the sums both estimators need.

    Attributes:
        k: (n, n) Gram matrix; kt: k with a zero diagonal (HSIC_1); d: (n,) its diagonal.
        x: the features, kept for the minibatch estimator only (else None).
    """

    k: np.ndarray | None
    kt: np.ndarray | None
    d: np.ndarray | None
    x: np.ndarray | None = None


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
            return GramState(None, None, None, x)
        s = sim.rbf_bandwidth(x, opts.seed, opts.rbf_sigma, opts.rbf_median) if opts.kernel == "rbf" else None
        k = sim.gram(x, opts.kernel, s)
        kt = k.copy()
        kt[np.diag_indices(len(k))] = 0.0
        return GramState(k, kt, np.diag(k).copy())

    def points(self, sa: Sequence[GramState], sb: Sequence[GramState], opts: Options) -> np.ndarray:
        est = self._estimator(opts)
        if est == "minibatch":
            return sim.cka_matrix(dict(enumerate(s.x for s in sa)), dict(enumerate(s.x for s in sb)), opts.kernel,
                                  "minibatch", opts.batch_size, opts.seed, rbf_sigma=opts.rbf_sigma,
                                  rbf_median=opts.rbf_median)[0]
        if est == "full":  # the same arithmetic as metrics.similarity.cka_matrix, so the same numbers
            xs, ys = [sim._Stats(s.k) for s in sa], [sim._Stats(s.k) for s in sb]
            return sim._ratio(*sim._pair_hsic(xs, ys))
        xy = np.array([[centred_hsic(a.k, b.k) for b in sb] for a in sa])
        xx = np.array([centred_hsic(a.k, a.k) for a in sa])
        yy = np.array([centred_hsic(b.k, b.k) for b in sb])
        return sim._ratio(xy, xx, yy)

    def permuted(self, sa, sb, perms, opts):
        est = self._estimator(opts)
        if est == "minibatch":
            return np.full((len(sa), len(sb), len(perms)), np.nan)
        n = perms.shape[1]
        inner = cross_permuted(np.stack([s.kt for s in sa]), np.stack([s.kt for s in sb]), perms)
        if est == "full":
            ra = np.stack([s.kt.sum(1) for s in sa])  # (La, n)
            rb = np.stack([s.kt.sum(1) for s in sb])[:, perms]  # (Lb, P, n)
            rows = np.einsum("an,bpn->abp", ra, rb)
            ta, tb = ra.sum(1)[:, None, None], rb[:, 0].sum(1)[None, :, None]
            xy = (inner + ta * tb / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * rows) / (n * (n - 3))
            xx = np.array([sim._hsic(st, st, float(np.vdot(st.k, st.k))) for st in map(sim._Stats, (s.k for s in sa))])
            yy = np.array([sim._hsic(st, st, float(np.vdot(st.k, st.k))) for st in map(sim._Stats, (s.k for s in sb))])
        else:
            inner = inner + np.einsum("an,bpn->abp", np.stack([s.d for s in sa]), np.stack([s.d for s in sb])[:, perms])
            ra, rb = np.stack([s.k.sum(1) for s in sa]), np.stack([s.k.sum(1) for s in sb])[:, perms]
            rows = np.einsum("an,bpn->abp", ra, rb)
            ta, tb = ra.sum(1)[:, None, None], rb[:, 0].sum(1)[None, :, None]
            xy = inner - 2.0 / n * rows + ta * tb / n ** 2
            xx = np.array([centred_hsic(s.k, s.k) for s in sa])
            yy = np.array([centred_hsic(s.k, s.k) for s in sb])
        return _ratio3(xy, xx, yy)

    def boot(self, sa, sb, draws, counts, opts):
        """Each draw's CKA recomputed on the resampled images (a copy of an image is a separate row), from
        the counts: sum over pairs of positions of K L = w^T (K o L) w, row sums = K w, ..."""
        est = self._estimator(opts)
        if est == "minibatch":
            return np.full((len(sa), len(sb), len(draws)), np.nan)
        n = counts.shape[1]
        w = counts

        def parts(s: GramState):
            return w @ s.k, s  # (B, n): the resampled Gram's row sums, at each image

        def hsic(p, q, kl):
            (kw, s), (lw, t) = p, q
            if est == "full":
                rk, rl = kw - s.d, lw - t.d
                pairs = kl - w @ (s.d * t.d)
                tk, tl = np.einsum("bi,bi->b", w, rk), np.einsum("bi,bi->b", w, rl)
                rows = np.einsum("bi,bi,bi->b", w, rk, rl)
                return (pairs + tk * tl / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * rows) / (n * (n - 3))
            tk, tl = np.einsum("bi,bi->b", w, kw), np.einsum("bi,bi->b", w, lw)
            rows = np.einsum("bi,bi,bi->b", w, kw, lw)
            return kl - 2.0 / n * rows + tk * tl / n ** 2

        pa, pb = [parts(s) for s in sa], [parts(s) for s in sb]
        xx = np.stack([hsic(p, p, quadratic(w, p[1].k * p[1].k)) for p in pa])  # (La, B)
        yy = np.stack([hsic(q, q, quadratic(w, q[1].k * q[1].k)) for q in pb])
        same = sa is sb
        out = np.empty((len(sa), len(sb), len(draws)))
        for i, p in enumerate(pa):
            for j, q in enumerate(pb):
                if same and j < i:
                    out[i, j] = out[j, i]
                    continue
                xy = hsic(p, q, quadratic(w, p[1].k * q[1].k))
                out[i, j] = _ratio3(xy[None, None], xx[i][None], yy[j][None])[0, 0]
        return out


def _ratio3(xy: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """xy (La, Lb, R) / sqrt(xx (La[, R]) yy (Lb[, R])), NaN where a self-HSIC is not positive."""
    xx = np.clip(xx, 0, None)
    yy = np.clip(yy, 0, None)
    xx = xx[:, None, None] if xx.ndim == 1 else xx[:, None, :]
    yy = yy[None, :, None] if yy.ndim == 1 else yy[None, :, :]
    denom = np.sqrt(xx * yy)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, xy / np.where(denom > 0, denom, 1.0), np.nan)
