"""One study run: data -> backbone (one pass per batch) -> maps -> masks -> metrics -> results."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .backbones import Backbone, select_indices
from .data.base import Sample
from .data.transforms import to_input
from .figures.grid import layer_head_grid
from .loggers import Logger
from .maps import threshold_maps, upsample
from .maps.methods import MapMethod
from .results.maps_io import save_maps
from .results.table import ResultsWriter
from .scoring import ScoreOptions, Target, score_layer

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """A study's checked choices, resolved against the model before any weights load."""

    method: MapMethod
    layers: list[int]
    heads: list[int]
    scoring: ScoreOptions


def as_plain(value: Any) -> Any:
    """OmegaConf containers to plain Python; scalars stay scalars."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def build(cfg: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets our own one-line errors through unwrapped.

    Hydra wraps constructor errors in ``InstantiationException`` with a multi-line message;
    a ValueError or FileNotFoundError raised by our code is already the message the user needs.
    """
    from hydra.errors import InstantiationException

    try:
        return instantiate(cfg, _convert_="all", **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, (ValueError, FileNotFoundError)):
            raise e.__cause__ from None
        raise


def plan_study(cfg: DictConfig, backbone: Backbone) -> Plan:
    """Check every option against the model; raise ValueError naming the option otherwise."""
    method: MapMethod = build(cfg.method, backbone=backbone)
    layers = select_indices(as_plain(cfg.layer), backbone.num_layers, "layer")
    heads = select_indices(as_plain(cfg.head), method.num_maps(), "head")
    if int(cfg.batch_size) < 1:
        raise ValueError(f"batch_size={cfg.batch_size}: expected an int >= 1")
    return Plan(method, layers, heads, ScoreOptions.from_config(cfg))


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
    return build(data)


def batches(samples: Any, size: int) -> Iterator[list[Sample]]:
    """Lists of up to ``size`` samples from anything with ``len`` and indexing."""
    batch: list[Sample] = []
    for i in range(len(samples)):
        batch.append(samples[i])
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def fit_references(plan: Plan, backbone: Backbone, dataset: Any, batch_size: int, device: torch.device) -> None:
    """Feed the dataset's normal reference images to a method that learns from them (patch_knn)."""
    if not plan.method.needs_references:
        return
    if not hasattr(dataset, "references"):
        raise ValueError(f"method={plan.method.name} needs normal reference images, which data={type(dataset).__name__} "
                         "does not offer; use data=synthetic, data=mvtec, or data=folder with data.normal_dir")
    n = plan.method.n_references or len(dataset)
    refs = dataset.references(n)
    size = backbone.img_size
    xs = (torch.stack([to_input(s, size)[0] for s in batch]).to(device) for batch in batches(refs, batch_size))
    t0 = time.perf_counter()
    plan.method.fit(xs, plan.layers, lambda x: backbone.extract(x, plan.layers, plan.method.capture))
    log.info("%s fitted on %d normal images in %.1fs", plan.method.name, len(refs), time.perf_counter() - t0)


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

    backbone: Backbone = build(cfg.model)
    plan = plan_study(cfg, backbone)
    dataset = build_dataset(cfg)
    logger: Logger = build(cfg.logger)
    t0 = time.perf_counter()
    backbone.load_weights()
    backbone.to(device).eval()
    method = plan.method
    log.info("model %s (%s, %d layers) ready in %.1fs; layers %s, method %s, %d images",
             backbone.name, backbone.kind, backbone.num_layers, time.perf_counter() - t0,
             plan.layers, method.name, len(dataset))
    logger.start(cfg, out_dir, backbone.name, method.name)
    ok = False
    try:
        stats = _study_loop(cfg, out_dir, plan, backbone, dataset, device, logger)
        write_summary(out_dir, {"complete": True, "model": backbone.name, "method": method.name,
                                "layers": plan.layers, "seconds": round(time.perf_counter() - t0, 3), **stats})
        ok = True
    finally:
        if ok:
            logger.log_results(out_dir / "results.csv")
        logger.finish(ok)
    return out_dir / "results.csv"


SUMMARY = "run_summary.json"


