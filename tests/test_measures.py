"""Every similarity measure against a brute force of its paper's formula (and a peer library where one is
installed), its declared invariances as property tests (an undeclared one fails on a counterexample),
the vectorised null and bootstrap against recomputation, and the registry the README's table reads."""
from __future__ import annotations

import importlib.util
import itertools
import re

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.distance import pdist
from scipy.stats import rankdata, spearmanr

from layerscope.metrics.measures import INVARIANCES, MEASURES, Options, compare, invariance_table, monotonicity, resolve
from layerscope.metrics.measures.resampling import bootstrap_draws, permutations
from layerscope.metrics.similarity import cka as cka_today

from .conftest import ROOT


def pair(seed: int = 0, n: int = 40, d1: int = 6, d2: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Two related representations; x with a decaying spectrum (so SVCCA drops some directions)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d1)) * np.array([5, 3, 2, 1, 0.3, 0.05, 1, 1][:d1])
    y = np.tanh(x @ rng.normal(size=(d1, d2)) / 3) + 0.3 * rng.normal(size=(n, d2))
    return x + 2.0, y - 1.0


def centred(x):
    return x - x.mean(0)


# --- brute forces, each from its paper's formula ---------------------------------------------------------

def hsic1_brute(k, l):
    """Song et al. 2012's HSIC_1 as the U-statistic over distinct indices."""
    n = len(k)
    a = np.mean([k[i, j] * l[i, j] for i, j in itertools.permutations(range(n), 2)])
    b = np.mean([k[i, j] * l[q, r] for i, j, q, r in itertools.permutations(range(n), 4)])
    c = np.mean([k[i, j] * l[i, q] for i, j, q in itertools.permutations(range(n), 3)])
    return a + b - 2 * c


def rbf_brute(x, sigma=1.0, median="distinct"):
    d = np.array([[np.sum((a - b) ** 2) for b in x] for a in x])
    pool = d[~np.eye(len(x), dtype=bool)] if median == "distinct" else d.ravel()
    return np.exp(-d / (2 * sigma ** 2 * np.median(pool)))


def biased_cka_brute(k, l):
    """Kornblith et al. 2019: HSIC = tr(K H L H) / (n - 1)^2, H = I - 11^T / n."""
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    hsic = lambda a, b: np.trace(a @ h @ b @ h) / (n - 1) ** 2  # noqa: E731
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def canonical(x, y):
    """Hotelling: canonical correlations rho_i^2 = eigenvalues of Sxx^-1 Sxy Syy^-1 Syx, and the first
    representation's canonical directions (columns), largest first."""
    x, y = centred(x), centred(y)
    sxx, syy, sxy = x.T @ x, y.T @ y, x.T @ y
    m = np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T)
    evals, evecs = np.linalg.eig(m)
    order = np.argsort(-evals.real)[:min(x.shape[1], y.shape[1])]
    return np.sqrt(np.clip(evals.real[order], 0, 1)), evecs.real[:, order]


def svcca_brute(x, y, keep=0.99):
    def reduce(z):
        z = centred(z)
        u, s, _ = np.linalg.svd(z, full_matrices=False)
        r = next(i + 1 for i in range(len(s)) if np.sum(s[:i + 1] ** 2) / np.sum(s ** 2) >= keep)
        return u[:, :r] * s[:r]
    rho, _ = canonical(reduce(x), reduce(y))
    return rho.mean()


def pwcca_brute(x, y):
    """Morcos et al. 2018: weights alpha_i = sum_j |<h_i, x_j>|, h_i = X a_i the canonical variates."""
    rho, a = canonical(x, y)
    xc = centred(x)
    h = xc @ a
    h /= np.linalg.norm(h, axis=0)
    alpha = np.abs(h.T @ xc).sum(1)
    return float(alpha @ rho / alpha.sum())


def knn_sets(x, k):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn @ xn.T
    return [set(sorted((j for j in range(len(x)) if j != i), key=lambda j: -s[i, j])[:k]) for i in range(len(x))], s


def mknn_brute(x, y, k):
    nx, _ = knn_sets(x, k)
    ny, _ = knn_sets(y, k)
    return np.mean([len(a & b) / k for a, b in zip(nx, ny)])


