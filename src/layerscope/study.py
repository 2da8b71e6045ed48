"""One study run: data -> backbone (one pass per batch) -> maps -> masks -> metrics -> results.

The orchestrator: it calls the plan (``plan``), the map source with its cache (``mapsource``),
the run folder's resume bookkeeping (``results.rundir``) and the row builder (``scoring``).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .backbones import Backbone
from .data.ids import safe_name
from .data.images import BadImage
from .data.transforms import to_input
from .figures.grid import layer_head_grid
from .loggers import Logger
from .maps import threshold_maps, upsample
from .mapsource import MapSource, build_cache, to_uint8
from .plan import Plan, build, build_dataset, plan_study, resolve_device
from .results import layout
from .results.maps_io import save_maps
from .results.rundir import previous_progress, write_summary
from .results.table import ResultsWriter
from .scoring import Target, image_rows

log = logging.getLogger(__name__)


def fit_references(plan: Plan, backbone: Backbone, dataset: Any, batch_size: int, device: torch.device) -> None:
    """Feed the dataset's normal reference images to a method that learns from them (patch_knn)."""
    if not plan.method.needs_references:
        return
    n = plan.method.n_references or len(dataset)
    refs = dataset.references(n)
    size = backbone.img_size
    chunks = [refs[i:i + batch_size] for i in range(0, len(refs), batch_size)]
    xs = (torch.stack([to_input(s, size)[0] for s in chunk]).to(device) for chunk in chunks)
    t0 = time.perf_counter()
    plan.method.fit(xs, plan.layers, lambda x: backbone.extract(x, plan.layers, plan.method.capture))
    log.info("%s fitted on %d normal images in %.1fs", plan.method.name, len(refs), time.perf_counter() - t0)


def run(cfg: DictConfig, out_dir: Path) -> Path:
    """Run one study and write its outputs into ``out_dir`` (see ``results.layout``).

    Returns:
        Path of ``results.csv``.
    """
    out_dir = Path(out_dir)
    done = previous_progress(cfg, out_dir)
    if done is None:
        log.info("%s already holds this finished run; skipped (resume=false to refuse instead)", out_dir)
        return out_dir / layout.RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / layout.CONFIG, resolve=True)
    torch.manual_seed(int(cfg.seed))
    device = resolve_device(cfg.device)

    backbone: Backbone = build(cfg.model)
    plan = plan_study(cfg, backbone)
    dataset = build_dataset(cfg)
    if plan.method.needs_references and not hasattr(dataset, "references"):
        raise ValueError(f"method={plan.method.name} needs defect-free reference images, which data="
                         f"{cfg.data.get('name', '?')} does not offer; use data=synthetic, data=mvtec, or data=folder "
                         "with data.normal_dir")
    logger: Logger = build(cfg.logger)
    t0 = time.perf_counter()
    backbone.load_weights()
    backbone.to(device).eval()
    method = plan.method
    log.info("model %s (%s, %d layers) ready in %.1fs; layers %s, method %s, %d images",
             backbone.name, backbone.kind, backbone.num_layers, time.perf_counter() - t0,
             plan.layers, method.name, len(dataset))
    logger.start(cfg, out_dir, backbone.name, method.name)
    ok, pooled = False, None
    try:
        stats = _study_loop(cfg, out_dir, plan, backbone, dataset, device, logger, done)
        pooled, stats["dataset_seconds"] = dataset_pass(cfg, out_dir)
        write_summary(out_dir, {"complete": True, "model": backbone.name, "method": method.name,
                                "layers": plan.layers, "seconds": round(time.perf_counter() - t0, 3), **stats})
        ok = True
    finally:
        if ok:
            logger.log_results(out_dir / layout.RESULTS)
            if pooled is not None:
                logger.log_dataset(pooled)
        logger.finish(ok)
    return out_dir / layout.RESULTS


def dataset_pass(cfg: DictConfig, out_dir: Path) -> tuple[Any, float]:
    """The dataset-level protocol over the saved maps (``dataset_metrics.csv``), when asked and possible.

    Returns:
        (the table or None, seconds spent).
    """
    if not cfg.dataset_metrics:
        return None, 0.0
    if not cfg.save_maps:
        log.info("dataset_metrics skipped: it reads the saved maps (save_maps=false)")
        return None, 0.0
    from .protocol import write_dataset_metrics

    t0 = time.perf_counter()
    try:
        table = write_dataset_metrics(out_dir, n_boot=0, seed=int(cfg.seed))  # CIs: layerscope-report (costly)
    except FileNotFoundError as e:  # no masks: nothing to pool
        log.info("dataset_metrics skipped: %s", e)
        return None, 0.0
    seconds = time.perf_counter() - t0
    best = table[table["category"] == "all"].sort_values("aupro", ascending=False).head(1)
    for r in best.itertuples():
        log.info("dataset level (pooled over %d images): best AUPRO %.3f at layer %s, %s; written %s in %.1fs",
                 r.n_images, r.aupro, r.layer, r.head, out_dir / layout.DATASET_METRICS, seconds)
    return table, round(seconds, 3)


class Prepared(torch.utils.data.Dataset):
    """Dataset items resized for the model; runs in DataLoader workers when ``num_workers`` > 0."""

    def __init__(self, dataset: Any, size: int):
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        try:
            s = self.dataset[i]
        except BadImage as e:  # the study skips it (or stops, with on_bad_image=fail)
            name = self.dataset.name_of(i) if hasattr(self.dataset, "name_of") else f"item {i}"
            return {"id": safe_name(name), "error": str(e)}
        x, mask, valid = to_input(s, self.size)
        sid = safe_name(s.id)
        return {"id": sid, "group": s.group or sid, "category": s.category, "x": x, "mask": mask, "valid": valid}


