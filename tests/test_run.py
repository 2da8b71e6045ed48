"""The command line end to end: the design-card command, list sweeps, multirun."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from layerscope.results.maps_io import load_maps
from layerscope.cli.run import listify_sweeps

from .conftest import run_cli, run_main

SMALL_DATA = ["data.textures=[brick]", "data.defects=[scratch,spot]", "data.size=64", "progress=false"]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_listify_sweeps():
    assert listify_sweeps(["layer=range(0,3)", "threshold=0.5,0.6", "model=a"]) == \
        ["layer=[0,1,2]", "threshold=[0.5,0.6]", "model=a"]
    assert listify_sweeps(["-m", "layer=range(0,3)"]) == ["-m", "layer=range(0,3)"]
    assert listify_sweeps(["layer=[0,1]", "head=all"]) == ["layer=[0,1]", "head=all"]


@pytest.mark.slow
def test_design_card_command_one_process_all_layers(tmp_path):
    out = tmp_path / "run"
    proc = run_main(["model=dino_vits8", "layer=range(0,12)", "model.pretrained=false", "model.img_size=64",
                     *SMALL_DATA, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(out / "results.csv")
    assert sorted({int(r["layer"]) for r in rows}) == list(range(12))
    # 2 images x 12 layers x (6 heads + mean + best) x 1 threshold
    assert len(rows) == 2 * 12 * 8
    assert {r["head"] for r in rows} == {*map(str, range(6)), "mean", "best"}
    assert all(0 <= float(r["iou"]) <= 1 and 0 <= float(r["auroc"]) <= 1 for r in rows)
    saved = load_maps(out / "maps" / "brick_spot_0.npz")
    assert sorted(saved["maps"]) == list(range(12)) and saved["maps"][0].shape == (7, 8, 8)
    assert saved["mask"].shape == (64, 64) and saved["mask"].any()
    assert (out / "figures" / "brick_spot_0_grid.png").stat().st_size > 1000
    assert (out / "config.yaml").exists()


@pytest.mark.slow
def test_thresholds_listed_in_one_run_and_best_head(tmp_path):
    out = tmp_path / "run"
    proc = run_main(["model=tiny_vit", "layer=-1", "threshold=0.4,0.6,0.8", *SMALL_DATA, f"hydra.run.dir={out}"],
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(out / "results.csv")
    assert sorted({float(r["threshold"]) for r in rows}) == [0.4, 0.6, 0.8]
    for t in ("0.4", "0.6", "0.8"):
        for image in ("brick_scratch_0", "brick_spot_0"):
            group = [r for r in rows if r["threshold"] == t and r["image"] == image]
            best = next(r for r in group if r["head"] == "best")
            heads = [float(r["iou"]) for r in group if r["head"] in ("0", "1")]
            assert float(best["iou"]) == max(heads)
            assert best["best_head"] in ("0", "1")


@pytest.mark.slow
def test_cnn_run_uses_feature_reductions(tmp_path):
    out = tmp_path / "run"
    proc = run_main(["model=tiny_cnn", *SMALL_DATA, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(out / "results.csv")
    assert {r["method"] for r in rows} == {"features"}
    assert {r["head"] for r in rows} == {"l2", "mean_abs", "pca"}
    assert sorted({int(r["layer"]) for r in rows}) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_multirun_two_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_main(["-m", "model=tiny_vit", "layer=0,1", *SMALL_DATA, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    layers = [sorted({r["layer"] for r in read_rows(sweep / str(job) / "results.csv")}) for job in (0, 1)]
    assert layers == [["0"], ["1"]]


@pytest.mark.slow
def test_bad_option_exits_2_with_one_line(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(["model=tiny_vit", "layer=7", *SMALL_DATA, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: layer=7 is out of range: this model has 2 layers, valid -2..1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "results.csv").exists()