def cknna_brute(x, y, k):
    """Huh et al. 2024: Align(K, L) = sum_i sum_j a(i, j) (K_ij - E_l K_il)(L_ij - E_l L_il)."""
    nx, kx = knn_sets(x, k)
    ny, ky = knn_sets(y, k)
    n = len(x)

    def align(kk, ll, na, nb):
        return sum((kk[i, j] - kk[i].mean()) * (ll[i, j] - ll[i].mean())
                   for i in range(n) for j in range(n) if j in na[i] and j in nb[i])
    return align(kx, ky, nx, ny) / np.sqrt(align(kx, kx, nx, nx) * align(ky, ky, ny, ny))


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cka_full_is_hsic1_and_keeps_todays_numbers(kernel):
    x, y = pair(1, n=9)
    k, l = (x @ x.T, y @ y.T) if kernel == "linear" else (rbf_brute(x), rbf_brute(y))
    want = hsic1_brute(k, l) / np.sqrt(hsic1_brute(k, k) * hsic1_brute(l, l))
    got = MEASURES["cka"].value(x, y, Options(kernel=kernel, estimator="full"))
    assert got == pytest.approx(want, abs=1e-6)
    assert got == cka_today(x, y, kernel)  # the existing default, bit for bit


@pytest.mark.parametrize("kernel,sigma,median", [("linear", 1.0, "distinct"), ("rbf", 1.0, "distinct"),
                                                 ("rbf", 0.5, "all"), ("rbf", 2.0, "distinct")])
def test_biased_cka_is_kornbliths_formula(kernel, sigma, median):
    x, y = pair(2)
    if kernel == "linear":  # Kornblith et al. 2019, eq. for linear CKA: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)
        xc, yc = centred(x), centred(y)
        want = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    else:
        want = biased_cka_brute(rbf_brute(x, sigma, median), rbf_brute(y, sigma, median))
    opts = Options(kernel=kernel, estimator="biased", rbf_sigma=sigma, rbf_median=median)
    assert MEASURES["cka"].value(x, y, opts) == pytest.approx(want, abs=1e-6)


def test_procrustes_is_one_minus_half_the_squared_procrustes_distance():
    x, y = pair(3)
    xs, ys = centred(x) / np.linalg.norm(centred(x)), centred(y) / np.linalg.norm(centred(y))
    ys = np.hstack([ys, np.zeros((len(ys), xs.shape[1] - ys.shape[1]))])  # scipy rotates equal widths
    r, _ = orthogonal_procrustes(ys, xs)
    distance2 = np.linalg.norm(xs - ys @ r) ** 2  # Ding et al. 2021: min over Q of ||X - Y Q||_F^2
    assert MEASURES["procrustes"].value(x, y) == pytest.approx(1 - distance2 / 2, abs=1e-6)


def test_svcca_pwcca_rsa_mknn_cknna_equal_their_papers_formulas():
    x, y = pair(4)
    assert MEASURES["svcca"].value(x, y) == pytest.approx(svcca_brute(x, y), abs=1e-6)
    assert MEASURES["svcca"].value(x, y, Options(svcca_variance=0.9)) == pytest.approx(svcca_brute(x, y, 0.9), abs=1e-6)
    assert MEASURES["pwcca"].value(x, y) == pytest.approx(pwcca_brute(x, y), abs=1e-6)
    assert MEASURES["pwcca"].value(y, x) == pytest.approx(pwcca_brute(y, x), abs=1e-6)
    assert MEASURES["rsa"].value(x, y) == pytest.approx(spearmanr(pdist(x), pdist(y))[0], abs=1e-6)
    for k in (3, 10):
        assert MEASURES["mknn"].value(x, y, Options(knn_k=k)) == pytest.approx(mknn_brute(x, y, k), abs=1e-6)
        assert MEASURES["cknna"].value(x, y, Options(knn_k=k)) == pytest.approx(cknna_brute(x, y, k), abs=1e-6)


