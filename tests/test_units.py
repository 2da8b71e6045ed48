"""Unit tests of the run's parts without a subprocess: cache keys and eviction, resume bookkeeping,
the plan's option checks, the metric table and the one row builder."""
from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from layerscope.results import catalog, layout
from layerscope.results.cache import MapCache, config_key, image_key
from layerscope.results.rundir import comparable, is_complete, previous_progress, read_done, write_summary
from layerscope.results.table import COLUMNS, METRICS, ResultsWriter
from layerscope.scoring import ScoreOptions, Target, image_rows

from .conftest import compose

MODEL = {"arch": "vit_small_patch8_224", "img_size": 224, "pretrained": True,
         "weights": {"source": "hub", "hub_id": "vit_small_patch8_224.dino"}}


def test_config_key_changes_with_everything_maps_depend_on_and_nothing_else():
    base = config_key(MODEL, {"_target_": "m.ClsAttention"}, seed=0)
    assert config_key(dict(MODEL), {"_target_": "m.ClsAttention"}, seed=1) == base  # pretrained: the seed is moot
    assert config_key(dict(MODEL, img_size=480), {"_target_": "m.ClsAttention"}, 0) != base
    assert config_key(MODEL, {"_target_": "m.Rollout"}, 0) != base
    other_weights = dict(MODEL, weights={"source": "hub", "hub_id": "vit_small_patch8_224.augreg"})
    assert config_key(other_weights, {"_target_": "m.ClsAttention"}, 0) != base
    random = dict(MODEL, pretrained=False)
    assert config_key(random, {}, 0) != config_key(random, {}, 1)  # random init: the seed decides the weights


def test_file_weights_key_follows_the_file(tmp_path):
    ckpt = tmp_path / "w.safetensors"
    ckpt.write_bytes(b"12345")
    model = dict(MODEL, weights={"source": "file", "path": str(ckpt)})
    first = config_key(model, {}, 0)
    ckpt.write_bytes(b"123456")  # replaced by another checkpoint
    assert config_key(model, {}, 0) != first


def test_image_key_is_exact():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 1
    assert image_key(a) == image_key(a.copy()) != image_key(b)
    assert image_key(np.zeros((2, 8, 3), np.uint8)) != image_key(np.zeros((8, 2, 3), np.uint8))


def test_cache_round_trip_merges_layers_and_counts(tmp_path):
    cache = MapCache(tmp_path, "k", max_gb=1)
    maps = {0: torch.rand(2, 3, 3), 1: torch.rand(2, 3, 3)}
    assert cache.get("img", [0]) is None and cache.misses == 1
    cache.put("img", {0: maps[0]}, torch.arange(3.0))
    cache.put("img", {1: maps[1]}, None)  # a later run with another layer adds to the entry
    got, logits = cache.get("img", [0, 1])
    torch.testing.assert_close(got[0], maps[0])
    torch.testing.assert_close(got[1], maps[1])
    torch.testing.assert_close(logits, torch.arange(3.0))
    assert cache.hits == 1 and cache.get("img", [2]) is None and cache.misses == 2


def test_cache_evicts_least_recently_used_first(tmp_path):
    cache = MapCache(tmp_path, "k", max_gb=1)
    for i in range(3):
        cache.put(f"img{i}", {0: torch.rand(64, 64)}, None)
        os.utime(cache.dir / f"img{i}.npz", (1000 + i, 1000 + i))
    cache.get("img0", [0])  # used now: the newest
    size = (cache.dir / "img1.npz").stat().st_size
    cache.max_bytes = 2 * size + size // 2
    assert cache.evict() == 1
    assert sorted(p.stem for p in cache.dir.glob("*.npz")) == ["img0", "img2"]


