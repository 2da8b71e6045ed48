"""Grad-CAM's deletion / insertion AUC against seeded random maps on the same grid (the README's table).

EfficientNet-Lite0 (bundled weights) on the scikit-image cat, its predicted class, every stage, both
baselines. Ties among equal cells (Grad-CAM's zeros) are averaged over ``--tie-orders`` seeded orders, as
``metrics.faithfulness_tie_orders`` does; the raster order (the rule before) and the range over single
random orders show how much the order alone moves the AUC.

    python experiments/faithfulness_vs_random.py [--steps 16] [--random 20] [--tie-orders 4]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from skimage import data

import layerscope as ls
from layerscope.metrics.faithfulness import deletion_insertion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--last-steps", type=int, default=49, help="the last stage once more at this many steps")
    parser.add_argument("--random", type=int, default=20, help="seeded random maps per stage")
    parser.add_argument("--tie-orders", type=int, default=4)
    args = parser.parse_args()

    bb = ls.load("efficientnet_lite0_bundled")
    cam = ls.maps(bb, [data.chelsea()], method="gradcam")
    probs = torch.from_numpy(cam.logits).softmax(-1)[0]
    target = torch.tensor([int(probs.argmax())])
    print(f"predicted {cam.predictions[0]!r}, p = {float(probs.max()):.2f}; steps {args.steps}, "
          f"{args.random} random maps, tie orders {args.tie_orders}")
    x = torch.from_numpy(cam.images).permute(0, 3, 1, 2).float() / 255

    def forward(z: torch.Tensor) -> torch.Tensor:
        return bb.logits(bb.normalize(z))

    def auc(maps: torch.Tensor, baseline: str, steps: int, orders: int, seed: int = 0) -> np.ndarray:
        return deletion_insertion(forward, x, maps, target, steps=steps, baseline=baseline, batch_size=32,
                                  tie_orders=orders, seed=seed)[0].numpy()  # (K, 2)

    print("| stage (grid) | zero cells | baseline | Grad-CAM | raster ties | single orders | random | random below |")
    print("|---|---|---|---|---|---|---|---|")
    for layer, steps in [(layer, args.steps) for layer in cam.layers] + [(cam.layers[-1], args.last_steps)]:
        g = torch.from_numpy(cam[layer])  # (1, 1, h, w)
        h, w = g.shape[-2:]
        rand = torch.rand(1, args.random, h, w, generator=torch.Generator().manual_seed(layer))
        for baseline in ("blur", "mean"):
            ours = auc(g, baseline, steps, args.tie_orders)[0]
            raster = auc(g, baseline, steps, 0)[0]
            singles = np.array([auc(g, baseline, steps, 1, seed)[0] for seed in range(args.tie_orders)])
            r = auc(rand, baseline, steps, 1)
            below = int((r[:, 0] < ours[0]).sum())
            print(f"| {layer} ({h} x {w}) | {float((g == 0).float().mean()):.0%} | `{baseline}` | "
                  f"{ours[0]:.3f} (ins {ours[1]:.3f}) | {raster[0]:.3f} | {singles[:, 0].min():.3f}-"
                  f"{singles[:, 0].max():.3f} | {r[:, 0].mean():.3f} ± {r[:, 0].std(ddof=1):.3f} (ins "
                  f"{r[:, 1].mean():.3f}) | {below} of {args.random} |" + (f" {steps} steps" if steps != args.steps
                                                                            else ""), flush=True)


if __name__ == "__main__":
    main()
