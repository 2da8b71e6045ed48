"""The cost of the sanity columns against a plain run: one line per setting, seconds of the study loop.

    PYTHONPATH=src python scripts/bench_sanity.py                      # DINOv2 ViT-S/14, 16 synthetic images
    PYTHONPATH=src python scripts/bench_sanity.py model=efficientnet_lite0_bundled method=gradcam -- metrics.road=true

Arguments before ``--`` apply to every run; each argument after it is one more setting timed beside the plain
run (default: ``metrics.randomisation=cascading`` and ``metrics.randomisation=independent``). Runs go to a
temporary folder without the map cache, figures or the dataset pass, so only the per-image work is timed.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

CONF = Path(__file__).resolve().parents[1] / "conf"
BASE = ["model=dinov2_vits14_bundled", "method=cls_attention", "data=synthetic", "progress=false",
        "cache.enabled=false", "figures.grid=false", "dataset_metrics=false", "save_maps=false"]


def timed(overrides: list[str], out: Path) -> dict:
    from layerscope import study
    from layerscope.plan import name_from_choices

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    name_from_choices(cfg, cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    t0 = time.perf_counter()
    study.run(cfg, out)
    summary = json.loads((out / "run_summary.json").read_text())
    return {"wall_seconds": round(time.perf_counter() - t0, 2), "loop_seconds": summary["loop_seconds"],
            "images": summary["images"]}


def main(argv: list[str]) -> int:
    common, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    settings = [[]] + [[e] for e in (extra or ["metrics.randomisation=cascading", "metrics.randomisation=independent"])]
    with tempfile.TemporaryDirectory() as tmp:
        plain = None
        for i, setting in enumerate(settings):
            r = timed([*BASE, *common, *setting], Path(tmp) / str(i))
            plain = plain or r["loop_seconds"]
            print(f"{' '.join(setting) or 'plain run':40s} {r['images']} images: loop {r['loop_seconds']:.1f} s "
                  f"(x{r['loop_seconds'] / plain:.2f} the plain run), wall {r['wall_seconds']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