def _as_list(items: list) -> list:
    return items


def _study_loop(cfg: DictConfig, out_dir: Path, plan: Plan, backbone: Backbone, dataset: Any, device: torch.device,
                logger: Logger, done: set[str]) -> dict:
    method = plan.method
    fit_references(plan, backbone, dataset, int(cfg.batch_size), device)
    all_names = method.map_names()
    names = [all_names[h] for h in plan.heads] + (["mean"] if method.head_mean else [])
    cache = build_cache(cfg, method)
    source = MapSource(backbone, plan, device, cfg.precision, cache)
    loader = torch.utils.data.DataLoader(
        Prepared(dataset, backbone.img_size), batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers),
        collate_fn=_as_list, pin_memory=device.type == "cuda")
    writer = ResultsWriter(out_dir / layout.RESULTS)
    n_figures, no_mask, skipped = 0, 0, []
    try:
        with tqdm(total=len(dataset), desc=backbone.name, unit="img", disable=not cfg.progress) as bar, \
                open(out_dir / layout.DONE, "a") as done_file:
            bar.update(len(done))
            for items in loader:
                for bad in [item for item in items if "error" in item]:
                    if cfg.on_bad_image == "fail":
                        raise ValueError(f"{bad['error']} (on_bad_image=fail)")
                    log.warning("skipped: %s", bad["error"])
                    skipped.append(bad["error"])
                    bar.update(1)
                items = [item for item in items if "error" not in item and item["id"] not in done]
                no_mask += sum(item["mask"] is None for item in items)
                if not items:
                    continue
                per_image, logits = source(items)
                for item, maps, image_logits in zip(items, per_image, logits):
                    n_figures += _record(cfg, out_dir, plan, backbone, names, item, maps, image_logits, writer,
                                         logger, draw=n_figures < int(cfg.figures.max_images))
                    try:
                        done_file.write(item["id"] + "\n")  # after its rows are flushed: the image is finished
                        done_file.flush()
                    except OSError as e:
                        raise OSError(e.errno, e.strerror, str(out_dir / layout.DONE)) from None
                    bar.update(1)
    finally:
        writer.close()
    stats = {"images": len(dataset), "rows": writer.rows, "backbone_calls": source.calls,
             "backbone_seconds": round(source.seconds, 3), "skipped_images": skipped, "images_without_mask": no_mask}
    if skipped:
        log.warning("%d unreadable images skipped (listed in run_summary.json)", len(skipped))
    if no_mask:
        log.info("%d images have no mask: their mask metrics are empty (see the notes column)", no_mask)
    if cache is not None:
        stats.update(cache_hits=cache.hits, cache_misses=cache.misses, cache_evicted=cache.evict())
        log.info("map cache: %d hits, %d misses (%s)", cache.hits, cache.misses, cache.dir)
    log.info("backbone + maps %.2fs in %d calls for %d images; %d rows -> %s", source.seconds, source.calls,
             len(dataset), writer.rows, out_dir / layout.RESULTS)
    return stats


def _record(cfg: DictConfig, out_dir: Path, plan: Plan, backbone: Backbone, names: list[str], item: dict,
            maps: dict[int, torch.Tensor], logits: torch.Tensor | None, writer: ResultsWriter, logger: Logger,
            draw: bool) -> int:
    """Score, save and draw one image's maps; returns 1 when a grid figure was drawn."""
    method, size = plan.method, backbone.img_size
    mask, valid = item["mask"], item["valid"]
    target = Target(mask, valid) if mask is not None else None
    meta = {"image": item["id"], "group": item["group"], "category": item["category"],
            "dataset": cfg.data.get("name", ""), "model": backbone.name, "kind": backbone.kind,
            "num_layers": backbone.num_layers, "img_size": size, "method": method.name,
            "mask_fraction": target.fraction if target is not None else None}
    if logits is not None and backbone.labels:
        p, c = logits.softmax(-1).max(-1)
        meta.update(pred_label=backbone.labels[int(c)], pred_prob=float(p))
    chosen = {}
    for layer, layer_maps in maps.items():
        picked = layer_maps[plan.heads]
        chosen[layer] = torch.cat([picked, layer_maps.mean(0, keepdim=True)]) if method.head_mean else picked
    all_names = {layer: names for layer in chosen}
    writer.write(image_rows(meta, chosen, all_names, target, plan.scoring))
    saved = {layer: m.numpy() for layer, m in chosen.items()}
    image_u8 = to_uint8(item["x"])
    mask_np = mask.numpy() if mask is not None else None
    if cfg.save_maps:
        save_maps(layout.map_file(out_dir, item["id"]), image_u8, mask_np, saved, all_names,
                  dict(meta, threshold_rule=plan.scoring.rule), valid=valid.numpy() if valid is not None else None)
    if logger.wants_maps():
        first = plan.scoring.thresholds[0]
        kept = {layer: upsample(threshold_maps(m, first, plan.scoring.rule), (size, size)).numpy()
                for layer, m in chosen.items()}
        logger.log_maps(item["id"], item["category"], image_u8, mask_np, saved, all_names, kept)
    if draw and cfg.figures.grid:
        layer_head_grid(image_u8, mask_np, saved, all_names, f"{item['id']} | {backbone.name} | {method.name}",
                        layout.grid_file(out_dir, item["id"]))
        return 1
    return 0