@pytest.mark.slow  # imports torch
@pytest.mark.skipif(importlib.util.find_spec("ckatorch") is None,
                    reason="ckatorch not installed (pip install ckatorch to compare CKA with it)")
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cka_equals_ckatorch(kernel):
    import torch
    from ckatorch.core import cka_base

    x, y = pair(5, n=31)  # odd n: ckatorch's torch.median takes the lower middle value, numpy averages two
    for unbiased, estimator in ((False, "biased"), (True, "full")):
        want = float(cka_base(torch.from_numpy(x), torch.from_numpy(y), kernel, unbiased=unbiased))
        opts = Options(kernel=kernel, estimator=estimator, rbf_median="all")  # ckatorch: median of all entries
        assert MEASURES["cka"].value(x, y, opts) == pytest.approx(want, abs=1e-9)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("rsatoolbox") is None,
                    reason="rsatoolbox not installed (pip install rsatoolbox to compare RSA with it)")
def test_rsa_equals_rsatoolbox():
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm, compare

    x, y = pair(6)
    rdms = [calc_rdm(Dataset(z), method="euclidean") for z in (x, y)]
    want = float(compare(rdms[0], rdms[1], method="spearman")[0, 0])
    assert MEASURES["rsa"].value(x, y) == pytest.approx(want, abs=1e-9)


# --- invariances -----------------------------------------------------------------------------------------

def transform(kind: str, x: np.ndarray, rng) -> np.ndarray:
    d = x.shape[1]
    if kind == "orthogonal":
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        return x @ q
    if kind == "isotropic_scaling":
        return 3.7 * x
    if kind == "translation":
        return x + 4.0 * rng.normal(size=d)
    # an invertible map that also reweights the directions (so a variance-based truncation sees it)
    return x @ (rng.normal(size=(d, d)) + np.diag(np.linspace(0.2, 8.0, d)))


@pytest.mark.parametrize("name", list(MEASURES))
def test_each_declared_invariance_holds_and_each_other_one_fails_on_a_counterexample(name):
    measure = MEASURES[name]
    assert measure.invariances <= set(INVARIANCES)
    x, y = pair(7)
    base = measure.value(x, y)
    for kind in INVARIANCES:
        changes = []
        for seed in range(3):
            rng = np.random.default_rng(seed)
            for moved in (measure.value(transform(kind, x, rng), y), measure.value(x, transform(kind, y, rng))):
                changes.append(abs(moved - base))
        if kind in measure.invariances:
            assert max(changes) < 1e-6, (name, kind, changes)
        else:
            assert max(changes) > 1e-3, (name, kind, "declared not invariant, but no counterexample")


def test_rbf_cka_keeps_the_invariances_the_linear_one_declares():
    x, y = pair(8)
    opts = Options(kernel="rbf")
    base = MEASURES["cka"].value(x, y, opts)
    rng = np.random.default_rng(0)
    for kind in ("orthogonal", "isotropic_scaling", "translation"):
        assert MEASURES["cka"].value(transform(kind, x, rng), y, opts) == pytest.approx(base, abs=1e-9)


# --- the vectorised replicates against recomputation -------------------------------------------------------

@pytest.mark.parametrize("name", list(MEASURES))
def test_permutation_null_values_equal_the_measure_on_reordered_images(name):
    measure, opts = MEASURES[name], Options(knn_k=5)
    x, y = pair(9, n=24)
    perms = permutations(24, 4, seed=1)
    got = measure.permuted([measure.prepare(x, opts)], [measure.prepare(y, opts)], perms, opts)[0, 0]
    np.testing.assert_allclose(got, [measure.value(x, y[p], opts) for p in perms], atol=1e-9)


@pytest.mark.parametrize("name,estimator", [("cka", "full"), ("cka", "biased"), ("procrustes", "full"),
                                            ("svcca", "full"), ("pwcca", "full")])
def test_bootstrap_values_equal_the_measure_on_the_resampled_images(name, estimator):
    measure, opts = MEASURES[name], Options(estimator=estimator)
    x, y = pair(10, n=24, d1=5, d2=4)
    draws, counts = bootstrap_draws(24, 4, seed=2)
    got = measure.boot([measure.prepare(x, opts)], [measure.prepare(y, opts)], draws, counts, opts)[0, 0]
    if name == "svcca":  # the kept directions are those of all images
        def kept(z):
            _, s, vt = np.linalg.svd(centred(z), full_matrices=False)
            r = int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), 0.99) + 1)
            return centred(z) @ vt[:r].T
        want = [canonical(kept(x)[d], kept(y)[d])[0].mean() for d in draws]
    else:
        want = [measure.value(x[d], y[d], opts) for d in draws]
    np.testing.assert_allclose(got, want, atol=1e-9)


