"""One study run: data -> backbone (one pass per batch) -> maps -> masks -> metrics -> results."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .backbones import Backbone, select_indices
from .data.base import Sample
from .data.transforms import to_input
from .figures.grid import layer_head_grid
from .maps import reduce_features, threshold_maps, upsample
from .maps.threshold import RULES
from .maps.upsample import MODES
from .metrics import auroc, auroc_counts, cell_counts, iou, normalized_entropy
from .results.maps_io import save_maps
from .results.table import ResultsWriter

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """A study's checked choices, resolved against the model before any weights load."""

    layers: list[int]
    heads: list[int]
    method: str
    reductions: list[str]
    thresholds: list[float]
    rule: str
    upsample: str


def as_list(value: Any) -> Any:
    """OmegaConf containers to plain Python; scalars stay scalars."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def plan_study(cfg: DictConfig, backbone: Backbone) -> Plan:
    """Check every option against the model; raise ValueError naming the option otherwise."""
    method = cfg.method.name
    if method == "auto":
        method = "cls_attention" if backbone.kind == "vit" else "features"
    backbone.check_method(method)
    reductions = list(as_list(cfg.method.get("reductions", [])) or [])
    if method == "features":
        reduce_features(torch.zeros(1, 2, 2, 2), reductions)  # validates the names
    n_maps = backbone.num_maps(method) if method == "cls_attention" else len(reductions)
    layers = select_indices(as_list(cfg.layer), backbone.num_layers, "layer")
    heads = select_indices(as_list(cfg.head), n_maps, "head")
    thresholds = as_list(cfg.threshold)
    thresholds = [thresholds] if not isinstance(thresholds, list) else thresholds
    if not thresholds or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in thresholds):
        raise ValueError(f"threshold={thresholds}: expected a number or a list of numbers in [0, 1]")
    bad = [t for t in thresholds if not 0 <= t <= 1]
    if bad:
        raise ValueError(f"threshold={bad}: thresholds must be in [0, 1]")
    if cfg.threshold_rule not in RULES:
        raise ValueError(f"threshold_rule={cfg.threshold_rule}: expected one of {', '.join(RULES)}")
    if cfg.upsample not in MODES:
        raise ValueError(f"upsample={cfg.upsample}: expected one of {', '.join(MODES)}")
    if int(cfg.batch_size) < 1:
        raise ValueError(f"batch_size={cfg.batch_size}: expected an int >= 1")
    return Plan(layers, heads, method, reductions, [float(t) for t in thresholds], cfg.threshold_rule, cfg.upsample)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda: no CUDA device is visible; use device=cpu or device=auto")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device={name}: expected auto, cpu or cuda")
    return torch.device(name)


def build_dataset(cfg: DictConfig) -> Any:
    """Instantiate ``cfg.data`` (its ``name`` key is metadata, not an argument)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("name", None)
    return instantiate(data)


def _batches(dataset: Any, size: int):
    batch: list[Sample] = []
    for i in range(len(dataset)):
        batch.append(dataset[i])
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_image(maps: torch.Tensor, names: list[str], mask: torch.Tensor | None, plan: Plan) -> list[dict]:
    """Metrics of one image's maps at one layer.

    Args:
        maps: (K, h, w) float, the selected heads/reductions, plus the head mean as the last
            map when ``names[-1] == "mean"``.
        names: K names.
        mask: (S, S) bool ground truth, or None.
        plan: thresholds, rule and upsampling.

    Returns:
        One dict per (map, threshold), plus a ``best`` row per threshold for attention
        (the DINO protocol: the head with the highest IoU on this image).
    """
    entropy = normalized_entropy(maps)
    rows = []
    has_mask = mask is not None and bool(mask.any()) and not bool(mask.all())
    aurocs = None
    if has_mask and plan.upsample == "nearest":  # exact and ~100x cheaper on the grid
        aurocs = auroc_counts(maps.flatten(-2), *cell_counts(mask, tuple(maps.shape[-2:])))
    elif has_mask:
        aurocs = auroc(upsample(maps, tuple(mask.shape), plan.upsample), mask)
    for t in plan.thresholds:
        ious = iou(upsample(threshold_maps(maps, t, plan.rule), tuple(mask.shape)), mask) if mask is not None else None
        for k, name in enumerate(names):
            rows.append({"head": name, "threshold": t, "entropy": float(entropy[k]),
                         "iou": float(ious[k]) if ious is not None else None,
                         "auroc": float(aurocs[k]) if aurocs is not None else None})
        if ious is not None and plan.method == "cls_attention":
            heads = [k for k, n in enumerate(names) if n != "mean"]
            k = max(heads, key=lambda j: -1.0 if ious[j] != ious[j] else float(ious[j]))
            rows.append(dict(rows[-len(names) + k], head="best", best_head=names[k]))
    return rows


