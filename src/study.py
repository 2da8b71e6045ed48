"""One study run: data -> backbone (one pass per batch) -> maps -> masks -> metrics -> results."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .backbones import Backbone, select_indices
from .data.base import Sample
from .data.images import BadImage
from .data.transforms import to_input
from .figures.grid import layer_head_grid
from .loggers import Logger
from .maps import threshold_maps, upsample
from .maps.methods import MapMethod
from .results.cache import MapCache, config_key, image_key
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
    if int(cfg.num_workers) < 0:
        raise ValueError(f"num_workers={cfg.num_workers}: expected an int >= 0")
    if cfg.on_bad_image not in ("skip", "fail"):
        raise ValueError(f"on_bad_image={cfg.on_bad_image}: expected skip or fail")
    if cfg.precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision={cfg.precision}: expected fp32, bf16 or fp16")
    if cfg.precision != "fp32" and resolve_device(cfg.device).type != "cuda":
        raise ValueError(f"precision={cfg.precision} needs a GPU (device=cuda or auto with CUDA); use precision=fp32")
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
    done = previous_progress(cfg, out_dir)
    if done is None:
        log.info("%s already holds this finished run; skipped (resume=false to refuse instead)", out_dir)
        return out_dir / "results.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
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
    ok = False
    try:
        stats = _study_loop(cfg, out_dir, plan, backbone, dataset, device, logger, done)
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


def safe_name(name: str) -> str:
    """An image id usable as a file name inside the run folder: no separators, no '..', no hidden files."""
    import re

    parts = [p for p in re.split(r"[\\/]+", str(name)) if p not in ("", ".", "..")]
    cleaned = re.sub(r"[^A-Za-z0-9._=+-]+", "_", "_".join(parts)).replace("..", "_").lstrip(".")
    return cleaned or "_"


def _as_list(items: list) -> list:
    return items


def autocast(device: torch.device, precision: str):
    """fp32 (no autocast), or bf16/fp16 autocast on CUDA; maps are computed in fp32 either way."""
    from contextlib import nullcontext

    if precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class MapSource:
    """Maps for a batch: from the map cache where every image is there, else from one backbone pass."""

    def __init__(self, backbone: Backbone, plan: Plan, device: torch.device, precision: str,
                 cache: MapCache | None):
        self.backbone, self.plan, self.device, self.precision, self.cache = backbone, plan, device, precision, cache
        self.calls, self.seconds = 0, 0.0

    def __call__(self, items: list[dict]) -> tuple[list[dict[int, torch.Tensor]], list[torch.Tensor | None]]:
        """Per image: layer -> (K, h, w) float32 maps, and its logits (C,) or None."""
        layers = self.plan.layers
        keys = [image_key(to_uint8(item["x"])) for item in items] if self.cache else [None] * len(items)
        found = [self.cache.get(k, layers) if self.cache else None for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            x = torch.stack([items[i]["x"] for i in missing]).to(self.device, non_blocking=True)
            t0 = time.perf_counter()
            with autocast(self.device, self.precision):
                method = self.plan.method
                captured, logits = self.backbone.extract(x, method.capture_layers(layers), method.capture)
                maps = method.maps(captured)
            maps = {layer: maps[layer].float().cpu() for layer in layers}
            logits = logits.float().cpu() if logits is not None else None
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            for j, i in enumerate(missing):
                found[i] = ({layer: m[j] for layer, m in maps.items()}, logits[j] if logits is not None else None)
                if self.cache:
                    self.cache.put(keys[i], found[i][0], found[i][1])
        return [f[0] for f in found], [f[1] for f in found]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, S, S) float in [0, 1] -> (S, S, 3) uint8 (exact for inputs made from uint8 images)."""
    return (x.permute(1, 2, 0).numpy() * 255).round().astype("uint8")


def build_cache(cfg: DictConfig, method: MapMethod) -> MapCache | None:
    """The map cache for this run, or None (disabled, or a method that learns from other images)."""
    if not cfg.cache.enabled or method.needs_references:
        return None
    from .backbones.bundled import cache_dir

    root = Path(cfg.cache.dir).expanduser() if cfg.cache.dir else cache_dir() / "maps"
    key = config_key(OmegaConf.to_container(cfg.model, resolve=True),
                     OmegaConf.to_container(cfg.method, resolve=True), int(cfg.seed))
    return MapCache(root, key, float(cfg.cache.max_gb))


