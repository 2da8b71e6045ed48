"""The k-NN probe's chance level as a label-permutation null under the same scheme, its binomial intervals,
and leave-one-group-out, on the synthetic design where it matters: 4 textures x 4 defect types x 3 images."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from layerscope.comparison import probe_warnings
from layerscope.metrics.probe import binomial_interval, below_null, knn_predict, probe


def design(seed: int = 0):
    """48 images: texture x defect x 3, each defect type once in every texture (balanced)."""
    rows = list(itertools.product(range(4), range(4), range(3)))
    texture = np.array([f"t{t}" for t, _, _ in rows])
    defect = np.array([f"d{d}" for _, d, _ in rows])
    return texture, defect, np.random.default_rng(seed)


def encodes(factor: np.ndarray, rng: np.random.Generator, scale: float = 5.0, dims: int = 16) -> np.ndarray:
    """A representation that holds ``factor`` only (a centre per value) plus small noise."""
    values = sorted(set(factor.tolist()))
    centres = rng.normal(size=(len(values), dims)) * scale
    return np.stack([centres[values.index(v)] for v in factor]) + rng.normal(size=(len(factor), dims)) * 0.3


def brute_wilson(hits: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson (1927): the p with |hits/n - p| = z sqrt(p (1 - p) / n), solved as a quadratic in p."""
    phat = hits / n
    a, b, c = 1 + z * z / n, -(2 * phat + z * z / n), phat * phat
    disc = np.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


def test_a_nuisance_that_outvotes_the_label_scores_below_its_null_and_warns():
    texture, defect, rng = design(0)
    x = encodes(texture, rng)  # clusters by texture only; texture is balanced against the defect type
    result = probe(x, defect, permutations=200, seed=1)
    assert result["k"] == 11 and result["majority"] == 0.25
    # leave-one-out: the 11 other images of the texture hold 2 of its own type and 3 of each other type
    assert result["accuracy"] < result["null_q05"] < result["chance"] < result["null_q95"]
    assert result["p_below"] < 0.05 and result["p_value"] > 0.9 and below_null(result)
    table = pd.DataFrame([{"model": "toy", "layer": 0, "kind": "mean", "label": "defect", "group": "", **result}])
    (warning,) = probe_warnings(table)
    assert "clusters by another factor; try --group" in warning and "layers 0" in warning


def test_leaving_the_nuisance_out_whole_scores_within_its_null():
    texture, defect, rng = design(0)
    x = encodes(texture, rng)
    result = probe(x, defect, groups=texture, permutations=200, seed=1)
    assert result["k"] == 11 and result["n_groups"] == 4
    assert result["null_q05"] <= result["accuracy"] <= result["null_q95"]
    assert result["p_value"] > 0.05 and result["p_below"] > 0.05 and not below_null(result)
    table = pd.DataFrame([{"model": "toy", "layer": 0, "kind": "mean", "label": "defect", "group": "texture",
                           **result}])
    assert probe_warnings(table) == []


def test_a_representation_of_the_label_scores_far_above_its_null_under_both_schemes():
    texture, defect, rng = design(2)
    x = encodes(defect, rng)
    for groups in (None, texture):
        result = probe(x, defect, groups=groups, permutations=200, seed=3)
        assert result["accuracy"] == 1.0 and result["null_q95"] < 0.5
        assert result["p_value"] == pytest.approx(1 / 201) and result["ci_high"] - result["ci_low"] > 0.01


def test_leave_one_group_out_never_votes_from_the_own_group():
    """Brute force: with groups, each prediction equals the plain vote over the rows of the other groups."""
    texture, defect, rng = design(4)
    x = rng.normal(size=(48, 8))
    got = knn_predict(x, defect, 5, groups=texture)
    for i in range(48):
        others = np.flatnonzero(texture != texture[i])
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        sims = xn[others] @ xn[i]
        best = others[np.argsort(-sims)[:5]]
        votes = {}
        for j in best:
            votes[defect[j]] = votes.get(defect[j], 0.0) + np.exp(float(xn[i] @ xn[j]) / 0.07)
        assert got[i] == max(sorted(votes), key=lambda c: votes[c])


def test_a_null_of_an_unrelated_label_is_calibrated():
    """Labels independent of the features: over seeds, p < 0.05 about 5% of the time (the null is the test's)."""
    hits = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        x = rng.normal(size=(40, 6))
        labels = rng.integers(0, 2, 40)
        hits += probe(x, labels, k=5, permutations=99, seed=seed)["p_value"] < 0.05
    assert hits <= 6  # expected 2 of 40; 6 or more has probability < 0.01


def test_intervals_never_collapse_and_equal_their_formulas():
    for hits, n in [(0, 48), (48, 48), (1, 10), (17, 48), (0, 1)]:
        low, high = binomial_interval(hits, n, "wilson")
        want = brute_wilson(hits, n)
        assert (low, high) == pytest.approx(want, abs=1e-12) and high - low > 0
        cp_low, cp_high = binomial_interval(hits, n, "clopper-pearson")
        assert cp_high - cp_low > 0
        # Clopper-Pearson's definition: each end is the p at which the binomial tail beyond the count is 2.5%
        if hits > 0:
            assert binom.sf(hits - 1, n, cp_low) == pytest.approx(0.025, abs=1e-9)
        if hits < n:
            assert binom.cdf(hits, n, cp_high) == pytest.approx(0.025, abs=1e-9)
    # Clopper-Pearson at 0 hits has a closed form: 1 - (alpha / 2) ** (1 / n)
    assert binomial_interval(0, 48, "clopper-pearson") == pytest.approx((0.0, 1 - 0.025 ** (1 / 48)))
    assert binomial_interval(0, 48, "clopper-pearson")[1] == pytest.approx(0.074, abs=5e-4)
    with pytest.raises(ValueError, match="interval='bootstrap': expected one of wilson, clopper-pearson"):
        binomial_interval(3, 10, "bootstrap")


def test_cells_of_one_image_are_permuted_together():
    """Rows that are cells of images (one label per image): the null permutes the images' labels, so each
    permutation keeps an image's cells together, and the probe (grouped by image) cannot read a cell's own
    image: random images score about chance."""
    rng = np.random.default_rng(7)
    images = np.repeat(np.arange(30), 4)
    labels = np.repeat(rng.integers(0, 3, 30), 4)
    x = np.repeat(rng.normal(size=(30, 8)), 4, axis=0) + rng.normal(size=(120, 8)) * 0.05
    leaky = probe(x, labels, permutations=50, seed=0)  # plain leave-one-out reads the image's other cells
    assert leaky["accuracy"] == 1.0
    grouped = probe(x, labels, groups=images, permutations=200, seed=0)
    assert grouped["p_value"] > 0.05 and abs(grouped["chance"] - 1 / 3) < 0.1
