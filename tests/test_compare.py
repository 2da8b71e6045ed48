"""layerscope-compare: CKA of every layer pair of every model pair on images matched by id, the k-NN probe,
their figures, the report page's section, W&B, and one-line errors for bad input."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from layerscope import study
from layerscope.cli.compare import main
from layerscope.comparison import PROBE_COLUMNS, SIMILARITY_COLUMNS
from layerscope.metrics.probe import probe
from layerscope.metrics.similarity import cka
from layerscope.results import load_representations

from .conftest import compose, run_cli

DATA = ["data.defects=[scratch,spot]", "data.per_combination=3", "data.size=64", "progress=false",
        "figures.grid=false", "dataset_metrics=false", "save_representations=true", "cache.enabled=false",
        "metrics.attention_distance=true"]


def run(out, *extra):
    study.run(compose(*DATA, *extra), out)
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A ViT and a CNN run on the same 12 images (2 defect types), as a sweep folder."""
    root = tmp_path_factory.mktemp("sweep")
    run(root / "0", "model=tiny_vit", "data.textures=[brick,moon]")
    run(root / "1", "model=tiny_cnn", "data.textures=[brick,moon]")
    return root


@pytest.fixture(scope="module")
def compared(sweep):
    assert main([str(sweep), "--probe", "category", "--boot", "200"]) == 0
    return sweep / "compare"


def one_error(capsys, call) -> str:
    try:
        code = call()
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.slow
def test_similarity_holds_every_ordered_layer_pair_and_equals_cka_of_the_saved_arrays(sweep, compared):
    sim = pd.read_csv(compared / "similarity.csv")
    assert tuple(sim.columns) == SIMILARITY_COLUMNS
    assert len(sim) == (2 + 5) ** 2  # ViT: 2 blocks, CNN: 5 stages; both orders, each model with itself
    assert set(sim["estimator"]) == {"full"} and set(sim["n_images"]) == {12}
    assert set(sim["kind"]) == {"mean"} and set(sim["kernel"]) == {"linear"}
    key = sim.set_index(["model_a", "layer_a", "model_b", "layer_b"])["value"]
    for (a, la, b, lb), value in key.items():
        assert key[(b, lb, a, la)] == pytest.approx(value, abs=1e-12)  # symmetric, both orders written
        if a == b and la == lb:
            assert value == pytest.approx(1.0, abs=1e-9)
    ids_v, vit = load_representations(sweep / "0")
    ids_c, cnn = load_representations(sweep / "1")
    order = [ids_c.index(i) for i in ids_v]
    assert key[("tiny_vit", 1, "tiny_cnn", 3)] == pytest.approx(cka(vit[1], cnn[3][order]), abs=1e-9)
    names = {p.name for p in compared.iterdir()}
    for pair in ("tiny_vit__tiny_vit", "tiny_vit__tiny_cnn", "tiny_cnn__tiny_cnn"):
        assert {f"cka_{pair}_mean_linear.png", f"cka_{pair}_mean_linear.pdf"} <= names
    assert {"probe_category_mean.png", "attention_distance.png", "attention_distance.pdf"} <= names


@pytest.mark.slow
def test_probe_table_is_the_probe_of_the_runs_category(sweep, compared):
    table = pd.read_csv(compared / "probe.csv")
    assert tuple(table.columns) == PROBE_COLUMNS
    assert len(table) == 2 + 5 and set(table["label"]) == {"category"} and set(table["n_classes"]) == {2}
    results = pd.read_csv(sweep / "1" / "results.csv").drop_duplicates("image").set_index("image")["category"]
    ids, cnn = load_representations(sweep / "1")
    want = probe(cnn[2], results[ids].to_numpy(), permutations=200)
    row = table[(table["model"] == "tiny_cnn") & (table["layer"] == 2)].iloc[0]
    assert row["k"] == want["k"] == 5  # 6 images per class, minus the image itself
    assert row["accuracy"] == pytest.approx(want["accuracy"]) and row["majority"] == pytest.approx(0.5)
    assert row["chance"] == pytest.approx(want["chance"]) and row["p_value"] == pytest.approx(want["p_value"])
    assert row["null_q05"] <= row["chance"] <= row["null_q95"] and row["permutations"] == 200
    assert row["interval"] == "wilson" and row["ci_low"] < row["ci_high"]
    assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]


