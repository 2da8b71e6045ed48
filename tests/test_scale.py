"""Rollout, batch-size invariance, the map cache, resuming and launcher sweeps."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from layerscope.backbones import TimmViT
from layerscope.methods.attention_maps import Rollout

from .conftest import run_cli, run_main

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SMALL = ["model=tiny_vit", "data.textures=[brick]", "data.defects=[scratch,spot]", "data.size=64", "progress=false"]


def rollout_reference(attentions: list[torch.Tensor], fusion: str, discard: float) -> torch.Tensor:
    """Full-matrix rollout written plainly (per image, per layer): (B, L, N) CLS rows."""
    out = []
    for b in range(attentions[0].shape[0]):
        n = attentions[0].shape[-1]
        result = torch.eye(n)
        rows = []
        for attn in attentions:
            a = attn[b]  # (H, N, N)
            fused = {"mean": a.mean(0), "max": a.max(0).values, "min": a.min(0).values}[fusion]
            flat = fused.flatten().clone()
            k = int(flat.numel() * discard)
            if k:
                _, idx = flat.topk(k, largest=False)
                idx = idx[idx != 0]
                flat[idx] = 0
            a = 0.5 * flat.view(n, n) + 0.5 * torch.eye(n)
            a = a / a.sum(-1, keepdim=True)
            result = a @ result
            rows.append(result[0])
        out.append(torch.stack(rows))
    return torch.stack(out)


@pytest.mark.parametrize("fusion,discard", [("mean", 0.0), ("max", 0.3), ("min", 0.1)])
def test_rollout_matches_full_matrix_implementation(fusion, discard):
    torch.manual_seed(0)
    bb = TimmViT("t", "vit_tiny_patch16_224", img_size=32, mean=MEAN, std=STD, pretrained=False,
                 model_kwargs=dict(depth=3, embed_dim=32, num_heads=2, patch_size=8))
    x = torch.rand(2, 3, 32, 32)
    method = Rollout(bb, head_fusion=fusion, discard_ratio=discard, chunk=5)
    captured, _ = bb.extract(x, method.capture_layers([2]), method.capture)
    ours = method.maps(captured)
    full = []
    hooks = []
    for blk in bb.model.blocks:
        blk.attn.fused_attn = False
        hooks.append((blk.attn.attn_drop, lambda m, i, o: full.append(i[0])))
    from layerscope.backbones import forward_hooks

    with forward_hooks(hooks), torch.no_grad():
        bb.model(bb.normalize(x))
    expected = rollout_reference(full, fusion, discard)
    for layer in range(3):
        torch.testing.assert_close(ours[layer][:, 0].flatten(1), expected[:, layer, 1:], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_batch_sizes_give_the_same_maps(tmp_path):
    tables = []
    for batch in (1, 4):
        out = tmp_path / f"b{batch}"
        proc = run_main([*SMALL, "data.defects=[scratch,spot,crack]", "data.textures=[brick,moon]",
                         f"batch_size={batch}", "cache.enabled=false", f"hydra.run.dir={out}"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        tables.append(pd.read_csv(out / "results.csv", dtype={"head": str}))
        from layerscope.results.maps_io import load_maps

        tables[-1].attrs["maps"] = load_maps(out / "maps" / "moon_crack_0.npz")["maps"]
    pd.testing.assert_frame_equal(tables[0], tables[1], atol=1e-5, check_exact=False)
    for layer, m in tables[0].attrs["maps"].items():
        torch.testing.assert_close(torch.from_numpy(m), torch.from_numpy(tables[1].attrs["maps"][layer]), atol=1e-5,
                                   rtol=0)


@pytest.mark.slow
def test_cached_run_equals_uncached_and_runs_no_backbone(tmp_path):
    cache = tmp_path / "cache"
    runs = {}
    for name in ("first", "second"):
        out = tmp_path / name
        proc = run_main([*SMALL, f"cache.dir={cache}", "threshold=[0.5,0.7]", f"hydra.run.dir={out}"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = (pd.read_csv(out / "results.csv", dtype={"head": str}),
                      json.loads((out / "run_summary.json").read_text()))
    (first, s1), (second, s2) = runs["first"], runs["second"]
    pd.testing.assert_frame_equal(first, second)
    assert (s1["backbone_calls"], s1["cache_hits"], s1["cache_misses"]) == (1, 0, 2)
    assert (s2["backbone_calls"], s2["cache_hits"], s2["cache_misses"]) == (0, 2, 0)
    out = tmp_path / "third"  # a threshold sweep over the same images: still no backbone
    proc = run_main([*SMALL, f"cache.dir={cache}", "threshold=[0.3,0.9]", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert json.loads((out / "run_summary.json").read_text())["backbone_calls"] == 0
    out = tmp_path / "fourth"  # another input size is another key
    proc = run_main([*SMALL, f"cache.dir={cache}", "model.img_size=32", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0 and json.loads((out / "run_summary.json").read_text())["backbone_calls"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_sweep_through_a_launcher_completes_and_a_rerun_skips_both_jobs(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    args = ["-m", *SMALL, "layer=0,1", f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}"]
    if launcher == "joblib":
        args.append("hydra.launcher.n_jobs=2")
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stamps = {}
    for job in ("0", "1"):
        assert json.loads((sweep / job / "run_summary.json").read_text())["complete"]
        stamps[job] = (sweep / job / "results.csv").stat().st_mtime_ns
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / "results.csv").stat().st_mtime_ns == stamps[job]  # untouched
    logs = "".join((sweep / job / "run.log").read_text() for job in ("0", "1"))
    assert logs.count("already holds this finished run; skipped") == 2