def write_summary(out_dir: Path, summary: dict) -> None:
    """``run_summary.json``, written last (atomically): its presence marks a finished run."""
    import json

    tmp = out_dir / f"{SUMMARY}.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out_dir / SUMMARY)


def is_complete(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a finished run."""
    return (Path(out_dir) / SUMMARY).exists()


def _study_loop(cfg: DictConfig, out_dir: Path, plan: Plan, backbone: Backbone, dataset: Any, device: torch.device,
                logger: Logger) -> dict:
    method = plan.method
    fit_references(plan, backbone, dataset, int(cfg.batch_size), device)
    all_names = method.map_names()
    names = [all_names[h] for h in plan.heads] + (["mean"] if method.head_mean else [])
    writer = ResultsWriter(out_dir / "results.csv")
    size = backbone.img_size
    n_figures = 0
    t_forward = 0.0
    try:
        with tqdm(total=len(dataset), desc=backbone.name, unit="img", disable=not cfg.progress) as bar:
            for batch in batches(dataset, int(cfg.batch_size)):
                inputs = [to_input(s, size) for s in batch]
                x = torch.stack([i[0] for i in inputs]).to(device)
                t1 = time.perf_counter()
                captured, logits = backbone.extract(x, plan.layers, method.capture)
                layer_maps = {layer: m.cpu() for layer, m in method.maps(captured).items()}
                t_forward += time.perf_counter() - t1
                probs = logits.float().softmax(-1).cpu() if logits is not None else None
                for b, sample in enumerate(batch):
                    _, mask, valid = inputs[b]
                    target = Target(mask, valid) if mask is not None else None
                    meta = {"image": sample.id, "group": sample.group or sample.id, "category": sample.category,
                            "dataset": cfg.data.get("name", ""), "model": backbone.name, "kind": backbone.kind,
                            "num_layers": backbone.num_layers, "img_size": size, "method": method.name,
                            "threshold_rule": plan.scoring.rule,
                            "mask_fraction": target.fraction if target is not None else None}
                    if probs is not None and backbone.labels:
                        p, c = probs[b].max(-1)
                        meta.update(pred_label=backbone.labels[int(c)], pred_prob=float(p))
                    rows, saved = [], {}
                    for layer, maps in layer_maps.items():
                        chosen = maps[b][plan.heads]
                        if method.head_mean:
                            chosen = torch.cat([chosen, maps[b].mean(0, keepdim=True)])
                        saved[layer] = chosen.numpy()
                        for row in score_layer(chosen, names, target, plan.scoring):
                            rows.append({**meta, "layer": layer, "grid_h": chosen.shape[-2],
                                         "grid_w": chosen.shape[-1], **row})
                    writer.write(rows)
                    image_u8 = (inputs[b][0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
                    mask_np = mask.numpy() if mask is not None else None
                    if cfg.save_maps:
                        save_maps(out_dir / "maps" / f"{sample.id}.npz", image_u8, mask_np, saved,
                                  {layer: names for layer in saved}, meta,
                                  valid=valid.numpy() if valid is not None else None)
                    if logger.wants_maps():
                        first = plan.scoring.thresholds[0]
                        kept = {layer: upsample(threshold_maps(torch.from_numpy(m), first, plan.scoring.rule),
                                                (size, size)).numpy() for layer, m in saved.items()}
                        logger.log_maps(sample.id, sample.category, image_u8, mask_np, saved,
                                        {layer: names for layer in saved}, kept)
                    if cfg.figures.grid and n_figures < int(cfg.figures.max_images):
                        layer_head_grid(image_u8, mask_np, saved, {layer: names for layer in saved},
                                        f"{sample.id} | {backbone.name} | {method.name}",
                                        out_dir / "figures" / f"{sample.id}_grid.png")
                        n_figures += 1
                    bar.update(1)
    finally:
        writer.close()
    log.info("backbone + maps %.2fs for %d images (%.3fs/img); %d rows -> %s", t_forward, len(dataset),
             t_forward / max(len(dataset), 1), writer.rows, out_dir / "results.csv")
    return {"images": len(dataset), "rows": writer.rows, "backbone_seconds": round(t_forward, 3)}
