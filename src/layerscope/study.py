"""One study run: data -> backbone (one pass per batch) -> maps -> masks -> metrics -> results.

The orchestrator: it calls the plan (``plan``), the map source with its cache (``mapsource``),
the run folder's resume bookkeeping (``results.rundir``) and the row builder (``scoring``).
"""
from __future__ import annotations

import functools
import inspect
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .backbones import Backbone
from .data.base import Dataset
from .data.handover import Item
from .data.loading import image_batches
from .data.prefetch import Prefetched
from .data.transforms import to_input
from .figures.grid import layer_head_grid
from .loggers import Logger
from .methods import threshold_maps, upsample
from .batch_extras import (distance_columns, distance_conventions, faithfulness_columns, merged_columns,
                           representations)
from .mapsource import MapSource, build_cache, to_uint8
from .config.schema import StudyConfig, typed
from .config.checks import check_config
from .plan import Plan, build, build_dataset, chosen_maps, plan_study
from .results import layout
from .results.cache import config_key
from .analysis.pool_stream import PooledStream, add_scored, run_stream
from .results.representations import PartWriter, consolidate
from .results.rundir import RunLock, done_line, previous_progress, write_atomic, write_summary
from .results.table import ResultsWriter
from .results.writer import BackgroundWriter, grid_task, maps_task
from .runtime import one_thread, resolve_device, reuse_freed_memory, score_threads, writer_threads
from .sanity import batch_columns
from .scoring import NONFINITE_NOTE, Target, batch_image_rows

log = logging.getLogger(__name__)


def fit_references(plan: Plan, backbone: Backbone, dataset: Dataset, batch_size: int, device: torch.device,
                   seed: int = 0) -> None:
    """Feed the dataset's normal reference images to a method that learns from them (patch_knn).

    The few-shot protocol: ``method.n_references`` images per category drawn by ``seed``
    (``Dataset.references``); a dataset whose ``references`` takes no seed gives its own ``n``.
    """
    if not plan.method.needs_references:
        return
    n = plan.method.n_references
    if "seed" in inspect.signature(dataset.references).parameters:
        refs = dataset.references(n, seed=seed)
    else:  # a dataset of one's own written before the seeded draw
        log.warning("%s.references takes no seed: its references are the same for every seed",
                    type(dataset).__name__)
        refs = dataset.references(n or len(dataset))
    log.info("%s references (seed %d): %s", plan.method.name, seed,
             ", ".join(s.id for s in refs[:8]) + (f" and {len(refs) - 8} more" if len(refs) > 8 else ""))
    size = backbone.img_size
    chunks = [refs[i:i + batch_size] for i in range(0, len(refs), batch_size)]
    xs = (torch.stack([to_input(s, size)[0] for s in chunk]).to(device) for chunk in chunks)
    t0 = time.perf_counter()
    captured = plan.method.capture_layers(plan.layers)  # with the layers fused candidates need
    plan.method.fit(xs, plan.layers, lambda x: backbone.extract(x, captured, plan.method.capture))
    log.info("%s fitted on %d normal images in %.1fs", plan.method.name, len(refs), time.perf_counter() - t0)


def run(cfg: DictConfig, out_dir: Path, on_accept: Callable[[bool], None] | None = None) -> Path:
    """Run one study and write its outputs into ``out_dir`` (see ``results.layout``).

    Args:
        on_accept: called once the folder is known to be this run's, before anything is written
            there: with True when images will be scored (a new or resumed run), False when the
            folder already holds this finished run (skipped). Never called for a refused run
            (another run holds the folder, or it holds results of another config).

    Returns:
        Path of ``results.csv``.
    """
    check_config(cfg)  # boolean spellings normalised (save_maps=no is false) before the config is compared
    out_dir = Path(out_dir)
    with RunLock(out_dir):  # one run per folder: a second one started beside it stops with one line
        return _run_locked(cfg, out_dir, on_accept)