DONE = "done.txt"


def _comparable(cfg: DictConfig) -> dict:
    c = OmegaConf.to_container(cfg, resolve=True)
    for key in ("progress", "resume", "num_workers"):
        c.pop(key, None)
    return c


def previous_progress(cfg: DictConfig, out_dir: Path) -> set[str] | None:
    """What an earlier run left in ``out_dir``: the finished image ids to skip, or None if it is all done.

    A finished or interrupted run of the same config is resumed (``resume=true``): images
    already scored are kept and skipped, and rows of an image cut off half-way are dropped.

    Raises:
        ValueError: the folder holds results of another config, or ``resume=false`` and it
            holds results; nothing is overwritten.
    """
    results = out_dir / "results.csv"
    if not results.exists() or results.stat().st_size == 0:
        return set()
    saved = out_dir / "config.yaml"
    same = saved.exists() and _comparable(OmegaConf.load(saved)) == _comparable(cfg)
    if not same:
        raise ValueError(f"{out_dir} holds results of another configuration; choose another output folder "
                         "(hydra.run.dir=... or hydra.sweep.dir=...); nothing was changed")
    if not cfg.resume:
        raise ValueError(f"{out_dir} already holds results and resume=false; choose another output folder")
    if is_complete(out_dir):
        return None
    done_file = out_dir / DONE
    done = set(done_file.read_text().split()) if done_file.exists() else set()
    import pandas as pd

    rows = pd.read_csv(results, dtype=str, keep_default_na=False)
    kept = rows[rows["image"].isin(done)]
    if len(kept) != len(rows):  # drop rows of an image whose writing was cut off
        tmp = results.with_suffix(".tmp")
        kept.to_csv(tmp, index=False)
        tmp.replace(results)
    log.info("resuming %s: %d images already done", out_dir, len(done))
    return done


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
    writer = ResultsWriter(out_dir / "results.csv")
    n_figures, no_mask, skipped = 0, 0, []
    try:
        with tqdm(total=len(dataset), desc=backbone.name, unit="img", disable=not cfg.progress) as bar, \
                open(out_dir / DONE, "a") as done_file:
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
                        raise OSError(e.errno, e.strerror, str(out_dir / DONE)) from None
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
             len(dataset), writer.rows, out_dir / "results.csv")
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
            "threshold_rule": plan.scoring.rule, "mask_fraction": target.fraction if target is not None else None}
    if logits is not None and backbone.labels:
        p, c = logits.softmax(-1).max(-1)
        meta.update(pred_label=backbone.labels[int(c)], pred_prob=float(p))
    rows, saved = [], {}
    for layer, layer_maps in maps.items():
        chosen = layer_maps[plan.heads]
        if method.head_mean:
            chosen = torch.cat([chosen, layer_maps.mean(0, keepdim=True)])
        saved[layer] = chosen.numpy()
        for row in score_layer(chosen, names, target, plan.scoring):
            rows.append({**meta, "layer": layer, "grid_h": chosen.shape[-2], "grid_w": chosen.shape[-1], **row})
    writer.write(rows)
    image_u8 = to_uint8(item["x"])
    mask_np = mask.numpy() if mask is not None else None
    all_names = {layer: names for layer in saved}
    if cfg.save_maps:
        save_maps(out_dir / "maps" / f"{item['id']}.npz", image_u8, mask_np, saved, all_names, meta,
                  valid=valid.numpy() if valid is not None else None)
    if logger.wants_maps():
        first = plan.scoring.thresholds[0]
        kept = {layer: upsample(threshold_maps(torch.from_numpy(m), first, plan.scoring.rule), (size, size)).numpy()
                for layer, m in saved.items()}
        logger.log_maps(item["id"], item["category"], image_u8, mask_np, saved, all_names, kept)
    if draw and cfg.figures.grid:
        layer_head_grid(image_u8, mask_np, saved, all_names, f"{item['id']} | {backbone.name} | {method.name}",
                        out_dir / "figures" / f"{item['id']}_grid.png")
        return 1
    return 0
