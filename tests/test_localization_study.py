"""Defect localisation end to end: MVTec layout, VOC objects, patch_knn, rescoring, the report."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from layerscope.cli.report import main as report_main
from layerscope.cli.rescore import main as rescore_main
from layerscope.data.mvtec_export import export_mvtec
from layerscope.data.mvtec import MVTecAD
from layerscope.data.voc import VOCObjects
from layerscope.analysis.leaderboard import bootstrap_auroc, bootstrap_mean, rank

from .conftest import run_main

FAST = ["model=tiny_vit", "progress=false", "figures.max_images=1"]


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    export_mvtec(root, textures=["brick"], defects=["scratch", "spot"], per_combination=2, good=2, train=3, size=64)
    return root


def test_export_writes_the_mvtec_layout(mvtec_root):
    cat = mvtec_root / "brick"
    assert sorted(p.name for p in (cat / "test").iterdir()) == ["good", "scratch", "spot"]
    assert len(list((cat / "train" / "good").glob("*.png"))) == 3
    mask = np.asarray(Image.open(cat / "ground_truth" / "spot" / "000_mask.png"))
    assert set(np.unique(mask)) == {0, 255}
    ds = MVTecAD(str(mvtec_root), "brick")
    assert len(ds) == 6 and {ds[i].category for i in range(6)} == {"good", "scratch", "spot"}
    assert ds[0].category == "good" and not ds[0].mask.any() and ds[2].mask.any()
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        export_mvtec(mvtec_root, textures=["brick"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cls_attention", "patch_knn"])
def test_mvtec_run_and_report(mvtec_root, tmp_path, method, capsys):
    out = tmp_path / method
    shots = ["method.n_references=3"] if method == "patch_knn" else []  # train/good holds 3: more is an error
    proc = run_main([*FAST, "data=mvtec", f"data.root={mvtec_root}", "data.category=brick", f"method={method}",
                     *shots, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(out / "results.csv", dtype={"head": str})
    assert set(df["category"]) == {"good", "scratch", "spot"}
    defective = df[df["category"] != "good"]
    for column in ("auroc", "aupro", "iou_oracle", "mass_in_mask", "pointing"):
        assert defective[column].between(0, 1).all(), column
    assert df.loc[df["category"] == "good", "auroc"].isna().all()  # undefined without defect pixels
    assert report_main([str(out), "--metric", "aupro", "--top", "3"]) == 0
    table = pd.read_csv(out / "report_aupro.csv")
    assert set(table["category"]) == {"all", "scratch", "spot"}
    assert (table["ci_low"] <= table["mean"] + 1e-9).all() and (table["mean"] <= table["ci_high"] + 1e-9).all()
    assert "## scratch" in (out / "report_aupro.md").read_text()
    assert report_main([str(out), "--metric", "image_auroc"]) == 0
    if method == "patch_knn":
        assert set(df["head"]) == {"knn"}


@pytest.mark.slow
def test_patch_knn_finds_the_defects_better_than_chance(tmp_path):
    """Even a random-init network's patch features separate a painted defect from its texture."""
    out = tmp_path / "knn"
    proc = run_main([*FAST, "model=tiny_cnn", "method=patch_knn", "data.textures=[brick,moon]",
                     "data.defects=[spot,scratch]", "data.size=64", "data.contrast=0.9", "layer=[0,1]",
                     f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(out / "results.csv")
    assert df.groupby("layer")["auroc"].mean().max() > 0.7


@pytest.mark.slow
def test_rescore_reproduces_and_extends_without_a_model(mvtec_root, tmp_path):
    out = tmp_path / "run"
    proc = run_main([*FAST, "data=mvtec", f"data.root={mvtec_root}", "data.category=brick", "threshold=0.6",
                     f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert rescore_main([str(out), "threshold=[0.6,0.8]", "--out", "again.csv"]) == 0
    first = pd.read_csv(out / "results.csv", dtype={"head": str})
    again = pd.read_csv(out / "again.csv", dtype={"head": str})
    assert sorted(again["threshold"].unique()) == [0.6, 0.8]
    same = again[again["threshold"] == 0.6].reset_index(drop=True)
    pd.testing.assert_frame_equal(same[first.columns], first, check_dtype=False)
    assert rescore_main([str(out), "threshold=0.5", "--out", "again.csv"]) == 2  # never overwrites
    assert rescore_main([str(out), "model=dino_vits8"]) == 2  # only scoring options


def write_voc(root, ids):
    for sub in ("JPEGImages", "SegmentationObject", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    for image_id in ids:
        Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        obj = np.zeros((40, 60), np.uint8)
        obj[5:15, 5:15], obj[20:35, 30:55] = 1, 2
        obj[4, 4:16] = 255  # border pixels: ignored
        cls = np.where(obj == 1, 8, np.where(obj == 2, 12, np.where(obj == 255, 255, 0))).astype(np.uint8)
        for arr, sub in ((obj, "SegmentationObject"), (cls, "SegmentationClass")):
            im = Image.fromarray(arr, mode="P")
            im.putpalette([0, 0, 0] * 256)
            im.save(root / sub / f"{image_id}.png")


@pytest.mark.slow
def test_voc_objects_and_run(tmp_path):
    write_voc(tmp_path / "VOC2012", ["2007_000001", "2007_000002"])
    ds = VOCObjects(str(tmp_path / "VOC2012"))
    assert len(ds) == 4
    s = ds[0]
    assert (s.id, s.category, s.group, int(s.mask.sum()), int(s.ignore.sum())) == \
        ("2007_000001_obj1", "cat", "2007_000001", 100, 12)
    assert ds[1].category == "dog"
    out = tmp_path / "run"
    proc = run_main([*FAST, "data=voc", f"data.root={tmp_path / 'VOC2012'}", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(out / "results.csv", dtype={"head": str})
    assert set(df["group"]) == {"2007_000001", "2007_000002"} and df["image"].nunique() == 4
    table = rank(df, "iou", include_best=True)
    best = table[(table["category"] == "all") & (table["head"] == "best")]
    assert (best["n"] == 2).all()  # averaged over objects first, then over the 2 images


@pytest.mark.parametrize("make,message", [
    (lambda r: None, "data.root=.*no such folder"),
    (lambda r: (r / "x" / "test" / "good").mkdir(parents=True), "data.category=brick: no folder"),
    (lambda r: (r / "brick" / "test" / "good").mkdir(parents=True), "no test images found for category brick"),
])
def test_mvtec_structure_errors(tmp_path, make, message):
    root = tmp_path / "root"
    make(root)
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        MVTecAD(str(root), "brick")


def broken_tree(tmp_path, problem):
    root = tmp_path / "mv"
    export_mvtec(root, textures=["brick"], defects=["spot"], per_combination=1, good=1, train=1, size=64)
    gt = root / "brick" / "ground_truth" / "spot"
    if problem == "missing_mask":
        (gt / "000_mask.png").unlink()
    elif problem == "extra_mask":
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(gt / "007_mask.png")
    elif problem == "size":
        Image.fromarray(np.zeros((32, 64), np.uint8)).save(gt / "000_mask.png")
    elif problem == "values":
        m = np.zeros((64, 64), np.uint8)
        m[3:9, 3:9] = 128
        m[0, 0] = 255
        Image.fromarray(m).save(gt / "000_mask.png")
    return root


@pytest.mark.parametrize("problem,message", [
    ("missing_mask", r"test/spot/000.png: no mask; expected .*ground_truth/spot/000_mask.png"),
    ("extra_mask", r"ground_truth/spot/007_mask.png: mask without an image"),
    ("size", r"000_mask.png: mask is 64x32, its image is 64x64; expected the same size"),
    ("values", r"000_mask.png: mask values \{0, 128, 255\} are not binary"),
])
def test_bad_mvtec_input_gives_one_line_naming_the_file(tmp_path, problem, message):
    root = broken_tree(tmp_path, problem)
    proc = run_main([*FAST, "data=mvtec", f"data.root={root}", "data.category=brick",
                     f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert re.search(message, errors[0]), errors[0]


def test_bootstrap_helpers():
    rng = np.random.default_rng(0)
    mean, low, high = bootstrap_mean(np.array([0.2, 0.4, 0.6, 0.8]), 2000, rng)
    assert mean == pytest.approx(0.5) and low < 0.5 < high and low >= 0.2 and high <= 0.8
    pos, neg = rng.random(12) + 0.3, rng.random(9)
    auc, low, high = bootstrap_auroc(pos, neg, 2000, rng)
    labels = np.r_[np.ones(12), np.zeros(9)]
    assert auc == pytest.approx(roc_auc_score(labels, np.r_[pos, neg]))
    assert low <= auc <= high