def _run_locked(cfg: DictConfig, out_dir: Path, on_accept: Callable[[bool], None] | None = None) -> Path:
    done = previous_progress(cfg, out_dir)
    if on_accept is not None:
        on_accept(done is not None)
    if done is None:
        log.info("%s already holds this finished run; skipped (resume=false to refuse instead)", out_dir)
        return out_dir / layout.RESULTS
    write_atomic(out_dir / layout.CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    opts = typed(StudyConfig, cfg)  # from here on, each part gets its own typed options
    torch.manual_seed(opts.seed)
    device = resolve_device(opts.device)

    backbone: Backbone = build(cfg.model)
    plan = plan_study(opts, backbone)
    dataset = build_dataset(cfg)
    if plan.method.needs_references and not dataset.has_references:
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
    logger.start(OmegaConf.to_container(cfg, resolve=True), out_dir, backbone.name, method.name,
                 dataset=str(opts.data.get("name", "")))
    ok, pooled = False, None
    try:
        stream = run_stream(opts, out_dir, done, device)  # the dataset-level pass, accumulated in the loop
        stats = _study_loop(opts, out_dir, plan, backbone, dataset, device, logger, done, stream)
        t_after = time.perf_counter()
        stats["rows"] += sum(done.values())  # the rows of images an earlier, interrupted run finished
        if any(e.startswith("rep_") for e in plan.extras):
            stats["representations"] = consolidate(out_dir)  # done.txt order: a resumed run's equals a clean one's
        pooled, stats["dataset_seconds"] = dataset_pass(opts, out_dir, stream)
        stats["dataset_stream_seconds"] = round(stream.seconds, 3) if stream is not None else 0.0
        stats["after_loop_seconds"] = round(time.perf_counter() - t_after, 3)  # the dataset pass and the rest
        write_summary(out_dir, {"complete": True, "model": backbone.name, "method": method.name,
                                "layers": plan.layers, "seconds": round(time.perf_counter() - t0, 3), **stats})
        ok = True
    finally:
        if ok:
            logger.log_results(out_dir / layout.RESULTS)
            if pooled is not None:
                logger.log_dataset(pooled)
            if any(e.startswith("rep_") for e in plan.extras):
                _log_comparison(logger, out_dir)
        logger.finish(ok)
    return out_dir / layout.RESULTS


def _log_comparison(logger: Logger, out_dir: Path) -> None:
    """The run's own layer x layer CKA and k-NN probe of ``category`` per layer, for loggers that want them."""
    if not logger.wants_comparison():
        return
    from .comparison import self_comparison

    logger.log_comparison(*self_comparison(out_dir))


def dataset_pass(cfg: StudyConfig, out_dir: Path, stream: PooledStream | None = None) -> tuple[Any, float]:
    """The dataset-level protocol (``dataset_metrics.csv``), when asked and possible: from the run's accumulators
    (``stream``, fed in the loop), else over the saved maps.

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
        # CIs: layerscope-report (costly)
        table = write_dataset_metrics(out_dir, n_boot=0, seed=int(cfg.seed), threads=score_threads(), stream=stream)
    except FileNotFoundError as e:  # no masks: nothing to pool
        log.info("dataset_metrics skipped: %s", e)
        return None, 0.0
    seconds = time.perf_counter() - t0
    pooled = table[table["category"] == "all"]
    best = pooled.dropna(subset=["aupro"]).sort_values("aupro", ascending=False).head(1)
    for r in best.itertuples():
        log.info("dataset level (pooled over %d images): best AUPRO %.3f at layer %s, %s; written %s in %.1fs",
                 r.n_images, r.aupro, r.layer, r.head, out_dir / layout.DATASET_METRICS, seconds)
    if best.empty and len(pooled):  # e.g. only defect-free images: say why rather than print nan
        from .protocol import undefined_reasons

        log.info("dataset level (pooled over %d images): AUPRO undefined: %s; written %s in %.1fs",
                 pooled["n_images"].max(), undefined_reasons(pooled, "aupro").get("all", "for every map"),
                 out_dir / layout.DATASET_METRICS, seconds)
    return table, round(seconds, 3)


def _study_loop(cfg: StudyConfig, out_dir: Path, plan: Plan, backbone: Backbone, dataset: Dataset, device: torch.device,
                logger: Logger, done: dict[str, int | None], stream: PooledStream | None = None) -> dict:
    """Every image not yet done: maps, rows (written here), then its files and ``done.txt`` line.

    The files (saved maps, grid pictures) are written by ``results.writer.BackgroundWriter``'s
    thread while the next images are scored; it appends an image's ``done.txt`` line only after
    that image's files are on disk, and is drained before this returns (also on an exception or
    Ctrl-C), so ``done.txt`` never lists an image whose files are missing.
    """
    method = plan.method
    reuse_freed_memory()
    fit_references(plan, backbone, dataset, int(cfg.batch_size), device, cfg.seed)
    all_names = method.map_names()
    names = [all_names[h] for h in plan.heads] + (["mean"] if method.head_mean else [])
    names = {layer: names + method.extra_map_names(layer) for layer in plan.layers}  # per layer: fused candidates
    cache = build_cache(cfg.cache, method, config_key(cfg.model, cfg.method, cfg.seed))
    source = MapSource(backbone, plan, device, cfg.precision, cache, keep_on_device=device.type == "cuda")
    batches, workers = image_batches(cfg, dataset, backbone.img_size, device)  # workers start before any thread
    # their batches are taken ahead by a thread: a copy out of a shared slot (data.handover), off the critical
    # path, and the workers' exit at the end (tens of ms on busy cores) overlaps the last batch's work
    if workers:
        batches = Prefetched(batches)
    from skimage.measure import label  # noqa: F401 - region labels of the masks: a one-time import (~1 s with
    # scipy.ndimage) that belongs to the startup, not to the first batch's scoring
    t_loop = time.perf_counter()
    writer = ResultsWriter(out_dir / layout.RESULTS)
    parts = PartWriter(out_dir) if any(e.startswith("rep_") for e in plan.extras) else None
    unit_scale = 1.0 / backbone.img_size if cfg.metrics.attention_distance_unit == "fraction" else 1.0
    try:
        files = BackgroundWriter(out_dir / layout.DONE, threads=writer_threads())
    except OSError as e:
        writer.close()
        if isinstance(batches, Prefetched):
            batches.close()
        raise OSError(e.errno, e.strerror, str(out_dir / layout.DONE)) from None
    # figures.max_images counts the grids an interrupted run already drew
    drawn_before = len(list((out_dir / layout.FIGURES).glob(f"*{layout.GRID_SUFFIX}"))) if done else 0
    n_figures, no_mask, skipped, clock = drawn_before, 0, [], {"score": 0.0, "data": 0.0}
    scored_now = 0  # images scored by this run (an interrupted run's are in ``done``)
    nonfinite = 0  # (image, layer, map) whose map held NaN/inf values: its rows are empty
    gained = []  # per image whose mask the any-pixel rule changed: (defect cells gained, nearest would lose all)
    first_batch: dict | None = None  # the stages at the end of the first batch: its one-time waits apart
    try:
        with tqdm(total=len(dataset), desc=backbone.name, unit="img", disable=not cfg.progress) as bar:
            bar.update(len(done))
            for items in _timed(batches, clock):
                for bad in [item for item in items if item.error is not None]:
                    if cfg.on_bad_image == "fail":
                        raise ValueError(f"{bad.error} (on_bad_image=fail)")
                    log.warning("skipped: %s", bad.error)
                    skipped.append(bad.error)
                    bar.update(1)
                items = [item for item in items if item.error is None and item.id not in done]
                no_mask += sum(item.mask is None for item in items)
                gained += [item.mask_rule for item in items if item.mask_rule[0]]
                if not items:
                    continue
                # the uint8 images the cache's keys hash, converted once: the saved maps store the same
                images_u8 = [to_uint8(item.x) for item in items] if cache is not None else [None] * len(items)
                per_image, logits, captured = source.fetch(items, images_u8)
                faith = faithfulness_columns(cfg, plan, backbone, items, per_image, logits)
                faith = batch_columns(cfg, plan, backbone, items, per_image, logits, faith,
                                      functools.partial(chosen_maps, plan))  # metrics.road, metrics.randomisation
                # per image: attention distance beside the maps (saved with them) and, with faithfulness, in its rows
                columns = [distance_columns(plan, c, unit_scale) for c in captured]
                extras = [merged_columns(f, c) for f, c in zip(faith, columns)]
                scored, chosen, targets = _score_batch(cfg, plan, backbone, names, items, per_image, logits, extras,
                                                       clock)
                add_scored(stream, items, chosen, targets, names, backbone.name, method.name,  # dataset-level counts
                           [image_rows for _, _, image_rows in scored])
                # the batch's representations go to disk with its first image, before any of its done.txt lines
                before = ([parts.task([item.id for item in items],
                                      representations(captured, items, int(cfg.representation_grid)),
                                      [item.x for item in items])]
                          if parts else [])
                for i, (item, (meta, chosen, rows)) in enumerate(zip(items, scored)):
                    n_figures += _record(cfg, out_dir, plan, backbone, names, item, meta, chosen, rows, writer,
                                         files, logger, clock, draw=n_figures < int(cfg.figures.max_images),
                                         columns=columns[i], before=before if i == 0 else (), image_u8=images_u8[i])
                    scored_now += 1
                    nonfinite += sum(row["notes"] == NONFINITE_NOTE for row in rows
                                     if row["head"] != "best" and row["threshold"] == plan.scoring.thresholds[0])
                    bar.update(1)
                if first_batch is None:  # it also waited for the first images (worker start, lazy imports)
                    first_batch = {"images": len(items), "loop_seconds": round(time.perf_counter() - t_loop, 3),
                                   "backbone_seconds": round(source.seconds, 3),
                                   "score_seconds": round(clock["score"], 3),
                                   "write_wait_seconds": round(files.wait_seconds, 3),
                                   "data_wait_seconds": round(clock["data"], 3)}
        files.close()  # waits for the last files; raises a failed write, naming the file
    finally:
        files.close(raise_errors=False)  # leaving on another exception: still drain, without masking it
        writer.close()
        if isinstance(batches, Prefetched):
            batches.close()
    stats = {"images": len(done) + scored_now, "skipped": len(skipped), "nonfinite_maps": nonfinite, "rows": writer.rows, "backbone_calls": source.calls, "num_workers": workers,
             "backbone_seconds": round(source.seconds, 3), "score_seconds": round(clock["score"], 3),
             "write_seconds": round(files.busy_seconds, 3), "write_wait_seconds": round(files.wait_seconds, 3),
             "data_wait_seconds": round(clock["data"], 3),
             "loop_seconds": round(time.perf_counter() - t_loop, 3),
             "skipped_images": skipped, "images_without_mask": no_mask, "first_batch": first_batch,
             "masks_changed_by_resize_rule": len(gained), "masks_kept_from_vanishing": sum(v for _, v in gained)}
    if skipped and not stats["images"]:
        shown = "; ".join(" ".join(why.split()) for why in skipped[:3])  # one line, whatever a reader said
        more = f"; and {len(skipped) - 3} more, each named in the log" if len(skipped) > 3 else ""
        raise ValueError(f"no image could be read ({len(skipped)} skipped): {shown}{more}")
    if skipped:
        log.warning("%d unreadable images skipped (listed in run_summary.json)", len(skipped))
    if nonfinite:
        log.warning("%d maps (image, layer, map) have NaN/inf values (the model's output: a NaN weight?): their "
                    "metric columns are empty, noted %r", nonfinite, NONFINITE_NOTE)
    if gained:
        log.info("masks resized to %d px so that no defect vanishes (a cell is a defect where any of its pixels is): "
                 "%d images have more defect pixels than nearest resizing gives (+%d in all); %d would have had none",
                 backbone.img_size, len(gained), sum(n for n, _ in gained), sum(v for _, v in gained))
    if no_mask:
        log.info("%d images have no mask: their mask metrics are empty (see the notes column)", no_mask)
    if cache is not None:
        stats.update(cache_hits=cache.hits, cache_misses=cache.misses, cache_evicted=cache.evict())
        log.info("map cache: %d hits, %d misses (%s)", cache.hits, cache.misses, cache.dir)
    log.info("backbone + maps %.2fs in %d calls for %d images, scoring %.2fs, writing %.2fs in the background "
             "(%.2fs waited for); %d rows -> %s", source.seconds, source.calls, len(dataset), clock["score"],
             files.busy_seconds, files.wait_seconds, writer.rows, out_dir / layout.RESULTS)
    return stats


def _timed(batches: Any, clock: dict[str, float]) -> Any:
    """The batches, with the time spent waiting for each (preparing it, or taking it from the workers) added
    to ``clock["data"]``."""
    while True:
        t0 = time.perf_counter()
        try:
            items = next(batches)
        except StopIteration:
            return
        finally:
            clock["data"] += time.perf_counter() - t0
        yield items


def _score_batch(cfg: StudyConfig, plan: Plan, backbone: Backbone, names: dict[int, list[str]], items: list[Item],
                 per_image: list[dict[int, torch.Tensor]], logits: list[torch.Tensor | None], faith: list[dict | None],
                 clock: dict[str, float]) -> tuple[list[tuple[dict, dict[int, torch.Tensor], list[dict]]],
                                                   dict[int, torch.Tensor], list[Target | None]]:
    """The rows of every image of a batch, scored together where the maps are (``scoring``).

    Returns:
        Per image: (its non-metric columns, layer -> (K, h, w) chosen maps on the CPU, its rows); the batch's
        chosen maps, layer -> (B, K, h, w) on the CPU; and its ground truths (their cells counted per grid).
    """
    t0 = time.perf_counter()
    size = backbone.img_size
    with one_thread():  # small tensors: OpenMP splitting costs more than it saves (see runtime.one_thread)
        targets = [Target(item.mask, item.valid) if item.mask is not None else None for item in items]
        metas = []
        for item, target, image_logits in zip(items, targets, logits):
            meta = {"image": item.id, "group": item.group, "category": item.category,
                    "dataset": cfg.data.get("name", ""), "source": item.source, "model": backbone.name,
                    "kind": backbone.kind, "num_layers": backbone.num_layers, "img_size": size,
                    "method": plan.method.name, "mask_fraction": target.fraction if target is not None else None,
                    **distance_conventions(cfg, plan)}
            if image_logits is not None and backbone.labels:
                p, c = image_logits.softmax(-1).max(-1)
                meta.update(pred_label=backbone.labels[int(c)], pred_prob=float(p))
            metas.append(meta)
        chosen = chosen_maps(plan, {layer: torch.stack([m[layer] for m in per_image]) for layer in per_image[0]})
        rows = batch_image_rows(metas, chosen, {layer: names[layer] for layer in chosen}, targets, plan.scoring, faith,
                                threads=score_threads())
        chosen = {layer: m.cpu() for layer, m in chosen.items()}  # to save: from the device once per batch
    clock["score"] += time.perf_counter() - t0
    return ([(meta, {layer: m[b] for layer, m in chosen.items()}, image_rows)
             for b, (meta, image_rows) in enumerate(zip(metas, rows))], chosen, targets)


def _record(cfg: StudyConfig, out_dir: Path, plan: Plan, backbone: Backbone, names: dict[int, list[str]], item: Item,
            meta: dict, chosen: dict[int, torch.Tensor], rows: list[dict], writer: ResultsWriter,
            files: BackgroundWriter, logger: Logger, clock: dict[str, float], draw: bool,
            columns: dict | None = None, before: Sequence = (), image_u8: np.ndarray | None = None) -> int:
    """Write one image's rows now, then hand its maps and grid picture to ``files``.

    Args:
        columns: per-map columns from the same pass, kept in the saved maps (``attention_distance``).
        before: writer tasks to run before this image's own files (its batch's representations).
        image_u8: the image as uint8 (``mapsource.to_uint8``), where the loop converted it already; None: the
            writer converts it.

    Returns:
        1 when a grid picture was queued, else 0.
    """
    t0 = time.perf_counter()
    method, size = plan.method, backbone.img_size
    mask, valid = item.mask, item.valid
    rows_before = writer.rows
    writer.write(rows)
    all_names = {layer: names[layer] for layer in chosen}
    clock["score"] += time.perf_counter() - t0
    saved = {layer: m.numpy() for layer, m in chosen.items()}  # not modified after this: safe to share
    x, converted = item.x, {} if image_u8 is None else {"image": image_u8}

    def image_u8_once():  # converted once, by the first task that needs it: in the writer's thread, not here
        if "image" not in converted:
            converted["image"] = to_uint8(x)
        return converted["image"]

    mask_np = mask.numpy() if mask is not None else None
    tasks = list(before)
    if cfg.save_maps:
        path, valid_np = layout.map_file(out_dir, item.id), valid.numpy() if valid is not None else None
        info = dict(meta, threshold_rule=plan.scoring.rule)
        saved_columns = {layer: {c: v.numpy() for c, v in cols.items()} for layer, cols in (columns or {}).items()}
        tasks.append(maps_task(path, image_u8_once, mask_np, saved, all_names, info, valid=valid_np, columns=saved_columns))
    if logger.wants_maps():
        first = plan.scoring.thresholds[0]
        kept = {layer: upsample(threshold_maps(m, first, plan.scoring.rule), (size, size)).numpy()
                for layer, m in chosen.items()}
        logger.log_maps(item.id, item.category, image_u8_once(), mask_np, saved, all_names, kept)
    drawn = int(bool(draw and cfg.figures.grid))
    if drawn:
        path_png, title = layout.grid_file(out_dir, item.id), f"{item.id} | {backbone.name} | {method.name}"
        tasks.append(grid_task(path_png, image_u8_once, mask_np, saved, all_names, title, layer_head_grid))
    # the done.txt line, with the image's row count, is appended by the writer after these files
    files.submit(item.id, tasks, line=done_line(item.id, writer.rows - rows_before))
    return drawn
