"""Few-shot k-NN benchmark: the map's cost (search, aggregation, masking, smoothing) per image and layer
against the backbone's own forward pass, for the presets ``anomalydino`` and ``patchcore``.

The bank is fitted once per case on ``shots`` defect-free synthetic crops; then, in interleaved rounds, a
batch of test images goes through the backbone (timed) and through ``PatchKNN.maps`` one layer at a time
(timed apart). The goal: on a CPU, one layer's map costs less than the forward pass at 16 shots.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch

from .common import spread

# (preset, model config, layers): AnomalyDINO's backbone at its resolution and its last layer; PatchCore's
# mid-level stages (strides 8 and 16, as WideResNet-50's layer2 and layer3) of EfficientNet-Lite0.
KNN_CASES = [("anomalydino", "dinov2_vits14_bundled", [11]), ("patchcore", "efficientnet_lite0_bundled", [2, 3])]
KNN_QUICK = [("anomalydino", "tiny_vit", [1]), ("patchcore", "tiny_cnn", [1])]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(preset: str, model: str, layers: Sequence[int], device: torch.device, shots: int, images: int):
    """The backbone on ``device``, the preset fitted on ``shots`` references, and a batch of test images."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from ..config.paths import config_dir
    from ..data.transforms import to_input
    from ..config.compose import name_from_choices
    from ..plan import build, build_dataset

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}", f"method={preset}", f"method.n_references={shots}"],
                      return_hydra_config=True)
    name_from_choices(cfg, cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    bb = build(cfg.model)
    bb.load_weights()
    bb.to(device).eval()
    method = build(OmegaConf.create(OmegaConf.to_container(cfg.method, resolve=True)), backbone=bb)
    dataset = build_dataset(cfg)
    size = bb.img_size
    refs = torch.stack([to_input(s, size)[0] for s in dataset.references(shots)]).to(device)
    t0 = time.perf_counter()
    captured = method.capture_layers(layers)
    method.fit(refs.split(8), layers, lambda x: bb.extract(x, captured, method.capture))
    _sync(device)
    fit_seconds = time.perf_counter() - t0
    x = torch.stack([to_input(dataset[i], size)[0] for i in range(images)]).to(device)
    return bb, method, x, fit_seconds


def knn_table(cases: Sequence[tuple[str, str, Sequence[int]]], device: str, rounds: int, shots: int = 16,
              images: int = 4) -> list[dict]:
    """Median (min-max over rounds) ms per image of the forward pass and of each layer's map.

    Args:
        cases: (preset, model config, layers) to time.
        device: ``cpu`` or ``cuda``.
        rounds: timed rounds (one untimed warm-up first).
        shots: reference images in the bank.
        images: test images per timed batch.

    Returns:
        One row per case and layer: ``preset``, ``model``, ``device``, ``layer``, ``shots``, ``bank_rows``,
        ``backbone_ms``, ``map_ms`` (+ ``_min``/``_max``), ``map_vs_backbone``, ``fit_seconds``.
    """
    dev = torch.device(device)
    rows = []
    for preset, model, layers in cases:
        bb, method, x, fit_seconds = _setup(preset, model, layers, dev, shots, images)
        fwd, per_layer = [], {layer: [] for layer in layers}
        with torch.no_grad():
            for r in range(rounds + 1):
                _sync(dev)
                t0 = time.perf_counter()
                captured, _ = bb.extract(x, layers, method.capture)
                _sync(dev)
                t_fwd = time.perf_counter() - t0
                times = {}
                for layer in layers:
                    t0 = time.perf_counter()
                    method.maps({layer: captured[layer]})
                    _sync(dev)
                    times[layer] = time.perf_counter() - t0
                if r:  # the first round warms up
                    fwd.append(1000 * t_fwd / images)
                    for layer in layers:
                        per_layer[layer].append(1000 * times[layer] / images)
        f_med, _, _ = spread(fwd)
        for layer in layers:
            m_med, m_min, m_max = spread(per_layer[layer])
            rows.append({"preset": preset, "model": model, "device": device, "layer": layer, "shots": shots,
                         "bank_rows": len(method.banks[layer]), "backbone_ms": round(f_med, 2),
                         "map_ms": round(m_med, 2), "map_ms_min": round(m_min, 2), "map_ms_max": round(m_max, 2),
                         "map_vs_backbone": round(m_med / f_med, 3), "fit_seconds": round(fit_seconds, 2)})
            print(f"{preset:12s} {model:28s} {device:4s} layer {layer:2d}: bank {rows[-1]['bank_rows']:6d} rows, "
                  f"map {m_med:8.1f} ms/image ({m_min:.1f}-{m_max:.1f}) vs backbone {f_med:8.1f} ms/image "
                  f"(x{m_med / f_med:.2f}); fit {fit_seconds:.1f} s", flush=True)
    return rows
