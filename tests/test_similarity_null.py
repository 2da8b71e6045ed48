"""The similarity null and estimators on data whose answer is known: independent Gaussians (HSIC_1 CKA
about 0, the biased one well above; p < 0.05 about 5% of the time under the permutation null) and
identical representations (p = 1 / (permutations + 1)); the table and the command that carry them."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from layerscope.metrics.measures import MEASURES, Options, compare

PERMS = 200


def test_on_independent_gaussians_hsic1_cka_averages_zero_and_the_biased_one_lies_well_above():
    full, biased = [], []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        x, y = rng.normal(size=(32, 64)), rng.normal(size=(32, 64))
        full.append(MEASURES["cka"].value(x, y, Options(estimator="full")))
        biased.append(MEASURES["cka"].value(x, y, Options(estimator="biased")))
    assert abs(np.mean(full)) < 0.01
    assert np.mean(biased) > 0.5 and min(biased) > max(full)


def _p_values(name: str, seeds: int = 100, n: int = 24) -> np.ndarray:
    measure, opts = MEASURES[name], Options(knn_k=5)
    p = []
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        xs, ys = {0: rng.normal(size=(n, 6))}, {0: rng.normal(size=(n, 5))}
        p.append(compare(xs, ys, measure, opts, n_perm=PERMS, n_boot=0, seed=seed)[3][0][0]["p_value"])
    return np.array(p)


@pytest.mark.parametrize("name", ["cka", "rsa", "mknn", "cknna"])
def test_independent_representations_reach_p_below_005_about_5_percent_of_the_time(name):
    share = float(np.mean(_p_values(name) < 0.05))
    assert 0.01 <= share <= 0.10, share


@pytest.mark.slow
@pytest.mark.parametrize("name", ["procrustes", "svcca", "pwcca"])
def test_independent_representations_reach_p_below_005_about_5_percent_of_the_time_svd_measures(name):
    share = float(np.mean(_p_values(name) < 0.05))
    assert 0.01 <= share <= 0.10, share


@pytest.mark.parametrize("name", list(MEASURES))
def test_identical_representations_beat_every_permutation(name):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 6))
    _, _, values, columns = compare({0: x}, {0: x.copy()}, MEASURES[name], Options(knn_k=5), n_perm=PERMS, n_boot=50)
    assert values[0, 0] == pytest.approx(1.0, abs=1e-9)
    row = columns[0][0]
    assert row["p_value"] <= 1 / (PERMS + 1) + 1e-12
    assert row["null_mean"] < row["null_q95"] < 1
    assert row["calibrated"] == pytest.approx(1.0, abs=1e-9)


def test_biased_estimator_gets_its_null_and_interval_and_minibatch_says_it_has_none():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(40, 5))
    y = x @ rng.normal(size=(5, 3)) + rng.normal(size=(40, 3))
    for estimator in ("full", "biased"):
        row = compare({0: x}, {0: y}, MEASURES["cka"], Options(estimator=estimator), n_perm=100, n_boot=100)[3][0][0]
        assert row["p_value"] < 0.05 and row["ci_low"] < row["ci_high"]
    _, _, values, columns = compare({0: x}, {0: y}, MEASURES["cka"], Options(estimator="minibatch", batch_size=10),
                                    n_perm=100, n_boot=100)
    assert np.isfinite(values[0, 0]) and np.isnan(columns[0][0]["p_value"]) and np.isnan(columns[0][0]["ci_low"])


def _fake_runs(root, n=30, seed=0):
    """Two run folders of saved representations (no model run): a 3-layer and a 2-layer model."""
    from layerscope.results.layout import REPRESENTATION_IDS, REPRESENTATIONS, RESULTS, SUMMARY

    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 8))
    for name, widths in (("vit", (8, 6, 4)), ("cnn", (5, 3))):
        folder = root / name / REPRESENTATIONS
        folder.mkdir(parents=True)
        (root / name / RESULTS).write_text("image,category,model,method,layer,head,threshold\n")
        (root / name / SUMMARY).write_text("{}")  # a finished run
        (folder / REPRESENTATION_IDS).write_text("".join(f"img{i}\n" for i in range(n)))
        for layer, width in enumerate(widths):
            z = np.tanh(base @ rng.normal(size=(8, width))) + 0.2 * layer * rng.normal(size=(n, width))
            np.save(folder / f"mean_layer_{layer}.npy", z.astype(np.float32))
    return [root / "vit", root / "cnn"]


def test_similarity_table_names_each_measure_and_convention_in_long_form(tmp_path):
    from layerscope.comparison import SIMILARITY_COLUMNS, load_models, monotonicity_table, similarity_table

    models, _ = load_models(_fake_runs(tmp_path))
    table = similarity_table(models, measures="all", estimator="biased", n_perm=20, n_boot=20)
    assert tuple(table.columns) == SIMILARITY_COLUMNS
    assert list(dict.fromkeys(table["measure"])) == list(MEASURES)
    assert len(table) == len(MEASURES) * (3 + 2) ** 2
    cka = table[table["measure"] == "cka"]
    assert set(cka["estimator"]) == {"biased"} and cka["convention"].str.contains("Kornblith et al. 2019").all()
    assert table.loc[table["measure"] == "mknn", "convention"].str.contains("k = 10").all()
    assert table[["ci_low", "ci_high", "p_value"]].notna().all().all()
    rsa = table[table["measure"] == "rsa"].set_index(["model_a", "layer_a", "model_b", "layer_b"])["value"]
    x, y = models[0].arrays[1], models[1].arrays[0]
    assert rsa[(models[0].label, 1, models[1].label, 0)] == pytest.approx(MEASURES["rsa"].value(x, y), abs=1e-12)
    pw = table[table["measure"] == "pwcca"].set_index(["model_a", "layer_a", "model_b", "layer_b"])["value"]
    assert pw[(models[1].label, 0, models[0].label, 1)] == pytest.approx(MEASURES["pwcca"].value(y, x), abs=1e-12)
    mono = monotonicity_table(table)
    assert len(mono) == 2 * len(MEASURES) and set(mono["n_layers"]) == {3, 2}
    assert mono[mono["n_layers"] == 2]["spearman"].isna().all()  # two layers: one distance, no correlation


@pytest.mark.slow  # draws figures
def test_compare_command_writes_the_measures_and_refuses_bad_options(tmp_path, capsys):
    from layerscope.cli.compare import main

    runs = _fake_runs(tmp_path)
    out = tmp_path / "out"
    code = main([*map(str, runs), "--out", str(out), "--measure", "cka", "rsa", "--permutations", "30", "--boot", "30",
                 "--formats", "png", "--kernel", "rbf", "--rbf-sigma", "0.8", "--rbf-median", "all"])
    assert code == 0
    sim = pd.read_csv(out / "similarity.csv")
    assert set(sim["measure"]) == {"cka", "rsa"} and (sim["permutations"] == 30).all()
    assert sim.loc[sim["measure"] == "cka", "convention"].str.contains("0.8 x the median distance").all()
    assert (out / "monotonicity.csv").exists() and (out / "cka_vit__cnn_mean_rbf.png").exists()
    assert "layer monotonicity vit cka" in capsys.readouterr().err
    for bad, message in ((["--rbf-sigma", "0"], "--rbf-sigma: '0': expected a number > 0"),
                         (["--measure", "cca"], "--measure: invalid choice"),
                         (["--knn-k", "99", "--measure", "mknn"], "--knn-k 99: expected 1..29"),
                         (["--permutations", "-1"], "--permutations: '-1': expected an int >= 0")):
        before = (out / "similarity.csv").read_bytes()
        assert _exit_code(main, [*map(str, runs), "--out", str(out), *bad]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning: content")]
        assert len(errors) == 1 and message in errors[0], errors  # (the runs here are saved without image hashes)
        assert (out / "similarity.csv").read_bytes() == before


def _exit_code(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # the parser's one-line error
        return int(e.code)


def test_the_benchmark_times_each_measure_on_two_synthetic_models():
    from layerscope.bench.compare_cost import models, similarity_times

    group = models(n=20, widths=((6, 6, 6), (4, 5)))
    assert [len(m.arrays) for m in group] == [3, 2] and group[0].ids == group[1].ids
    rows = similarity_times(["cka", "mknn"], n=20, n_perm=10, n_boot=10, widths=((6, 6, 6), (4, 5)))
    assert [r["measure"] for r in rows] == ["cka", "mknn"]
    assert all(r["rows"] == 25 and r["seconds"] > 0 and r["layers"] == "3+2" for r in rows)
    assert all(r["threads"] >= 1 and r["load"] >= 0 for r in rows)


@pytest.mark.slow
def test_bench_compare_prints_the_time_per_measure(tmp_path, capsys):
    from layerscope.cli.bench import main

    out = tmp_path / "b.csv"
    assert main(["--compare", "--quick", "--images", "20", "--measures", "cka", "rsa", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cka:" in printed and "rsa:" in printed and "total:" in printed and "threads, load average" in printed
    assert pd.read_csv(out)["measure"].tolist() == ["cka", "rsa"]


def test_the_page_dims_cells_within_the_null_and_lists_each_measure_with_its_monotonicity(tmp_path):
    from layerscope.comparison import load_models, monotonicity_table, similarity_table
    from layerscope.view.comparison_section import compare_section

    models, _ = load_models(_fake_runs(tmp_path / "runs"))
    table = similarity_table(models, measures=["cka", "mknn"], n_perm=30, n_boot=20, knn_k=5)
    folder = tmp_path / "page" / "compare"
    folder.mkdir(parents=True)
    table.to_csv(folder / "similarity.csv", index=False)
    monotonicity_table(table).to_csv(folder / "monotonicity.csv", index=False)
    html = compare_section(pd.DataFrame(), tmp_path / "page")
    cka = table[table["measure"] == "cka"]
    assert html.count("class=null") == int((cka["p_value"] >= 0.05).sum()) > 0  # every cell within the null dimmed
    assert "<h3>Similarity measures" in html and "<td>mknn</td>" in html
    rho = monotonicity_table(table).set_index(["model", "measure"]).loc[("vit", "cka"), "spearman"]
    assert f"{rho:+.2f}" in html
    assert "<td>pwcca</td>" not in html  # the invariance table lists the measures shown


def test_canonical_correlations_of_fewer_images_than_dimensions_are_flagged_not_calibrated():
    """Two independent random layers, 20 images of 40 dimensions: PWCCA is 1 by construction (any 20 points
    are matched exactly by some direction of each), so is its null, and ``calibrated`` is left undefined;
    SVCCA, on the directions holding 99% of the variance, is near 1 all the same; the command's warning
    says why. With 60 images of 5 dimensions neither happens."""
    from layerscope.comparison import Model, cca_warnings, similarity_table

    rng = np.random.default_rng(3)

    def models(n, d):
        ids = [f"i{j}" for j in range(n)]
        return [Model(label, [], ids, {0: rng.normal(size=(n, d)).astype(np.float32)}) for label in ("a", "b")]

    wide = models(20, 40)
    table = similarity_table(wide, measures=["svcca", "pwcca"], n_perm=20, n_boot=10)
    cross = table[table["model_a"] != table["model_b"]]
    pwcca, svcca = cross[cross["measure"] == "pwcca"], cross[cross["measure"] == "svcca"]
    np.testing.assert_allclose(pwcca["value"], 1.0, atol=1e-6)
    np.testing.assert_allclose(pwcca["null_mean"], 1.0, atol=1e-6)
    assert pwcca["calibrated"].isna().all() and (svcca["value"] > 0.9).all()
    lines = cca_warnings(wide, table)
    assert len(lines) == 2 and lines[0].startswith("svcca: 4 of 4 layer pairs have no more images than dimensions")
    narrow = models(60, 5)
    table = similarity_table(narrow, measures=["svcca"], n_perm=20, n_boot=10)
    cross = table[table["model_a"] != table["model_b"]]
    assert (cross["value"] < 0.9).all() and cross["calibrated"].notna().all()
    assert cca_warnings(narrow, table) == []
