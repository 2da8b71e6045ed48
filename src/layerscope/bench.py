"""Extraction benchmark: what capturing every layer's CLS attention costs against a plain forward.

    layerscope-bench [--quick] [--device cpu|cuda] [--repeats 3] [--out bench.csv]

Variants, each timed in a fresh subprocess so peak memory is its own (random-init weights):

- ``plain``: timm ViT forward, fused attention (the baseline every ratio refers to);
- ``ours``: the same forward with this framework's hooks, CLS rows of every layer and head;
- ``hf_eager``: transformers ViT with ``output_attentions=True`` (eager attention, all N x N maps);
- ``hf_sdpa``: transformers ViT plain forward (SDPA), to separate library from method costs;
- ``timm_extract``: timm's ``AttentionExtract`` with fused attention off (all N x N maps).

Peak memory is the growth of the process's peak RSS during the timed forwards (CPU, with
glibc's mmap threshold fixed so freed blocks leave RSS), or ``torch.cuda.max_memory_allocated``
above the resting allocation (GPU).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

VARIANTS = ("plain", "ours", "hf_eager", "hf_sdpa", "timm_extract")
CONFIGS = {  # name -> (timm arch, patch, dim, heads)
    "vit_s8": ("vit_small_patch8_224", 8, 384, 6),
    "vit_b16": ("vit_base_patch16_224", 16, 768, 12),
}
FULL = [("vit_s8", 224), ("vit_s8", 480), ("vit_b16", 224)]
QUICK = [("vit_s8", 224), ("vit_b16", 224)]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def attention_bytes(model: str, size: int, batch: int) -> int:
    """Bytes of every layer's full attention matrices in float32 (what eager extraction holds)."""
    _, patch, _, heads = CONFIGS[model]
    n = (size // patch) ** 2 + 1
    return 12 * heads * n * n * 4 * batch


def _build(model: str, size: int, variant: str, device: torch.device):
    arch, patch, dim, heads = CONFIGS[model]
    if variant.startswith("hf_"):
        from transformers import ViTConfig, ViTModel

        cfg = ViTConfig(hidden_size=dim, num_hidden_layers=12, num_attention_heads=heads, intermediate_size=4 * dim,
                        patch_size=patch, image_size=size)
        cfg._attn_implementation = "eager" if variant == "hf_eager" else "sdpa"
        net = ViTModel(cfg, add_pooling_layer=False).eval().to(device)
        if variant == "hf_eager":
            return lambda x: net(pixel_values=x, output_attentions=True).attentions
        return lambda x: net(pixel_values=x).last_hidden_state
    from .backbones import TimmViT

    bb = TimmViT(model, arch, img_size=size, mean=(0.5,) * 3, std=(0.5,) * 3, pretrained=False).eval().to(device)
    if variant == "plain":
        return lambda x: bb.model(x)
    if variant == "ours":
        layers = list(range(bb.num_layers))
        return lambda x: bb.extract(x, layers, "cls_attention")[0]
    from timm.utils import AttentionExtract

    for blk in bb.model.blocks:
        blk.attn.fused_attn = False
    extractor = AttentionExtract(bb.model, method="hook")
    return lambda x: extractor(x)


def measure_one(model: str, size: int, batch: int, variant: str, device: str, repeats: int) -> dict:
    """Seconds per image (best of ``repeats``) and peak extra memory (MB) of one variant."""
    dev = torch.device(device)
    torch.manual_seed(0)
    fn = _build(model, size, variant, dev)
    x = torch.rand(batch, 3, size, size, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_mb()
    times = []
    with torch.inference_mode():
        out = fn(x)  # warm-up
        del out
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            out = fn(x)
            sync()
            times.append(time.perf_counter() - t0)
            del out
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if dev.type == "cuda" else _rss_mb() - base
    return {"seconds_per_image": min(times) / batch, "peak_mb": peak}


def run_table(cases, batches, device: str, repeats: int, memory_limit_gb: float) -> list[dict]:
    rows = []
    for model, size in cases:
        for batch in batches:
            base = None
            for variant in VARIANTS:
                row = {"model": model, "size": size, "batch": batch, "variant": variant, "device": device}
                need = attention_bytes(model, size, batch) / 2**30
                if variant in ("hf_eager", "timm_extract") and need > memory_limit_gb:
                    row.update(status=f"skipped: its attention maps alone need {need:.1f} GiB")
                    rows.append(row)
                    print(f"{model} {size}px b{batch} {variant:13s} {row['status']}", flush=True)
                    continue
                cmd = [sys.executable, "-m", "layerscope.bench", "--one", model, str(size), str(batch), variant,
                       "--device", device, "--repeats", str(repeats)]
                # a fixed mmap threshold makes glibc hand large blocks back on free, so peak RSS follows the
                # live tensors instead of the allocator's history (which differs between variants)
                env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
                proc = subprocess.run(cmd, capture_output=True, text=True,
                                      env=env)
                if proc.returncode != 0:
                    row.update(status=f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
                else:
                    row.update(json.loads(proc.stdout.strip().splitlines()[-1]), status="ok")
                    if variant == "plain":
                        base = row
                    if base is not None:
                        row["time_ratio"] = row["seconds_per_image"] / base["seconds_per_image"]
                        row["memory_ratio"] = row["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else float("nan")
                rows.append(row)
                print(f"{model} {size}px b{batch} {variant:13s} {row.get('seconds_per_image', float('nan')):.4f} s/img  "
                      f"{row.get('peak_mb', float('nan')):8.1f} MB  x{row.get('time_ratio', float('nan')):.2f} time  "
                      f"x{row.get('memory_ratio', float('nan')):.2f} mem  {row['status']}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="layerscope-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="224 px only, batch 1 (a smoke run)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--memory-limit-gb", type=float, default=12.0, help="skip N x N variants needing more")
    p.add_argument("--out", type=Path, default=Path("outputs/bench.csv"))
    p.add_argument("--one", nargs=4, metavar=("MODEL", "SIZE", "BATCH", "VARIANT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        model, size, batch, variant = a.one
        print(json.dumps(measure_one(model, int(size), int(batch), variant, a.device, a.repeats)))
        return 0
    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device visible", file=sys.stderr)
        return 2
    torch_threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    print(f"device {a.device}, torch {torch.__version__}, {torch_threads} threads, best of {a.repeats}", flush=True)
    rows = run_table(QUICK if a.quick else FULL, a.batches or ([1] if a.quick else [1, 8]), a.device, a.repeats,
                     a.memory_limit_gb)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["model", "size", "batch", "variant", "device", "seconds_per_image", "peak_mb", "time_ratio",
              "memory_ratio", "status"]
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