def test_resume_bookkeeping(tmp_path):
    cfg = compose("model=tiny_vit")
    assert previous_progress(cfg, tmp_path) == {}  # nothing there yet
    OmegaConf.save(cfg, tmp_path / layout.CONFIG, resolve=True)
    writer = ResultsWriter(tmp_path / layout.RESULTS)
    writer.write([{"image": "a", "layer": 0}, {"image": "a", "layer": 1}])
    writer.write([{"image": "b", "layer": 0}])  # b's rows, but b never made it to done.txt
    writer.close()
    (tmp_path / layout.DONE).write_text("a\nb-cut-mid-wr")  # the last line was cut mid-write
    layout.map_file(tmp_path, "a").parent.mkdir()
    layout.map_file(tmp_path, "a").touch()  # a's saved maps are there (save_maps=true): a stays done
    assert read_done(tmp_path) == {"a": None}  # a line of an older run: no row count
    assert previous_progress(cfg, tmp_path) == {"a": 2}
    assert pd.read_csv(tmp_path / layout.RESULTS)["image"].tolist() == ["a", "a"]  # b's rows dropped, redone later
    other = OmegaConf.merge(cfg, {"batch_size": 1, "cache": {"enabled": False}, "num_workers": 2})
    assert previous_progress(other, tmp_path) == {"a": 2}  # options that cannot change results do not block
    with pytest.raises(ValueError, match="holds results of another configuration"):
        previous_progress(OmegaConf.merge(cfg, {"threshold": [0.3]}), tmp_path)
    with pytest.raises(ValueError, match="resume=false"):
        previous_progress(OmegaConf.merge(cfg, {"resume": False}), tmp_path)
    write_summary(tmp_path, {"complete": True})
    assert is_complete(tmp_path) and previous_progress(cfg, tmp_path) is None
    assert comparable(cfg) == comparable(other)


@pytest.mark.parametrize("override,message", [
    ("batch_size=0", "batch_size=0: expected an int >= 1"),
    ("num_workers=-1", "num_workers=-1: expected an int >= 0"),
    ("on_bad_image=ignore", "on_bad_image=ignore: expected skip or fail"),
    ("device=tpu", "device=tpu: expected auto, cpu or cuda"),
])
def test_plan_names_the_bad_option(override, message):
    from layerscope.plan import build, plan_study
    from layerscope.runtime import resolve_device

    cfg = compose("model=tiny_vit", override)
    with pytest.raises(ValueError, match=message):
        resolve_device(cfg.device)  # the run checks the device first, then the plan
        plan_study(cfg, build(cfg.model))


def test_model_and_data_names_come_from_the_config_choice():
    cfg = compose("model=efficientnet_lite0_bundled", "data=samples")
    assert cfg.model.name == "efficientnet_lite0_bundled" and cfg.data.name == "samples"
    assert cfg.model.mean == [0.498039] * 3 and cfg.model.weights.source == "bundled"  # its own keys win
    assert compose("model=dino_vits8").model.std == [0.229, 0.224, 0.225]  # written once, in base/timm


def test_metric_table_is_what_the_results_hold():
    assert METRICS == tuple(catalog.PER_IMAGE) and set(METRICS) <= set(COLUMNS)
    assert [m for m in METRICS if catalog.lower_is_better(m)] == ["entropy", "deletion_auc", "complexity", "road_morf",
                                                                  "mprt_spearman", "mprt_ssim", "random_logit_ssim"]
    assert [m for m in METRICS if catalog.PER_IMAGE[m].threshold_dependent] == ["iou"]
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:4, 2:4] = True
    maps, names = {0: torch.rand(2, 4, 4)}, {0: ["0", "1"]}
    rows = image_rows({}, maps, names, Target(mask), ScoreOptions([0.5]))
    # faithfulness needs the model; an option's columns (metrics.sparseness) are filled only when it is on
    scorable = [m for m in METRICS if not catalog.PER_IMAGE[m].needs_model and not catalog.PER_IMAGE[m].option]
    assert set(scorable) <= set(rows[0])  # the scorer fills every other metric column of the table
    undefined = [m for m in scorable if catalog.PER_IMAGE[m].needs_mask]
    no_mask = image_rows({}, maps, names, None, ScoreOptions([0.5]))
    assert all(math.isnan(no_mask[0][m]) for m in undefined)  # one undefined value in every column: NaN
    assert all(not math.isnan(no_mask[0][m]) for m in scorable if m not in undefined)


def test_dataset_metric_facts_come_from_the_catalog():
    from dataclasses import fields

    from layerscope.metrics.pooled import PooledMetrics
    from layerscope.protocol import COLUMNS as DATASET_COLUMNS

    # the pooled metrics are what the pooled pass computes; the image AUROCs rank score columns of results.csv
    assert catalog.POOLED == tuple(f.name for f in fields(PooledMetrics) if f.name != "f1_threshold")
    assert all(catalog.PER_IMAGE[s].kind == "image_score" and s in COLUMNS for s in catalog.IMAGE_SCORES.values())
    assert set(catalog.DATASET) == {*catalog.POOLED, *catalog.IMAGE_SCORES} and set(catalog.DATASET_CI) <= set(catalog.POOLED)
    cis = [f"{m}_ci_{side}" for m in catalog.DATASET_CI for side in ("low", "high")]
    assert {*catalog.DATASET, *cis} <= set(DATASET_COLUMNS) and DATASET_COLUMNS[1:5] == list(catalog.CANDIDATE)
    typed = {name: catalog.dataset_metric(name) for name in ("auroc", "ap", "f1", "f1_max", "aupro", "image_auroc")}
    assert typed == {"auroc": "pixel_auroc", "ap": "pixel_ap", "f1": "pixel_f1_max", "f1_max": "pixel_f1_max",
                     "aupro": "aupro", "image_auroc": "image_auroc"}
    assert not set(catalog.DATASET_ALIASES) & set(catalog.DATASET)  # an alias never hides a metric
    with pytest.raises(ValueError, match="metric 'iou': expected one of pixel_auroc, aupro"):
        catalog.dataset_metric("iou")


