"""Duration estimates printed before a benchmark starts, from model sizes and a probe of this machine."""
from __future__ import annotations

import time

import torch

from .capture import CONFIGS, attention_bytes
from .pipeline import MARGINAL_SIZES

VARIANT_COST = {"plain": 1.0, "ours": 1.05, "hf_sdpa": 1.0, "hf_eager": 2.5, "timm_extract": 2.0}  # x plain
PIPELINE_GFLOP = {"dinov2_vits14_bundled": 66.0, "efficientnet_lite0_bundled": 0.8, "tiny_vit": 0.01,
                  "tiny_cnn": 0.01}  # forward per image, at the config's size
STARTUP_S = 15.0  # one fresh process importing torch, timm and the model, on 2 quiet cores
QUIET_GFLOPS = 50.0  # the probe on 2 quiet cores; a busier machine also starts processes more slowly


def _slowdown(gflops: float) -> float:
    """How much slower than 2 quiet cores the probe says this machine is now (1 to 3): scales the startups."""
    return min(3.0, max(1.0, QUIET_GFLOPS / gflops))


def machine_gflops(device: str = "cpu", seconds: float = 0.3) -> float:
    """This machine's float32 matrix-multiply rate right now, GFLOP/s: the unit of the estimates."""
    dev = torch.device(device)
    a = torch.rand(512, 512, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    a @ a
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ a
        n += 1
        if dev.type == "cuda" and n % 64:
            continue
        sync()
    return 2 * 512 ** 3 * n / (time.perf_counter() - t0) / 1e9


def vit_gflop(model: str, size: int) -> float:
    """Forward FLOPs of one image through a ``CONFIGS`` ViT (12 blocks): attention and MLP matmuls."""
    _, patch, dim, _ = CONFIGS[model]
    n = (size // patch) ** 2 + 1
    return 12 * n * (24 * dim * dim + 4 * n * dim) / 1e9


def capture_estimate(cases, batches, rounds: int, gflops: float, memory_limit_gb: float) -> float:
    """Seconds ``capture_table`` should take: per case and batch, the variants' startups (in parallel, so
    about two on two cores) and ``rounds`` + 1 forwards of every variant, at this machine's rate."""
    total = 0.0
    for model, size in cases:
        for batch in batches:
            skip = attention_bytes(model, size, batch) / 2 ** 30 > memory_limit_gb
            cost = sum(c for v, c in VARIANT_COST.items() if not (skip and v in ("hf_eager", "timm_extract")))
            forward = max(batch * vit_gflop(model, size) / gflops, 0.05)  # small models: overhead, not FLOPs
            total += 1.5 * STARTUP_S * _slowdown(gflops) + (rounds + 1) * cost * forward
    return total


def pipeline_estimate(models, devices, rounds: int, images: int, gflops: dict[str, float]) -> float:
    """Seconds ``pipeline_table`` should take: per round a study (startup, forward, ~0.1 s per image of
    the rest and the dataset pass) and the backbone alone again; unknown models count 10 GFLOP."""
    total = 0.0
    for device in devices:
        for model in models:
            forward = images * PIPELINE_GFLOP.get(model, 10.0) / gflops[device]
            startup = STARTUP_S * _slowdown(gflops[device])
            total += startup + rounds * (startup + 2 * forward + images * 0.1)
    return total


def marginal_estimate(models, rounds: int, gflops: float) -> float:
    """Seconds ``marginal_table`` should take: per round and size a cold and a warm study."""
    sizes = [16 * k for k in MARGINAL_SIZES]
    startup = STARTUP_S * _slowdown(gflops)
    return sum(rounds * sum(2 * startup + n * (PIPELINE_GFLOP.get(m, 10.0) / gflops + 0.2) for n in sizes)
               for m in models)
