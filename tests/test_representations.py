"""Pooled representations saved by a run: equal to an independent computation, from the same pass (the map
cache keeps them), and a run cut at any image resumes to the arrays of a clean run."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from layerscope import study
from layerscope.results import load_representations
from layerscope.results.layout import DONE, SUMMARY

from .conftest import compose, run_cut_after

SMALL = ["model=tiny_vit", "data.textures=[brick]", "data.defects=[scratch,spot]", "data.per_combination=2",
         "data.good_per_texture=2", "data.size=64", "progress=false", "figures.grid=false", "dataset_metrics=false",
         "save_representations=true", "batch_size=4", "metrics.attention_distance=true"]


def run(out, *extra, cache=None):
    cache_args = [f"cache.dir={cache}"] if cache else ["cache.enabled=false"]
    return study.run(compose(*SMALL, *cache_args, *extra), out)


def arrays(out, kind="mean"):
    ids, reps = load_representations(out, kind)
    return ids, {layer: a.copy() for layer, a in reps.items()}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "run"
    run(out)
    return out


def test_saved_representations_equal_the_block_outputs_computed_by_hand(clean):
    from layerscope.data.transforms import to_input
    from layerscope.plan import build, build_dataset

    cfg = compose(*SMALL)
    torch.manual_seed(int(cfg.seed))  # the run's random init
    bb = build(cfg.model)
    dataset = build_dataset(cfg)
    ids, mean = arrays(clean, "mean")
    _, cls = arrays(clean, "cls")
    assert ids == (clean / "representations" / "images.txt").read_text().splitlines()
    assert len(ids) == len(dataset) == 6 and sorted(mean) == sorted(cls) == [0, 1]
    x = torch.stack([to_input(dataset[i], bb.img_size)[0] for i in range(len(dataset))])
    assert [dataset[i].id for i in range(len(dataset))] == ids  # the run's order
    m = bb.model
    with torch.no_grad():  # timm's forward_features, block by block, without hooks
        t = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(bb.normalize(x)))))
        for layer, blk in enumerate(m.blocks):
            t = blk(t)
            np.testing.assert_allclose(mean[layer], t[:, m.num_prefix_tokens:].mean(1).numpy(), atol=1e-5)
            np.testing.assert_allclose(cls[layer], t[:, 0].numpy(), atol=1e-5)
    assert mean[0].dtype == np.float32 and mean[0].shape == (6, m.embed_dim)


@pytest.mark.slow
def test_cnn_stages_are_global_average_pooled(tmp_path):
    from layerscope.data.transforms import to_input
    from layerscope.plan import build, build_dataset

    out = tmp_path / "cnn"
    run(out, "model=tiny_cnn")
    cfg = compose(*SMALL, "model=tiny_cnn")
    torch.manual_seed(int(cfg.seed))
    bb, dataset = build(cfg.model).eval(), build_dataset(cfg)
    ids, mean = arrays(out)
    x = bb.normalize(torch.stack([to_input(dataset[i], bb.img_size)[0] for i in range(len(dataset))]))
    m = bb.model
    with torch.no_grad():  # ResNet stages as timm lists them: act1, layer1..layer4
        t = m.act1(m.bn1(m.conv1(x)))
        stages = [t]
        t = m.maxpool(t)
        for block in (m.layer1, m.layer2, m.layer3, m.layer4):
            t = block(t)
            stages.append(t)
    for layer, s in enumerate(stages):
        np.testing.assert_allclose(mean[layer], s.mean((2, 3)).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="no cls representations"):
        load_representations(out, "cls")


def test_the_map_cache_keeps_representations_and_attention_distance(tmp_path, clean):
    cache = tmp_path / "cache"
    run(tmp_path / "first", cache=cache)
    study.run(compose(*SMALL, f"cache.dir={cache}"), tmp_path / "second")  # every image from the cache
    summary = pd.read_json(tmp_path / "second" / SUMMARY, typ="series")
    assert summary["backbone_calls"] == 0 and summary["cache_hits"] == 6
    for kind in ("mean", "cls"):
        ids, want = arrays(clean, kind)
        got_ids, got = arrays(tmp_path / "second", kind)
        assert got_ids == ids
        for layer in want:
            np.testing.assert_array_equal(got[layer], want[layer])
    first = pd.read_csv(clean / "results.csv")
    second = pd.read_csv(tmp_path / "second" / "results.csv")
    np.testing.assert_array_equal(second["attention_distance"], first["attention_distance"])


@pytest.mark.slow
@pytest.mark.parametrize("cut", range(6))
def test_a_run_cut_after_any_image_resumes_to_the_clean_arrays(clean, tmp_path, monkeypatch, cut):
    """Stopped after ``cut`` images (batches of 4: some cuts fall inside a batch whose chunk is already on disk)."""
    out = tmp_path / "run"
    run_cut_after(monkeypatch, cut, lambda: run(out))
    assert len((out / DONE).read_text().splitlines()) == cut and not (out / SUMMARY).exists()
    if cut:  # the unfinished run's representations: its done images, from the chunks
        ids, partial = arrays(out)
        assert ids == arrays(clean)[0][:cut] and partial[1].shape[0] == cut
    run(out)
    assert_same_representations(out, clean)


def assert_same_representations(out, clean) -> None:
    """Every kind's image ids and per-layer arrays of ``out`` equal the clean run's, bit for bit."""
    for kind in ("mean", "cls"):
        ids, want = arrays(clean, kind)
        got_ids, got = arrays(out, kind)
        assert got_ids == ids
        for layer in want:
            np.testing.assert_array_equal(got[layer], want[layer])


@pytest.mark.parametrize("done_lines", [0, 3, 5])
def test_a_kill_that_lost_done_lines_or_cut_the_consolidation_resumes_to_the_clean_arrays(clean, tmp_path,
                                                                                          done_lines):
    """As after kill -9: chunks on disk for images done.txt does not list, a stale or half-replaced
    consolidated array, a temporary chunk file left behind."""
    out = tmp_path / "run"
    shutil.copytree(clean, out)
    (out / SUMMARY).unlink()
    lines = (out / DONE).read_text().splitlines(keepends=True)
    (out / DONE).write_text("".join(lines[:done_lines]))
    np.save(out / "representations" / "mean_layer_1.npy", np.zeros((2, 3), np.float32))  # a stale array
    (out / "representations" / "parts" / "part_000007.tmp.npz").write_bytes(b"PK\x03")  # a cut chunk write
    run(out)
    assert_same_representations(out, clean)


def test_chunks_removed_under_a_finished_image_are_named(clean, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(clean, out)
    (out / SUMMARY).unlink()
    shutil.rmtree(out / "representations" / "parts")
    (out / "representations" / "parts").mkdir()
    with pytest.raises(ValueError, match="no saved representation of 6 finished images"):
        run(out)


def test_gradient_methods_save_the_same_representations_from_their_own_pass(clean, tmp_path):
    """Grad-CAM's forward (with autograd on) is the same forward: the same rows, detached."""
    run(tmp_path / "gradcam", "method=gradcam")
    for kind in ("mean", "cls"):
        ids, want = arrays(clean, kind)
        got_ids, got = arrays(tmp_path / "gradcam", kind)
        assert got_ids == ids
        for layer in want:
            np.testing.assert_allclose(got[layer], want[layer], atol=1e-6)
    assert pd.read_csv(tmp_path / "gradcam" / "results.csv")["attention_distance"].isna().all()  # cls_attention only
