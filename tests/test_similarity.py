"""CKA against a brute force of the unbiased HSIC's definition, its invariances, the minibatch estimator;
the leave-one-out k-NN probe against a brute force of DINO's weighted vote."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from layerscope.metrics.probe import default_k, knn_predict, probe
from layerscope.metrics.similarity import cka, cka_matrix, choose_estimator, gram, hsic_unbiased


def hsic_u_statistic(k: np.ndarray, l: np.ndarray) -> float:
    """HSIC_1 from its definition as a U-statistic (Song et al. 2012): over distinct indices,
    mean k_ij l_ij + mean k_ij l_qr - 2 mean k_ij l_iq."""
    n = len(k)
    pairs = list(itertools.permutations(range(n), 2))
    triples = list(itertools.permutations(range(n), 3))
    quads = list(itertools.permutations(range(n), 4))
    a = np.mean([k[i, j] * l[i, j] for i, j in pairs])
    b = np.mean([k[i, j] * l[q, r] for i, j, q, r in quads])
    c = np.mean([k[i, j] * l[i, q] for i, j, q in triples])
    return float(a + b - 2 * c)


def brute_rbf(x: np.ndarray) -> np.ndarray:
    d = np.array([[np.sum((a - b) ** 2) for b in x] for a in x])
    s = np.median([d[i, j] for i in range(len(x)) for j in range(len(x)) if i != j])
    return np.exp(-d / (2 * s))


def brute_cka(k: np.ndarray, l: np.ndarray) -> float:
    return hsic_u_statistic(k, l) / np.sqrt(hsic_u_statistic(k, k) * hsic_u_statistic(l, l))


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cka_equals_a_brute_force_of_the_definition(kernel):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5))
    y = np.tanh(x @ rng.normal(size=(5, 3))) + 0.3 * rng.normal(size=(8, 3))
    kx, ky = (x @ x.T, y @ y.T) if kernel == "linear" else (brute_rbf(x), brute_rbf(y))
    np.testing.assert_allclose(hsic_unbiased(kx, ky), hsic_u_statistic(kx, ky), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gram(x, kernel), kx, rtol=1e-9, atol=1e-12)
    assert cka(x, y, kernel) == pytest.approx(brute_cka(kx, ky), abs=1e-6)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cka_is_one_on_itself_symmetric_and_invariant_to_rotation_and_scale(kernel):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 12))
    y = x[:, :6] ** 2 + rng.normal(size=(60, 6))
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))  # an orthogonal transform
    assert cka(x, x, kernel) == pytest.approx(1.0, abs=1e-9)
    base = cka(x, y, kernel)
    assert 0.05 < base < 0.95
    assert cka(y, x, kernel) == pytest.approx(base, abs=1e-12)
    assert cka(x @ q, y, kernel) == pytest.approx(base, abs=1e-9)
    assert cka(7.5 * x, y, kernel) == pytest.approx(base, abs=1e-9)
    matrix, used = cka_matrix({0: x, 3: y}, {0: x, 3: y}, kernel, "full")
    assert used == "full"
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-9)


def test_independent_representations_score_near_zero_with_few_images():
    """The unbiased estimator: 50 images of 384 random features against 384 others."""
    rng = np.random.default_rng(2)
    values = [cka(rng.normal(size=(50, 384)), rng.normal(size=(50, 384))) for _ in range(5)]
    assert abs(np.mean(values)) < 0.05


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_minibatch_estimator_agrees_with_full_batch_on_500_images(kernel):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 32))
    layers = {0: x, 1: np.tanh(x @ rng.normal(size=(32, 48))) + 0.5 * rng.normal(size=(500, 48)),
              2: rng.normal(size=(500, 16)) + 0.3 * x[:, :16]}
    full, used_full = cka_matrix(layers, layers, kernel, "full")
    mini, used_mini = cka_matrix(layers, layers, kernel, "minibatch", batch_size=100)
    assert (used_full, used_mini) == ("full", "minibatch")
    assert np.abs(full - mini).max() < 0.02
    assert full.min() < 0.6  # the layers differ: the agreement is not that of identical inputs


def test_the_estimator_is_chosen_by_the_memory_of_the_gram_matrices():
    assert choose_estimator(500, 17) == "full"
    assert choose_estimator(100_000, 17) == "minibatch"
    assert choose_estimator(1000, 2, max_bytes=1000) == "minibatch"
    with pytest.raises(ValueError, match="estimator"):
        choose_estimator(10, 2, "exact")


def brute_knn(x, labels, k, t=0.07):
    """DINO's weighted vote, written out: cosine similarities, the k best other images, exp(sim / T) per label."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = []
    for i in range(len(x)):
        sims = sorted(((float(xn[i] @ xn[j]), j) for j in range(len(x)) if j != i), reverse=True)[:k]
        votes = {}
        for s, j in sims:
            votes[labels[j]] = votes.get(labels[j], 0.0) + np.exp(s / t)
        out.append(max(sorted(votes), key=lambda c: votes[c]))
    return np.array(out)


def test_knn_probe_equals_a_brute_force_of_the_weighted_vote():
    rng = np.random.default_rng(4)
    labels = np.array(["a", "b", "c"])[rng.integers(0, 3, 40)]
    x = rng.normal(size=(40, 6)) + 0.8 * (labels[:, None] == np.array(["a", "b", "c"])) @ rng.normal(size=(3, 6))
    for k in (1, 5, 20):
        np.testing.assert_array_equal(knn_predict(x, labels, k), brute_knn(x, labels, k))


def test_probe_is_leave_one_out_it_cannot_read_an_image_s_own_label():
    """Each image is its own nearest neighbour (cosine 1); with itself in the vote every label would be read
    back (100%), also labels unrelated to the features. Left out, the probe scores about chance."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 64))
    labels = rng.integers(0, 2, 200)
    result = probe(x, labels, k=5, permutations=200)
    assert result["accuracy"] < 0.65 and result["majority"] < 0.6 and result["p_value"] > 0.05
    with_self = np.array([labels[np.argmax(x @ x[i])] for i in range(len(x))])  # what a leaking probe would see
    assert (with_self == labels).all()


def test_probe_separates_clusters_and_reports_chance_and_a_ci():
    rng = np.random.default_rng(6)
    labels = np.repeat(["crack", "spot", "stain"], [10, 10, 20])
    centres = {c: rng.normal(size=8) * 5 for c in set(labels)}
    x = np.stack([centres[c] + rng.normal(size=8) for c in labels])
    result = probe(x, labels, permutations=200)
    assert result["k"] == 9  # k = 20, or fewer: the smallest class (10) minus the image itself
    assert result["accuracy"] == 1.0 and 0.9 < result["ci_low"] < 1.0 == result["ci_high"]  # Wilson: never [1, 1]
    assert result["majority"] == 0.5 and result["chance"] < 0.6 and (result["n_images"], result["n_classes"]) == (40, 3)
    assert default_k(["a"] * 50 + ["b"] * 50) == 20
    assert default_k(["a", "a", "b", "c"]) == 1  # singleton classes do not push k to 0
