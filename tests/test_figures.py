"""Publication figures (layerscope.figures) from two tiny finished runs, a ViT and a CNN, read back from disk."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from layerscope.figures.map_pictures import _depth_layers
from layerscope.figures.paper import KINDS
from layerscope.figures.score_plots import threshold_curves
from layerscope.analysis.saved import Study
from layerscope.results.maps_io import load_maps, save_maps

from .conftest import ROOT, run_main

SMALL = ["data.textures=[brick]", "data.defects=[scratch,spot]", "data.size=64", "threshold=[0.4,0.6]", "progress=false",
         "metrics.attention_distance=true"]
PNG = b"\x89PNG\r\n\x1a\n"


def _python(code: str | None, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, *([] if code is None else ["-c", code]), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    """A parent folder holding a finished tiny_vit run and a finished tiny_cnn run (the command's main)."""
    parent = tmp_path_factory.mktemp("study")
    for name, model in (("vit", "tiny_vit"), ("cnn", "tiny_cnn")):
        proc = run_main([f"model={model}", *SMALL, f"hydra.run.dir={parent / name}"], cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
    from layerscope.protocol import choose, write_choice
    from layerscope.analysis.pool import build_pool

    pool = build_pool(parent / "vit")  # a held-out choice (first image to choose on), for choice_stability
    try:
        write_choice(parent, choose(pool, "aupro", pool.images.index.to_numpy() == 0, n_boot=20, n_stability=20))
    finally:
        pool.close()
    return parent


@pytest.fixture(scope="module")
def made(study_dir) -> dict:
    """make_all on the parent, in a fresh interpreter that reports which modules it imported."""
    code = (
        "import json, sys\n"
        "from layerscope.figures.paper import make_all\n"
        "written = make_all(sys.argv[1])\n"
        "print(json.dumps({'written': {k: [str(p) for p in v] for k, v in written.items()},\n"
        "                  'backbones': 'layerscope.backbones' in sys.modules, 'torch': 'torch' in sys.modules}))\n"
    )
    proc = _python(code, str(study_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_make_all_writes_every_kind_as_png_and_pdf(study_dir, made):
    written = made["written"]
    assert set(written) == set(KINDS)
    assert written["fewshot_vs_layer"] == []  # needs a few-shot sweep (tests/test_fewshot.py draws one)
    for kind in (k for k in KINDS if k != "fewshot_vs_layer"):
        paths = [Path(p) for p in written[kind]]
        assert paths, f"{kind}: no file written"
        assert {p.suffix for p in paths} == {".png", ".pdf"}, kind
        for p in paths:
            assert p.parent == study_dir / "figures_paper"
            data = p.read_bytes()
            if p.suffix == ".png":
                assert data.startswith(PNG) and len(data) > 2048, p
            else:
                assert data.startswith(b"%PDF") and len(data) > 1024, p
    # two images per (model, method), two series; one curve figure per metric; one defect type each
    assert len(written["layer_head_grids"]) == 2 * 2 * 2
    assert len(written["metric_vs_layer"]) == 4 * 2
    assert {Path(p).stem for p in written["best_map_overlays"]} == {"best_map_scratch", "best_map_spot"}


@pytest.mark.slow
def test_pdf_text_is_truetype(made):
    pdf = Path(made["written"]["metric_vs_layer"][1]).read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # fonttype 42: embedded TrueType, not Type 3


@pytest.mark.slow
def test_never_loads_a_model(made):
    assert not made["backbones"], "layerscope.figures imported layerscope.backbones"
    assert not made["torch"], "layerscope.figures imported torch"


@pytest.mark.slow
def test_cli_prints_files_and_honours_options(study_dir, tmp_path):
    out = tmp_path / "figs"
    proc = _python(None, "-m", "layerscope.figures", str(study_dir / "vit"), "--out", str(out), "--metric", "auroc",
                   "--formats", "png", "--kinds", "metric_vs_layer", "vit_vs_cnn")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(out / "metric_vs_layer_auroc.png")]
    assert "vit_vs_cnn: needs a ViT run and a CNN run" in proc.stderr  # one run folder: the skip is explained


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "empty"])
def test_cli_bad_folder_exits_2(tmp_path, case):
    folder = tmp_path / "nope"
    if case == "empty":
        folder.mkdir()
    proc = _python(None, "-m", "layerscope.figures", str(folder))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(folder) in lines[0], proc.stderr


def test_depth_layers():
    assert _depth_layers(range(12)) == [2, 5, 8, 11]
    assert _depth_layers(range(5)) == [1, 2, 3, 4]
    assert _depth_layers([0, 1]) == [0, 1]
    assert _depth_layers([11]) == [11]


def _split_job(src: Path, dst: Path, layers: set[int] | None = None, thresholds: set[float] | None = None) -> None:
    """A copy of run ``src`` keeping some layers / thresholds (rows and saved maps)."""
    df = pd.read_csv(src / "results.csv", dtype={"head": str})
    if layers is not None:
        df = df[df["layer"].isin(layers)]
    if thresholds is not None:
        df = df[df["threshold"].isin(thresholds)]
    dst.mkdir(parents=True)
    df.to_csv(dst / "results.csv", index=False)
    shutil.copy(src / "done.txt", dst / "done.txt")  # its images are finished (load_results reads only those)
    for npz in (src / "maps").glob("*.npz"):
        d = load_maps(npz)
        keep = {k: v for k, v in d["maps"].items() if layers is None or k in layers}
        save_maps(dst / "maps" / npz.name, d["image"], d["mask"], keep, {k: d["names"][k] for k in keep}, d["meta"],
                  d["valid"])


@pytest.mark.slow
def test_jobs_splitting_layers_merge_and_repeats_stay_apart(study_dir, tmp_path):
    split = tmp_path / "split"
    _split_job(study_dir / "vit", split / "0", layers={0})
    _split_job(study_dir / "vit", split / "1", layers={1})
    study = Study(split)
    assert study.series() == ["tiny_vit · cls_attention"]
    assert sorted(study.maps("tiny_vit · cls_attention", "brick_spot_0")["maps"]) == [0, 1]

    repeat = tmp_path / "repeat"
    shutil.copytree(study_dir / "vit", repeat / "0")
    shutil.copytree(study_dir / "vit", repeat / "1")
    assert Study(repeat).series() == ["tiny_vit · cls_attention"]  # identical jobs are drawn once
    assert Study(repeat).merged == {"1": "0"}
    rows = pd.read_csv(repeat / "1" / "results.csv", dtype={"head": str})
    rows.assign(auroc=rows["auroc"] / 2).to_csv(repeat / "1" / "results.csv", index=False)  # another option's values
    assert Study(repeat).series() == ["tiny_vit · cls_attention · job 0", "tiny_vit · cls_attention · job 1"]


@pytest.mark.slow
def test_one_threshold_skips_threshold_curves(study_dir, tmp_path, caplog):
    _split_job(study_dir / "vit", tmp_path / "one", thresholds={0.4})
    with caplog.at_level("INFO", logger="layerscope.figures"):
        assert threshold_curves(tmp_path / "one", tmp_path / "out") == []
    assert "only one threshold" in caplog.text
    assert not (tmp_path / "out").exists()