@pytest.mark.parametrize("name", ["procrustes", "svcca", "pwcca"])
def test_bootstrap_of_layers_wider_than_a_draws_distinct_images_equals_the_measure_on_them(name):
    """A draw of 12 images holds about 8 distinct ones: a layer of 10 dimensions is then based on its
    distinct rows' Gram matrix (the smaller side), and still gives the measure on the resampled rows."""
    measure, opts = MEASURES[name], Options(svcca_variance=1.0)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(12, 10))
    y = np.tanh(x[:, :3]) + 0.5 * rng.normal(size=(12, 3))
    draws, counts = bootstrap_draws(12, 5, seed=4)
    assert max((c > 0).sum() for c in counts) < 10
    got = measure.boot([measure.prepare(x, opts)], [measure.prepare(y, opts)], draws, counts, opts)[0, 0]
    np.testing.assert_allclose(got, [measure.value(x[d], y[d], opts) for d in draws], atol=1e-9)


@pytest.mark.parametrize("name", list(MEASURES))
def test_replicates_do_not_depend_on_the_number_of_threads(name):
    from layerscope.metrics.measures.engine import compare_states

    measure, opts = MEASURES[name], Options(knn_k=4)
    x, y = pair(13, n=20)
    states = [measure.prepare(z, opts) for z in (x, y, x[:, ::-1] * 2)]
    one = compare_states(states, states[:2], 20, measure, opts, n_perm=7, n_boot=9, threads=1)
    three = compare_states(states, states[:2], 20, measure, opts, n_perm=7, n_boot=9, threads=3)
    np.testing.assert_array_equal(one[0], three[0])
    for row_one, row_three in zip(one[1], three[1]):
        for a, b in zip(row_one, row_three):
            np.testing.assert_allclose(list(a.values()), list(b.values()), rtol=0, atol=1e-12)


def test_threads_each_on_one_blas_thread_and_the_limit_lifted_after_the_last():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from layerscope.metrics.measures.resampling import in_threads, one_thread

    def blas() -> list[int]:
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = blas()
    seen = []

    def work(rows):
        with one_thread():  # nested, as the subspace measures do inside the engine's threads
            seen.append(blas())
            return rows.T.astype(float)

    out = in_threads(work, np.arange(12).reshape(6, 2), threads=3)
    np.testing.assert_array_equal(out, np.arange(12).reshape(6, 2).T)
    assert len(seen) == 3 and all(set(s) == {1} for s in seen if s)
    assert blas() == before


def test_rsa_and_neighbour_bootstraps_follow_their_stated_rules():
    x, y = pair(11, n=20)
    draws, counts = bootstrap_draws(20, 3, seed=3)
    opts = Options(knn_k=4)
    iu = np.triu_indices(20, 1)  # pdist's order
    ax, ay = rankdata(pdist(x)), rankdata(pdist(y))  # ranks among all images
    for d, w in zip(draws, counts):
        # pairs of distinct images, each weighing w_a w_b: the Pearson correlation of the full-sample ranks
        weights = (w[:, None] * w[None, :])[iu]
        want = np.cov(ax, ay, aweights=weights)[0, 1] / np.sqrt(np.cov(ax, aweights=weights)
                                                                 * np.cov(ay, aweights=weights))
        rsa = MEASURES["rsa"]
        got = rsa.boot([rsa.prepare(x, opts)], [rsa.prepare(y, opts)], d[None], w[None], opts)[0, 0, 0]
        assert got == pytest.approx(want, abs=1e-9)
        nx, _ = knn_sets(x, 4)
        ny, _ = knn_sets(y, 4)
        want = np.mean([len(nx[i] & ny[i]) / 4 for i in d])  # query images resampled, neighbours among all
        mk = MEASURES["mknn"]
        assert mk.boot([mk.prepare(x, opts)], [mk.prepare(y, opts)], d[None], w[None], opts)[0, 0, 0] == \
            pytest.approx(want, abs=1e-12)