@pytest.mark.slow
def test_images_are_matched_by_id_not_by_row(sweep, compared):
    """The CNN's images in another order, two of them missing: the CKA of the shared images, matched by id."""
    from layerscope.comparison import load_models, similarity_table

    (vit, cnn), _ = load_models([sweep])
    order = np.random.default_rng(0).permutation(len(cnn.ids))[:10]
    cnn.ids = [cnn.ids[i] for i in order]
    cnn.arrays = {layer: a[order] for layer, a in cnn.arrays.items()}
    table = similarity_table([vit, cnn]).set_index(["model_a", "layer_a", "model_b", "layer_b"])
    assert set(table.loc["tiny_vit"].loc[:, "n_images"]) == {10, 12}  # with itself: 12; with the CNN: 10
    keep = [vit.ids.index(i) for i in cnn.ids]
    for la, lb in ((0, 0), (1, 3), (1, 4)):
        want = cka(vit.arrays[la][keep], cnn.arrays[lb])
        assert table.loc[("tiny_vit", la, "tiny_cnn", lb), "value"] == pytest.approx(want, abs=1e-9)


@pytest.mark.slow
def test_fewer_than_10_shared_images_is_one_line(sweep, tmp_path, capsys):
    few = run(tmp_path / "few", "model=tiny_vit", "data.textures=[brick]", "data.per_combination=2")  # 4 images
    line = one_error(capsys, lambda: main([str(sweep / "1"), str(few), "--out", str(tmp_path / "o")]))
    # 2 of the 4 shared ids are other images at another data.per_combination: matched by content, 2 are left
    assert "share 4 image ids, but 2 of them are other images" in line and "2 images in common" in line
    assert not (tmp_path / "o" / "similarity.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--kind", "token"], "--kind: invalid choice"),
    (["--kernel", "poly"], "--kernel: invalid choice"),
    (["--estimator", "exact"], "--estimator: invalid choice"),
    (["--probe", "colour"], "--probe colour: no such column"),
    (["--probe", "head"], "--probe head: not a label of images"),
    (["--probe", "category", "--k", "12"], "--k 12: expected 1..11"),
    (["--probe", "category", "--group", "colour"], "--group colour: no such column"),
    (["--probe", "category", "--group", "head"], "--group head: not a label of images"),
    (["--group", "category"], "--group needs --probe LABEL"),
    (["--probe", "category", "--interval", "bootstrap"], "--interval: invalid choice"),
    (["--grid", "2"], "--grid and --max-cells apply to --kind patches (got --kind mean)"),
    (["--kind", "patches", "--grid", "9"], "--grid 9: the coarsest compared layer has 2x2 cells; expected at most 2"),
    (["--k", "0"], "--k: '0': expected an int >= 1"),
    (["--formats", "docx"], "--formats docx"),
    (["--depth", "deep"], "--depth: invalid choice"),
])
def test_bad_options_get_one_line_and_exit_2(sweep, capsys, args, message):
    line = one_error(capsys, lambda: main([str(sweep), "--out", str(sweep / "bad"), *args]))
    assert message in line, line


@pytest.mark.slow
def test_bad_folders_get_one_line(sweep, tmp_path, capsys):
    assert "no such folder" in one_error(capsys, lambda: main([str(tmp_path / "nowhere")]))
    assert "--out DIR is needed" in one_error(capsys, lambda: main([str(sweep / "0"), str(sweep / "1")]))
    bare = tmp_path / "bare"
    study.run(compose(*[a for a in DATA if a != "save_representations=true"], "model=tiny_cnn",
                      "data.textures=[brick]"), bare)
    assert "no run with saved representations" in one_error(capsys, lambda: main([str(bare)]))
    assert "no model below" in one_error(capsys, lambda: main([str(sweep / "1"), "--kind", "cls"]))


@pytest.mark.slow
def test_cls_kind_leaves_the_cnn_out_with_a_warning(sweep, tmp_path, capsys):
    assert main([str(sweep), "--kind", "cls", "--out", str(tmp_path / "cls"), "--formats", "png"]) == 0
    assert "tiny_cnn has no cls representations" in capsys.readouterr().err
    sim = pd.read_csv(tmp_path / "cls" / "similarity.csv")
    assert set(sim["model_a"]) == {"tiny_vit"} and set(sim["kind"]) == {"cls"}


