"""Time the dataset-level accumulators alone, per device: the counts added batch by batch, then the rows.

Synthetic maps and masks of a DINOv2 ViT-S/14 study's shapes by default (12 layers x 7 maps on a 37 x 37 grid,
518 px masks with a defect in three images of four), fed as a study feeds them (``PooledStream.add_batch``);
no model runs. ``scripts/gpu_check.sh`` runs it on the CPU and the GPU.

    python -m layerscope.bench.stream [--images 64] [--batch 16] [--devices cpu cuda]
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy as np
import torch


def time_stream(device: str, images: int, batch: int, layers: int, maps: int, grid: int, size: int,
                seed: int = 0, threads: int = 1) -> dict[str, float]:
    """Seconds per image to add a study's batches to a ``PooledStream`` on ``device``, and to make its rows
    (on ``threads`` threads, as a study does on ``runtime.score_threads()``).

    Returns:
        ``add`` and ``rows`` in seconds per image, and ``rows_count``.
    """
    from ..protocol import stream_rows
    from ..analysis.pool_stream import PooledStream

    rng = np.random.default_rng(seed)
    stream = PooledStream(device=device)
    names = {layer: [str(k) for k in range(maps)] for layer in range(layers)}
    add = 0.0
    for start in range(0, images, batch):
        n = min(batch, images - start)
        items = []
        for i in range(start, start + n):
            mask = torch.zeros(size, size, dtype=torch.bool)
            if i % 4:
                y, x = rng.integers(0, size - size // 4, 2)
                mask[y:y + size // 8, x:x + size // 6] = True
            items.append({"id": f"im{i:05d}", "category": "spot" if i % 4 else "good", "mask": mask, "valid": None})
        batch_maps = {layer: torch.rand(n, maps, grid, grid, generator=torch.Generator().manual_seed(i * 97 + layer))
                      .to(device) for layer in range(layers)}
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        stream.add_batch(items, batch_maps, names, {"model": "synthetic", "method": "synthetic"})
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        add += time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = stream_rows(stream, threads=threads)
    return {"add": add / images, "rows": (time.perf_counter() - t0) / images, "rows_count": len(rows)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--maps", type=int, default=7)
    p.add_argument("--grid", type=int, default=37)
    p.add_argument("--size", type=int, default=518)
    p.add_argument("--devices", nargs="+", default=["cpu"])
    p.add_argument("--threads", type=int, default=None, help="threads for the rows (default: a study's)")
    a = p.parse_args(argv)
    from ..runtime import score_threads

    threads = a.threads if a.threads is not None else score_threads()
    for device in a.devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"{device}: no CUDA device; skipped")
            continue
        time_stream(device, min(a.images, a.batch), a.batch, a.layers, a.maps, a.grid, a.size, threads=threads)
        t = time_stream(device, a.images, a.batch, a.layers, a.maps, a.grid, a.size, threads=threads)
        print(f"dataset-level accumulators on {device}: {1000 * t['add']:.2f} ms per image added in batches of "
              f"{a.batch}, {1000 * t['rows']:.2f} ms per image for the {t['rows_count']} rows at the end on {threads} "
              f"thread{'s' if threads != 1 else ''} "
              f"({a.images} images, {a.layers} layers x {a.maps} maps on {a.grid}x{a.grid}, {a.size} px masks)",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