def run(cfg: DictConfig, out_dir: Path) -> Path:
    """Run one study and write its outputs into ``out_dir``.

    Writes ``results.csv`` (appended image by image), ``maps/<image>.npz``,
    ``figures/<image>_grid.png`` and ``config.yaml`` (resolved).

    Returns:
        Path of ``results.csv``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    torch.manual_seed(int(cfg.seed))
    device = resolve_device(cfg.device)

    backbone: Backbone = instantiate(cfg.model, _convert_="all")
    plan = plan_study(cfg, backbone)
    dataset = build_dataset(cfg)
    t0 = time.perf_counter()
    backbone.load_weights()
    backbone.to(device).eval()
    log.info("model %s (%s, %d layers) ready in %.1fs; layers %s, method %s, %d images",
             backbone.name, backbone.kind, backbone.num_layers, time.perf_counter() - t0,
             plan.layers, plan.method, len(dataset))

    writer = ResultsWriter(out_dir / "results.csv")
    dataset_name = cfg.data.get("name", "")
    size = backbone.img_size
    n_figures = 0
    t_forward = 0.0
    try:
        with tqdm(total=len(dataset), desc=f"{backbone.name}", unit="img", disable=not cfg.progress) as bar:
            for batch in _batches(dataset, int(cfg.batch_size)):
                inputs = [to_input(s, size) for s in batch]
                x = torch.stack([i[0] for i in inputs]).to(device)
                t1 = time.perf_counter()
                captured, logits = backbone.extract(x, plan.layers, plan.method)
                t_forward += time.perf_counter() - t1
                probs = logits.float().softmax(-1).cpu() if logits is not None else None
                per_layer = {}
                for layer, t in captured.items():
                    t = t.cpu()
                    if plan.method == "features":
                        per_layer[layer] = (reduce_features(t, plan.reductions), list(plan.reductions))
                    else:
                        per_layer[layer] = (t, [str(h) for h in range(t.shape[1])])
                for b, sample in enumerate(batch):
                    mask = inputs[b][1]
                    common = {"image": sample.id, "category": sample.category, "dataset": dataset_name,
                              "model": backbone.name, "kind": backbone.kind, "img_size": size, "method": plan.method,
                              "threshold_rule": plan.rule,
                              "mask_fraction": float(mask.float().mean()) if mask is not None else None}
                    if probs is not None and backbone.labels:
                        p, c = probs[b].max(-1)
                        common.update(pred_label=backbone.labels[int(c)], pred_prob=float(p))
                    rows, saved, saved_names = [], {}, {}
                    for layer, (all_maps, all_names) in per_layer.items():
                        maps = all_maps[b]
                        names = [all_names[h] for h in plan.heads]
                        chosen = maps[plan.heads]
                        if plan.method == "cls_attention":
                            chosen = torch.cat([chosen, maps.mean(0, keepdim=True)])
                            names = names + ["mean"]
                        for row in score_image(chosen, names, mask, plan):
                            rows.append({**common, "layer": layer, "grid_h": maps.shape[-2], "grid_w": maps.shape[-1], **row})
                        saved[layer], saved_names[layer] = chosen.numpy(), names
                    writer.write(rows)
                    image_u8 = (inputs[b][0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
                    mask_np = mask.numpy() if mask is not None else None
                    if cfg.save_maps:
                        save_maps(out_dir / "maps" / f"{sample.id}.npz", image_u8, mask_np, saved, saved_names,
                                  {"image": sample.id, "model": backbone.name, "method": plan.method,
                                   "category": sample.category})
                    if cfg.figures.grid and n_figures < int(cfg.figures.max_images):
                        layer_head_grid(image_u8, mask_np, saved, saved_names,
                                        f"{sample.id} | {backbone.name} | {plan.method}",
                                        out_dir / "figures" / f"{sample.id}_grid.png")
                        n_figures += 1
                    bar.update(1)
    finally:
        writer.close()
    log.info("backbone time %.2fs for %d images (%.3fs/img); %d rows -> %s", t_forward, len(dataset),
             t_forward / max(len(dataset), 1), writer.rows, out_dir / "results.csv")
    return out_dir / "results.csv"