def test_the_dataset_markdown_names_its_columns_from_the_catalog():
    from layerscope.analysis.leaderboard import dataset_markdown, rank_dataset

    row = {"job": ".", "model": "m", "method": "cls_attention", "layer": 3, "head": "mean", "category": "all",
           "n_images": 8, "n_defect_images": 5, "pixel_auroc": 0.91, "aupro": 0.55, "pixel_ap": 0.4,
           "pixel_f1_max": 0.45, "image_auroc": 0.75, "image_auroc_topk": 0.7, "aupro_ci_low": 0.5,
           "aupro_ci_high": 0.6, "pixel_auroc_ci_low": 0.9, "pixel_auroc_ci_high": 0.92}
    text = dataset_markdown(rank_dataset(pd.DataFrame([row]), "auroc"), 5, held_out=True)
    assert "| rank | model | method | layer | head | pixel AUROC | AUPRO | pixel AP | F1-max | image AUROC | " \
           "images (defective) |\n|---:|---|---|---:|---|---:|---:|---:|---:|---:|---|" in text
    assert "| 1 | m | cls_attention | 3 | mean | 0.910 | 0.550 [0.500, 0.600] | 0.400 | 0.450 | 0.750 | 8 (5) |" in text
    assert "`choice_pixel_auroc.md`" in text


def test_layout_names_every_file_the_tools_write():
    import fnmatch
    from pathlib import Path

    assert layout.report_stem("auroc") == "report_auroc"
    assert layout.report_stem("aupro", "dataset") == "report_dataset_aupro"
    assert fnmatch.fnmatch(layout.choice_stem("aupro") + ".json", layout.CHOICE_GLOB)
    assert layout.choice_stem("aupro") == "choice_aupro"
    page = Path("out") / layout.REPORT
    assert layout.page_files(page) == Path("out") / layout.REPORT_FILES == Path("out/report_files")
    assert layout.page_lock(page) == Path("out/.report.html.lock")
    part = layout.part_file(Path("run"), 3)
    assert part == Path("run/representations/parts/part_000003.npz") and fnmatch.fnmatch(part.name, layout.PART_GLOB)
    assert layout.representation_file(Path("run"), "cls", 2) == Path("run/representations/cls_layer_2.npy")
    assert layout.grid_file(Path("run"), "a_0") == Path("run/figures/a_0_grid.png")


def test_run_folder_file_names_are_spelled_in_layout_alone():
    """No module but ``results/layout.py`` writes a run-folder file name as a string of its own."""
    import ast
    from pathlib import Path

    package = Path(layout.__file__).parents[1]
    # file names (with a dot or a leading underscore); config.yaml is also the configs folder's own file
    names = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str) and ("." in v or v[0] == "_")}
    names -= {layout.CONFIG}
    assert {"results.csv", "run_summary.json", ".hydra", "multirun.yaml", "choice_*.json"} <= names
    found = []
    for path in package.rglob("*.py"):
        if path == Path(layout.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(package)}:{node.lineno}: {node.value!r}")
    assert not found, found


def test_row_builder_takes_the_scoring_rule_and_each_layer_grid():
    """(That runs and rescoring give the same rows: test_batch_scoring's run-vs-rescore test.)"""
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:9, 3:7] = True
    maps = {0: torch.rand(3, 4, 4), 5: torch.rand(3, 4, 4)}
    names = {0: ["0", "1", "mean"], 5: ["0", "1", "mean"]}
    opts = ScoreOptions([0.4, 0.8], rule="minmax")
    rows = image_rows({"image": "x", "threshold_rule": "stale"}, maps, names, Target(mask), opts)
    assert len(rows) == 2 * 2 * 4  # layers x thresholds x (3 maps + best)
    assert {r["threshold_rule"] for r in rows} == {"minmax"}  # the scoring's rule, not a stale one
    assert {(r["layer"], r["grid_h"], r["grid_w"]) for r in rows} == {(0, 4, 4), (5, 4, 4)}
