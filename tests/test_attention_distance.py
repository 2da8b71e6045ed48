"""Mean attention distance per head: the chunked q/k computation equals a brute force over the models'
own full eager attention matrices (timm ViT, DINOv2 with registers, transformers ViT)."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from layerscope.backbones.distance import attention_distance

from .conftest import eager_reference, tiny_hf_vit
from .test_capture import eager_timm, timm_vit


def brute_force(attn: np.ndarray, prefix: int, grid: int, patch: int, renormalise: bool = True) -> np.ndarray:
    """(B, H, N, N) full attention -> (B, H): prefix rows and columns dropped, rows renormalised over the
    patch keys (``renormalise=False``: the common implementation's ``A[..., prefix:, prefix:]`` as it is, the
    prefix keys' mass dropped), sum_j a_ij |c_i - c_j| averaged over query patches; centres
    c = ((r + .5) p, (c + .5) p)."""
    a = attn[:, :, prefix:, prefix:].astype(np.float64)
    if renormalise:
        a = a / a.sum(-1, keepdims=True)
    centres = np.array([((r + 0.5) * patch, (c + 0.5) * patch) for r in range(grid) for c in range(grid)])
    d = np.sqrt(((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1))
    return (a * d).sum(-1).mean(-1)


@pytest.mark.parametrize("kwargs", [{}, {"arch": "vit_small_patch14_reg4_dinov2", "patch_size": 14, "img_size": 56}])
def test_timm_attention_distance_equals_brute_force_over_eager_attention(kwargs):
    torch.manual_seed(0)
    bb = timm_vit(**kwargs)
    x = torch.rand(2, 3, bb.img_size, bb.img_size)
    layers = list(range(bb.num_layers))
    with bb.capturing(layers, ["attention_distance"]) as got:
        bb.extract(x, layers, "cls_attention")
    full = {layer: a.numpy() for layer, a in eager_timm(bb, x).items()}
    g = bb.img_size // bb.patch_size
    for layer in layers:
        expected = brute_force(full[layer], bb.num_prefix, g, bb.patch_size)
        assert got["attention_distance"][layer].shape == (2, bb.num_heads)
        np.testing.assert_allclose(got["attention_distance"][layer].numpy(), expected, atol=1e-4, rtol=0)
    assert bb.num_prefix == (5 if "reg4" in kwargs.get("arch", "") else 1)  # registers read from the model


def test_hf_vit_attention_distance_equals_brute_force_over_output_attentions():
    bb = tiny_hf_vit()
    x = torch.rand(2, 3, 64, 64)
    with bb.capturing([0, 1, 2], ["attention_distance"]) as got:
        bb.extract(x, [0, 1, 2], "cls_attention")
    with torch.no_grad():
        out = eager_reference(bb, x)
    for layer, attn in enumerate(out.attentions):
        np.testing.assert_allclose(got["attention_distance"][layer].numpy(), brute_force(attn.numpy(), 1, 8, 8),
                                   atol=1e-4, rtol=0)


def test_chunking_does_not_change_the_value():
    torch.manual_seed(1)
    q, k = torch.randn(2, 3, 1 + 36, 8), torch.randn(2, 3, 1 + 36, 8)
    whole = attention_distance(q, k, 0.5, 1, (6, 6), 16)
    for chunk in (1, 5, 36):
        torch.testing.assert_close(attention_distance(q, k, 0.5, 1, (6, 6), 16, chunk=chunk), whole, atol=1e-5, rtol=0)


def test_uniform_attention_gives_the_mean_pairwise_patch_distance_and_self_attention_gives_zero():
    g, patch, prefix = 4, 10, 2
    p = g * g
    cells = list(itertools.product(range(g), range(g)))
    pairwise = np.mean([patch * np.hypot(r1 - r2, c1 - c2) for (r1, c1), (r2, c2) in itertools.product(cells, cells)])
    k = torch.randn(1, 2, prefix + p, p)
    uniform = attention_distance(torch.zeros(1, 2, prefix + p, p), k, 1.0, prefix, (g, g), patch)  # equal logits
    np.testing.assert_allclose(uniform.numpy(), pairwise, rtol=1e-6)
    eye = torch.cat([torch.randn(prefix, p), torch.eye(p)]) * 30  # q_i . k_j = 900 [i == j] on the patches
    selfish = attention_distance(eye.expand(1, 2, -1, -1), eye.expand(1, 2, -1, -1), 1.0, prefix, (g, g), patch)
    np.testing.assert_allclose(selfish.numpy(), 0.0, atol=1e-6)
    # prefix tokens are no keys: a register every query attends to strongly changes nothing
    q = torch.zeros(1, 2, prefix + p, p + 1)
    q[..., -1] = 10.0
    k = torch.zeros(1, 2, prefix + p, p + 1)
    k[:, :, :prefix, -1] = 10.0
    np.testing.assert_allclose(attention_distance(q, k, 1.0, prefix, (g, g), patch).numpy(), pairwise, rtol=1e-6)


def test_cnn_cannot_capture_attention_distance():
    from layerscope.backbones import TimmCNN

    bb = TimmCNN("c", "resnet18", img_size=64, mean=(0.5,) * 3, std=(0.5,) * 3, pretrained=False, num_classes=0)
    with pytest.raises(ValueError, match="cannot capture attention_distance"):
        bb.extra_hooks([0], ["attention_distance"])


@pytest.mark.slow
def test_results_rows_hold_each_heads_distance_and_the_mean_of_all_heads_and_rescoring_keeps_them(tmp_path):
    from layerscope import study
    from layerscope.cli.rescore import main as rescore_main

    from .conftest import compose

    small = ["model=tiny_vit", "data.textures=[brick]", "data.defects=[scratch]", "data.size=64", "progress=false",
             "figures.grid=false", "dataset_metrics=false", "cache.enabled=false", "metrics.attention_distance=true"]
    study.run(compose(*small), tmp_path / "all")
    study.run(compose(*small, "head=[1]"), tmp_path / "one")
    study.run(compose(*small, "metrics.attention_distance=false"), tmp_path / "off")
    full = pd.read_csv(tmp_path / "all" / "results.csv", dtype={"head": str, "best_head": str})
    heads = full[full["head"].str.isdigit()].groupby(["image", "layer"])["attention_distance"].mean()
    mean = full[full["head"] == "mean"].set_index(["image", "layer"])["attention_distance"]
    np.testing.assert_allclose(mean.loc[heads.index], heads, rtol=1e-5)  # the mean row: the mean over heads
    best = full[full["head"] == "best"]
    by_head = full.set_index(["image", "layer", "head"])["attention_distance"]
    np.testing.assert_allclose(best["attention_distance"],
                               by_head.loc[list(zip(best["image"], best["layer"], best["best_head"]))], rtol=0)
    assert (full["attention_distance"] > 0).all()
    one = pd.read_csv(tmp_path / "one" / "results.csv", dtype={"head": str})
    assert set(one["head"]) == {"1", "mean", "best"}
    key = ["image", "layer", "head"]
    merged = one[one["head"] != "best"].merge(full, on=key, suffixes=("", "_all"))
    np.testing.assert_allclose(merged["attention_distance"], merged["attention_distance_all"], rtol=1e-6)
    assert pd.read_csv(tmp_path / "off" / "results.csv")["attention_distance"].isna().all()
    assert rescore_main([str(tmp_path / "all"), "threshold=[0.6,0.8]", "--out", "again.csv"]) == 0
    again = pd.read_csv(tmp_path / "all" / "again.csv", dtype={"head": str, "best_head": str})
    same = again[again["threshold"] == 0.6].reset_index(drop=True)
    pd.testing.assert_frame_equal(same[full.columns], full, check_dtype=False)


@pytest.mark.parametrize("kwargs", [{}, {"arch": "vit_small_patch14_reg4_dinov2", "patch_size": 14, "img_size": 56}])
def test_raw_rule_equals_the_common_definition_over_eager_attention(kwargs):
    torch.manual_seed(0)
    bb = timm_vit(**kwargs)
    x = torch.rand(2, 3, bb.img_size, bb.img_size)
    layers = list(range(bb.num_layers))
    with bb.capturing(layers, ["attention_distance", "attention_distance_raw"]) as got:
        bb.extract(x, layers, "cls_attention")
    full = {layer: a.numpy() for layer, a in eager_timm(bb, x).items()}
    g = bb.img_size // bb.patch_size
    for layer in layers:
        raw = got["attention_distance_raw"][layer].numpy()
        expected = brute_force(full[layer], bb.num_prefix, g, bb.patch_size, renormalise=False)
        np.testing.assert_allclose(raw, expected, atol=1e-4, rtol=0)
        # the prefix keys hold some attention: raw is below renormalised, never above
        assert (raw < got["attention_distance"][layer].numpy()).all()


def test_raw_rule_over_hf_output_attentions_and_in_chunks():
    bb = tiny_hf_vit()
    x = torch.rand(2, 3, 64, 64)
    with bb.capturing([0, 1, 2], ["attention_distance_raw"]) as got:
        bb.extract(x, [0, 1, 2], "cls_attention")
    with torch.no_grad():
        out = eager_reference(bb, x)
    for layer, attn in enumerate(out.attentions):
        np.testing.assert_allclose(got["attention_distance_raw"][layer].numpy(),
                                   brute_force(attn.numpy(), 1, 8, 8, renormalise=False), atol=1e-4, rtol=0)
    torch.manual_seed(1)
    q, k = torch.randn(2, 3, 2 + 36, 8), torch.randn(2, 3, 2 + 36, 8)
    whole = attention_distance(q, k, 0.5, 2, (6, 6), 16, rule="raw")
    for chunk in (1, 7):
        torch.testing.assert_close(attention_distance(q, k, 0.5, 2, (6, 6), 16, chunk=chunk, rule="raw"), whole,
                                   atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="metrics.attention_distance_rule=plain: expected one of renormalised, raw"):
        attention_distance(q, k, 0.5, 2, (6, 6), 16, rule="plain")


@pytest.mark.slow
def test_rows_name_the_rule_and_the_unit_and_fraction_is_pixels_over_the_image_side(tmp_path):
    from layerscope import study

    from .conftest import compose

    small = ["model=tiny_vit", "data.textures=[brick]", "data.defects=[scratch]", "data.size=64", "progress=false",
             "figures.grid=false", "dataset_metrics=false", "cache.enabled=false", "metrics.attention_distance=true",
             "metrics.attention_distance_rule=raw"]
    study.run(compose(*small), tmp_path / "px")
    study.run(compose(*small, "metrics.attention_distance_unit=fraction"), tmp_path / "frac")
    px = pd.read_csv(tmp_path / "px" / "results.csv", dtype={"head": str})
    frac = pd.read_csv(tmp_path / "frac" / "results.csv", dtype={"head": str})
    assert set(px["attention_distance_rule"]) == {"raw"} and set(px["attention_distance_unit"]) == {"pixels"}
    assert set(frac["attention_distance_unit"]) == {"fraction"}
    np.testing.assert_allclose(frac["attention_distance"], px["attention_distance"] / 64, rtol=1e-5)  # csv: 6 digits
    assert (frac["attention_distance"] < 1).all()
    with pytest.raises(ValueError, match="metrics.attention_distance_unit=patches: expected one of pixels, fraction"):
        study.run(compose(*small, "metrics.attention_distance_unit=patches"), tmp_path / "bad")


def test_the_summary_is_the_mean_over_images_with_an_interval_and_never_mixes_conventions():
    from layerscope.analysis.saved import distance_table

    rng = np.random.default_rng(0)
    rows = []
    for image in range(20):
        for head in ("0", "1", "mean"):
            value = 30 + rng.normal()
            rows.append({"series": "m", "image": f"i{image}", "layer": 0, "head": head, "threshold": 0.5,
                         "attention_distance": value, "attention_distance_rule": "raw",
                         "attention_distance_unit": "pixels", "num_layers": 1})
            rows.append({**rows[-1], "attention_distance": value / 64, "attention_distance_unit": "fraction"})
            rows.append({**rows[-1], "threshold": 0.7})  # a second threshold of the same map: counted once
    df = pd.DataFrame(rows)
    table = distance_table(df).set_index(["unit", "head"])
    assert set(table.index) == {(u, h) for u in ("pixels", "fraction") for h in ("0", "1", "mean")}
    want = df[(df["head"] == "0") & (df["attention_distance_unit"] == "pixels")]["attention_distance"]
    row = table.loc[("pixels", "0")]
    assert row["attention_distance"] == pytest.approx(want.mean()) and row["n_images"] == 20
    assert row["ci_low"] < row["attention_distance"] < row["ci_high"] and row["rule"] == "raw"
    sem = want.std(ddof=1) / np.sqrt(20)  # the bootstrap interval is about mean +- 1.96 standard errors
    assert row["ci_high"] - row["ci_low"] == pytest.approx(2 * 1.96 * sem, rel=0.3)
    assert table.loc[("fraction", "0"), "attention_distance"] == pytest.approx(want.mean() / 64)
    old = distance_table(df[df["attention_distance_unit"] == "pixels"].drop(
        columns=["attention_distance_rule", "attention_distance_unit"]))  # rows written before the columns
    assert set(old["rule"]) == {"renormalised"} and set(old["unit"]) == {"pixels"}
