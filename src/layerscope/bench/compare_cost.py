"""What intervals and nulls cost ``layerscope-compare``: the time per similarity measure.

Two synthetic models shaped like the bundled pair (a ViT of 12 blocks of width 384 and a CNN of 5
stages of widths 16-320), every image of both with the same ids, compared as ``layerscope-compare
--measure M --permutations P --boot B`` does it (``comparison.similarity_table``: each layer prepared
once and reused by every pair, the draws and permutations shared), one measure at a time.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

VIT = (384,) * 12
CNN = (16, 24, 40, 112, 320)


def models(n: int = 500, widths: Sequence[Sequence[int]] = (VIT, CNN), seed: int = 0) -> list:
    """Synthetic ``comparison.Model`` s: each layer a noisy nonlinear view of one shared latent (n, 64)."""
    from ..comparison import Model

    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 64))
    ids = [f"image{i}" for i in range(n)]
    out = []
    for m, dims in enumerate(widths):
        arrays = {layer: (np.tanh(latent @ rng.normal(size=(64, d)) / 8) + 0.1 * (1 + layer) * rng.normal(size=(n, d)))
                  .astype(np.float32) for layer, d in enumerate(dims)}
        out.append(Model(f"model{m}", [], ids, arrays))
    return out


def similarity_times(measures: Sequence[str], n: int = 500, n_perm: int = 200, n_boot: int = 1000,
                     widths: Sequence[Sequence[int]] = (VIT, CNN), seed: int = 0) -> list[dict]:
    """One row per measure: wall seconds and CPU seconds (all threads of this process: what the work costs
    on a machine others share) for every pair of layers of the models (both orders, each model with itself)
    with the interval and the null, the number of rows, the settings, the replicate threads and the
    1-minute load average when the measure finished (wall times mean little above the core count)."""
    import os

    from ..comparison import similarity_table
    from ..metrics.measures.resampling import workers

    rows = []
    group = models(n, widths, seed)
    for name in measures:
        started, cpu = time.perf_counter(), time.process_time()
        table = similarity_table(group, measures=[name], n_perm=n_perm, n_boot=n_boot, seed=seed)
        rows.append({"measure": name, "seconds": time.perf_counter() - started,
                     "cpu_seconds": time.process_time() - cpu, "rows": len(table), "images": n,
                     "layers": "+".join(str(len(w)) for w in widths), "permutations": n_perm, "boot": n_boot,
                     "threads": workers(), "load": os.getloadavg()[0]})
    return rows