def test_compare_gives_every_pair_its_interval_and_null():
    x, y = pair(12, n=30)
    xs = {0: x, 1: y, 2: np.random.default_rng(0).normal(size=(30, 4))}
    la, lb, values, columns = compare(xs, xs, MEASURES["cka"], Options(), n_perm=50, n_boot=60)
    assert la == lb == [0, 1, 2]
    np.testing.assert_allclose(values, values.T, atol=1e-12)
    assert columns[0][0]["p_value"] == pytest.approx(1 / 51)  # a layer with itself beats every permutation
    assert columns[0][0]["ci_low"] == pytest.approx(1.0) and columns[0][0]["calibrated"] == pytest.approx(1.0)
    related, unrelated = columns[0][1], columns[0][2]
    assert related["ci_low"] < values[0, 1] < related["ci_high"] and related["p_value"] < 0.05
    assert unrelated["p_value"] > 0.05 and unrelated["null_q95"] > unrelated["null_mean"]


def test_monotonicity_is_the_spearman_of_layer_distance_and_similarity():
    values = np.array([[1, .8, .5, .2], [.8, 1, .7, .4], [.5, .7, 1, .6], [.2, .4, .6, 1]])
    rho, pairs = monotonicity([0, 1, 2, 3], values)
    i, j = np.where(~np.eye(4, dtype=bool))
    assert pairs == 12 and rho == pytest.approx(spearmanr(np.abs(i - j), values[i, j])[0]) and rho < -0.8
    assert np.isnan(monotonicity([0, 1], np.eye(2))[0])
    # the two orders of a pair apart in the last bits are still a tie: rho as on the exactly symmetric matrix
    noisy = values + np.triu(np.full((4, 4), 1e-15), 1)
    assert monotonicity([0, 1, 2, 3], noisy)[0] == rho


def test_resolve_names_measures_and_all_and_refuses_an_unknown_one():
    assert [m.name for m in resolve("all")] == list(MEASURES)
    assert [m.name for m in resolve(["rsa", "cka"])] == ["cka", "rsa"]
    with pytest.raises(ValueError, match="--measure nope: expected some of cka"):
        resolve(["nope"])
    with pytest.raises(ValueError, match="--knn-k 40: expected 1..39"):
        MEASURES["mknn"].value(*pair(0), Options(knn_k=40))


def test_the_readme_table_states_each_measures_invariances_as_the_registry_declares():
    readme = (ROOT / "README.md").read_text()
    for row in invariance_table():
        line = re.search(rf"^\| `{row['measure']}` \|(.*)$", readme, re.M)
        assert line, f"README: no row for measure {row['measure']}"
        cells = [c.strip() for c in line.group(1).split("|")]
        marks = [c for c in cells if c in ("yes", "no")]
        assert marks[:len(INVARIANCES)] == [row[inv] for inv in INVARIANCES], row["measure"]


def test_subspace_svd_survives_what_lapack_cannot_decompose(monkeypatch):
    """A stack of cross products in which one matrix makes the fast SVD driver fail: that one is decomposed
    again by the slower driver (same singular values as numpy's on it), one with NaN gives NaN, the others
    are unchanged."""
    from layerscope.metrics.measures import subspace

    rng = np.random.default_rng(0)
    m = rng.normal(size=(3, 5, 4))
    m[2, 0, 0] = np.nan
    calls = {"n": 0}
    real = np.linalg.svd

    def flaky(a, *args, **kwargs):  # the whole stack and the first matrix alone fail, as gesdd can
        calls["n"] += 1
        if a.ndim == 3 or calls["n"] == 2:
            raise np.linalg.LinAlgError("SVD did not converge")
        return real(a, *args, **kwargs)

    monkeypatch.setattr(np.linalg, "svd", flaky)
    s = subspace._svd(m)
    monkeypatch.setattr(np.linalg, "svd", real)
    np.testing.assert_allclose(s[0], real(m[0], compute_uv=False), rtol=1e-12)  # by gesvd
    np.testing.assert_allclose(s[1], real(m[1], compute_uv=False), rtol=1e-12)
    assert np.isnan(s[2]).all()
    u, s2, _ = subspace._svd(m[:2], compute_uv=True)
    np.testing.assert_allclose(np.abs(u), np.abs(real(m[:2], full_matrices=False)[0]), atol=1e-12)