@pytest.mark.slow
def test_report_page_shows_heatmaps_probe_and_attention_distance_escaped(sweep, compared, tmp_path):
    from layerscope.view import build

    page = build(sweep, tmp_path / "page.html", n_boot=10).read_text()
    section = page[page.index("<section id=compare>"):]
    section = section[:section.index("</section>")]
    assert section.count("<table class=heat>") == 3
    assert "k-NN probe of category" in section and "How far each head looks" in section
    assert "href=\"#compare\"" in page
    hostile = tmp_path / "hostile"
    shutil.copytree(sweep, hostile, ignore=shutil.ignore_patterns("maps", "report*"))
    sim = pd.read_csv(hostile / "compare" / "similarity.csv")
    sim["model_a"] = sim["model_a"].str.replace("tiny_vit", "<script>alert(1)</script>")
    sim.to_csv(hostile / "compare" / "similarity.csv", index=False)
    page = build(hostile, tmp_path / "hostile.html", n_boot=10).read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page


@pytest.mark.slow
def test_a_run_with_wandb_logs_its_cka_and_probe(tmp_path, monkeypatch):
    from layerscope.comparison import probe_table, load_models
    from layerscope.loggers.offline import read_offline_run

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"  # a process of its own: W&B has written the whole run file once it exits
    proc = run_cli([*DATA, "model=tiny_vit", "data.textures=[brick,moon]", "logger=wandb", f"hydra.run.dir={out}"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = read_offline_run(out)
    assert logged["exit_code"] == 0
    summary, history = logged["summary"], logged["history"]
    tables = {key.split("/")[0]: row[f"{key.split('/')[0]}/nrows"] for row in history for key in row
              if key.endswith("/_type") and row[key] == "table-file"}
    assert tables["cka"] == 4 and tables["probe"] == 2  # 2 x 2 layers; 2 layers
    models, _ = load_models([out])
    want = probe_table(models, "category").set_index("layer")["accuracy"]
    curve = {row["layer"]: row["probe/category/mean/tiny_vit"] for row in logged["history"]
             if "probe/category/mean/tiny_vit" in row}
    assert curve == pytest.approx(want.to_dict())
    assert summary["probe/category/mean/tiny_vit/best"] == pytest.approx(want.max())
    assert any(k.startswith("cka/tiny_vit__tiny_vit") for row in logged["history"] for k in row)


@pytest.mark.slow
def test_compare_logs_its_tables_to_wandb(sweep, tmp_path):
    import os
    import subprocess
    import sys

    from layerscope.loggers.offline import read_offline_run

    from .conftest import ROOT

    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run([sys.executable, "-m", "layerscope.cli.compare", str(sweep), "--probe", "category", "--out",
                           str(out), "--formats", "png", "--logger", "wandb"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = read_offline_run(out)
    keys = {k for row in logged["history"] for k in row}
    assert {"cka/_type", "probe/_type", "probe/category/mean/tiny_cnn", "probe/category/mean/tiny_cnn/null_q95",
            "probe/category_mean/_type"} <= keys
    assert any(k.startswith("cka/tiny_vit__tiny_cnn") for k in keys)


def test_the_experiment_composes_for_the_defects_and_for_the_photos():
    from layerscope.plan import build_dataset

    defects = compose("experiment=vit_vs_cnn_representations")
    assert defects.save_representations and defects.metrics.attention_distance and defects.data.per_combination == 3
    assert len(build_dataset(defects)) == 48
    photos = compose("experiment=vit_vs_cnn_representations", "data=samples", "~data.per_combination")
    assert photos.save_representations and len(build_dataset(photos)) == 5


@pytest.mark.slow
def test_compare_patches_and_defect_kinds_end_to_end(sweep, tmp_path, capsys):
    """--kind patches: rows = image x cell on the coarsest layer's grid (the CNN's last stage: 2 x 2), the
    probe grouped by image; --kind defect: the images with a defect (all 12 here)."""
    assert main([str(sweep), "--kind", "patches", "--probe", "category", "--out", str(tmp_path / "p"),
                 "--formats", "png"]) == 0
    sim = pd.read_csv(tmp_path / "p" / "similarity.csv")
    assert set(sim["n_images"]) == {12 * 4} and set(sim["kind"]) == {"patches"}
    table = pd.read_csv(tmp_path / "p" / "probe.csv")
    assert set(table["group"]) == {"image"} and set(table["n_groups"]) == {12} and set(table["n_images"]) == {48}
    assert "(48 rows (image x cell)" in capsys.readouterr().err
    assert main([str(sweep), "--kind", "defect", "--probe", "category", "--group", "source", "--out",
                 str(tmp_path / "d"), "--formats", "png"]) == 0
    table = pd.read_csv(tmp_path / "d" / "probe.csv")
    assert set(table["group"]) == {"source"} and set(table["n_images"]) == {12} and set(table["n_groups"]) == {2}
