"""Benchmarks: what capturing every layer costs against a plain forward, and where a study's time goes.

    layerscope-bench [--quick | --full] [--device cpu|cuda] [--rounds 3] [--cases vit_s8:480] [--out bench.csv]
    layerscope-bench --pipeline [--quick] [--device cpu|cuda] [--models dinov2_vits14_bundled ...] [--rounds 3]
    layerscope-bench --pipeline --marginal [--models ...] [--rounds 2]
    layerscope-bench --pipeline [--marginal] --against OTHER/src   (before/after, interleaved)

Every command first prints an estimate of its duration, from the model sizes and a 0.3 s probe of
this machine's matrix-multiply rate (so a busy machine gets a longer estimate), and its real duration
at the end.

**Capture** (default: ViT-S/8 at 224 px, batch 1, 3 rounds, a few minutes on 2 cores; ``--full``:
ViT-S/8 at 224 and 480 px and ViT-B/16 at 224 px, batches 1 and 8, 5 rounds). Variants, each in a
process of its own that stays alive across rounds (so peak memory is its own), random-init weights:

- ``plain``: timm ViT forward, fused attention (the baseline every ratio refers to);
- ``ours``: the same forward with this framework's hooks, CLS rows of every layer and head;
- ``hf_eager``: transformers ViT with ``output_attentions=True`` (eager attention, all N x N maps);
- ``hf_sdpa``: transformers ViT plain forward (SDPA), to separate library from method costs;
- ``timm_extract``: timm's ``AttentionExtract`` with fused attention off (all N x N maps).

Each process builds its model and runs one warm-up forward; then, round after round, every
variant runs one timed forward in turn (plain, ours, hf_eager, ... plain, ours, ...). A ratio is
taken within a round, so a machine that slows down for a while (another job, thermal limits)
slows every variant of that round alike; the table gives the median ratio over rounds with its
min-max spread. Peak memory is the growth of the process's peak RSS over all its forwards (CPU,
with glibc's mmap threshold fixed so freed blocks leave RSS), or ``torch.cuda.max_memory_allocated``
above the resting allocation (GPU).

**Pipeline** (``--pipeline``). The default study (``layerscope model=M cache.enabled=false``) run
as a user runs it, once per round in a fresh process, split by stage from its ``run_summary.json``:
backbone forward + maps, scoring (rows), writing (``.npz`` + grid PNGs, in the background: the
time its thread worked, and the time the study waited for it), the rest of the loop (data,
``results.csv``), and the dataset-level pass. Stages are per image in the steady state, after the
first batch: its wait for the first images (DataLoader workers starting, first reads) is a one-time
cost, reported apart and counted once in the projection, like the startup. In the same round, this process times the
backbone alone (forward + maps of the same images, ``mapsource.MapSource``, no scoring, no
writing); the table gives each stage per image and against the backbone of the same round, the
end-to-end rate against the backbone-only rate, and projects the wall time of an MVTec-size
study (1,700 test images, same layers and maps) per backbone on this machine (and on CUDA when
it is present). Per image, in milliseconds: every stage, the time outside the backbone, and the
images per second end to end against the backbone alone.

**Marginal** (``--pipeline --marginal``). The per-image cost outside the backbone measured a second
way: the study's loop time at two dataset sizes (16 and 48 images), each with a cold map cache (the
backbone runs) and then a warm one (no backbone: maps read from the cache); the slope between the two
sizes is the marginal cost of one more image, cold and warm, free of startup and of any per-run cost.

**Before/after** (``--pipeline [--marginal] --against DIR``). The same studies run by other code (``DIR``: the
``src`` folder of another checkout, e.g. ``git worktree add /tmp/before HEAD~3`` then ``/tmp/before/src``),
interleaved with this code's in every round (their order alternating from round to round), so both see the
same machine; its rows are labelled ``MODEL@before`` and this code's ``MODEL@after``, and one line per model
compares the medians.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from .results.layout import CONFIG, SUMMARY

VARIANTS = ("plain", "ours", "hf_eager", "hf_sdpa", "timm_extract")
CONFIGS = {  # name -> (timm arch, patch, dim, heads); 12 blocks each
    "vit_t16": ("vit_tiny_patch16_224", 16, 192, 3),
    "vit_s8": ("vit_small_patch8_224", 8, 384, 6),
    "vit_b16": ("vit_base_patch16_224", 16, 768, 12),
}
FULL = [("vit_s8", 224), ("vit_s8", 480), ("vit_b16", 224)]
DEFAULT = [("vit_s8", 224)]  # a few minutes on 2 cores; --full for the whole set
QUICK = [("vit_t16", 224)]  # a smoke run: seconds, not minutes
PIPELINE_MODELS = ["dinov2_vits14_bundled", "efficientnet_lite0_bundled"]
PIPELINE_QUICK = ["tiny_vit"]
QUICK_DATA = ["data.textures=[brick]"]  # 4 images: a smoke run
MVTEC_IMAGES = 1700  # MVTec AD's test set, all categories
TARGET_OUTSIDE = 0.25  # the goal: time outside the backbone at most this share of the backbone's
MARGINAL_SIZES = (1, 3)  # data.per_combination: 16 and 48 synthetic images


# ------------------------------------------------------------------------------------------ capture


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def attention_bytes(model: str, size: int, batch: int) -> int:
    """Bytes of every layer's full attention matrices in float32 (what eager extraction holds)."""
    _, patch, _, heads = CONFIGS[model]
    n = (size // patch) ** 2 + 1
    return 12 * heads * n * n * 4 * batch


def _build(model: str, size: int, variant: str, device: torch.device):
    arch, patch, dim, heads = CONFIGS[model]
    if variant.startswith("hf_"):
        from transformers import ViTConfig, ViTModel

        cfg = ViTConfig(hidden_size=dim, num_hidden_layers=12, num_attention_heads=heads, intermediate_size=4 * dim,
                        patch_size=patch, image_size=size)
        cfg._attn_implementation = "eager" if variant == "hf_eager" else "sdpa"
        net = ViTModel(cfg, add_pooling_layer=False).eval().to(device)
        if variant == "hf_eager":
            return lambda x: net(pixel_values=x, output_attentions=True).attentions
        return lambda x: net(pixel_values=x).last_hidden_state
    from .backbones import TimmViT

    bb = TimmViT(model, arch, img_size=size, mean=(0.5,) * 3, std=(0.5,) * 3, pretrained=False).eval().to(device)
    if variant == "plain":
        return lambda x: bb.model(x)
    if variant == "ours":
        layers = list(range(bb.num_layers))
        return lambda x: bb.extract(x, layers, "cls_attention")[0]
    from timm.utils import AttentionExtract

    for blk in bb.model.blocks:
        blk.attn.fused_attn = False
    extractor = AttentionExtract(bb.model, method="hook")
    return lambda x: extractor(x)


def serve(model: str, size: int, batch: int, variant: str, device: str) -> None:
    """The process of one variant: build, warm up, then one timed forward per ``run`` line on stdin.

    Answers one JSON line per request on stdout: ``{"ready": true}`` after the warm-up,
    ``{"seconds": t}`` per ``run`` (the whole batch), ``{"peak_mb": m}`` for ``peak``.
    """
    dev = torch.device(device)
    torch.manual_seed(0)
    fn = _build(model, size, variant, dev)
    x = torch.rand(batch, 3, size, size, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_mb()
    with torch.inference_mode():
        out = fn(x)  # warm-up
        del out
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            if line.strip() == "run":
                sync()
                t0 = time.perf_counter()
                out = fn(x)
                sync()
                seconds = time.perf_counter() - t0
                del out
                print(json.dumps({"seconds": seconds}), flush=True)
            elif line.strip() == "peak":
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if dev.type == "cuda" else _rss_mb() - base
                print(json.dumps({"peak_mb": peak}), flush=True)
            else:
                return


class Worker:
    """A variant's process (``serve``), asked for one timed forward at a time."""

    def __init__(self, model: str, size: int, batch: int, variant: str, device: str):
        cmd = [sys.executable, "-m", "layerscope.bench", "--serve", model, str(size), str(batch), variant,
               "--device", device]
        # a fixed mmap threshold makes glibc hand large blocks back on free, so peak RSS follows the
        # live tensors instead of the allocator's history (which differs between variants)
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        self._err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
                                     env=env)

    def ask(self, request: str | None) -> dict:
        """Send ``request`` (None: only read) and return the next JSON answer.

        Raises:
            RuntimeError: the process ended; the message is its last stderr line.
        """
        if request is not None:
            self.proc.stdin.write(request + "\n")
            self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("{"):  # a library may print other lines
                return json.loads(line)
        self._err.seek(0)
        last = [t for t in self._err.read().strip().splitlines() if t.strip()]
        raise RuntimeError(last[-1] if last else f"exit code {self.proc.wait()}")

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write("exit\n")
                self.proc.stdin.flush()
        except OSError:  # already gone
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max); NaNs when empty."""
    vals = [v for v in values if v == v]
    if not vals:
        return float("nan"), float("nan"), float("nan")
    return statistics.median(vals), min(vals), max(vals)


def run_case(model: str, size: int, batch: int, device: str, rounds: int, memory_limit_gb: float) -> list[dict]:
    """Every variant of one (model, size, batch), interleaved over ``rounds``; one row per variant."""
    rows = {v: {"model": model, "size": size, "batch": batch, "variant": v, "device": device, "rounds": rounds}
            for v in VARIANTS}
    workers: dict[str, Worker] = {}
    need = attention_bytes(model, size, batch) / 2**30
    for v in VARIANTS:
        if v in ("hf_eager", "timm_extract") and need > memory_limit_gb:
            rows[v]["status"] = f"skipped: its attention maps alone need {need:.1f} GiB"
        else:
            workers[v] = Worker(model, size, batch, v, device)  # all start at once: startups overlap
    times: dict[str, list[float]] = {v: [] for v in workers}
    try:
        for v in list(workers):
            try:
                workers[v].ask(None)  # ready
            except RuntimeError as e:
                rows[v]["status"] = f"failed: {e}"
                workers.pop(v).close()
        for r in range(rounds):
            print(f"  {model} {size}px b{batch}: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
            for v, w in list(workers.items()):
                try:
                    times[v].append(w.ask("run")["seconds"] / batch)
                except RuntimeError as e:
                    rows[v]["status"] = f"failed: {e}"
                    workers.pop(v).close()
        for v, w in workers.items():
            rows[v]["peak_mb"] = w.ask("peak")["peak_mb"]
    finally:
        for w in workers.values():
            w.close()
    base = times.get("plain", [])
    for v, ts in times.items():
        row = rows[v]
        row["seconds_per_image"], row["seconds_min"], row["seconds_max"] = spread(ts)
        if len(base) == len(ts) and base:
            ratios = [t / b for t, b in zip(ts, base)]  # within a round: the same machine state
            row["time_ratio"], row["ratio_min"], row["ratio_max"] = spread(ratios)
            if "peak_mb" in rows["plain"] and rows["plain"]["peak_mb"] > 0 and "peak_mb" in row:
                row["memory_ratio"] = row["peak_mb"] / rows["plain"]["peak_mb"]
        row.setdefault("status", "ok")
    return [rows[v] for v in VARIANTS]


CAPTURE_COLUMNS = ["model", "size", "batch", "variant", "rounds", "s/img", "ratio", "ratio_min", "ratio_max",
                   "peak_MB", "mem_ratio", "status"]


def _capture_line(row: dict) -> str:
    def num(key: str, fmt: str) -> str:
        v = row.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) and v == v else "-"

    return (f"{row['model']:8s} {row['size']:4d} {row['batch']:5d} {row['variant']:13s} {row['rounds']:6d} "
            f"{num('seconds_per_image', '8.4f')} {num('time_ratio', '6.2f')} {num('ratio_min', '9.2f')} "
            f"{num('ratio_max', '9.2f')} {num('peak_mb', '8.1f')} {num('memory_ratio', '9.2f')}  {row['status']}")


def capture_table(cases, batches, device: str, rounds: int, memory_limit_gb: float) -> list[dict]:
    """Run every case and batch; print the table as it fills."""
    print(" ".join(CAPTURE_COLUMNS), flush=True)
    rows = []
    for model, size in cases:
        for batch in batches:
            for row in run_case(model, size, batch, device, rounds, memory_limit_gb):
                rows.append(row)
                print(_capture_line(row), flush=True)
    return rows


# ------------------------------------------------------------------------------------------ pipeline


STAGES = ("backbone", "scoring", "writing", "write_wait", "data_wait", "other", "loop", "dataset_pass")
STAGE_TEXT = {
    "backbone": "forward + maps in the study",
    "scoring": "rows and results.csv",
    "writing": "npz + png by the background thread",
    "write_wait": "time the study waited for that thread",
    "data_wait": "time the study waited for the next prepared batch (from the DataLoader workers)",
    "other": "the rest of the loop (data_wait included)",
    "loop": "the study's image loop end to end (after its first batch, whose one-time wait is apart)",
    "dataset_pass": "the dataset-level protocol at the end",
    "backbone_only": "forward + maps alone, timed here in the same round",
}


def _study(model: str, device: str, out: Path, extra: Sequence[str], cache: Path | None = None,
           src: Path | None = None) -> tuple[dict, float]:
    """One default study in a fresh process, as a user runs it; its run_summary.json and wall seconds.

    Args:
        cache: a map cache folder to use (cold when empty, warm after a run), or None: no cache.
        src: the folder holding the ``layerscope`` package to run (other code), or None: this package's.
    """
    caching = [f"cache.dir={cache}"] if cache is not None else ["cache.enabled=false"]
    cmd = [sys.executable, "-m", "layerscope.run", f"model={model}", f"device={device}", *caching,
           "progress=false", f"hydra.run.dir={out}", *extra]
    first = str(src if src is not None else Path(__file__).resolve().parents[1])  # this package, or the other code
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([first, *filter(None, [os.environ.get("PYTHONPATH")])]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = [t for t in proc.stderr.strip().splitlines() if t.strip()]
        raise RuntimeError(f"{' '.join(cmd[2:])}: {lines[-1] if lines else proc.returncode}")
    return json.loads((out / SUMMARY).read_text()), wall


class BackboneOnly:
    """The study's backbone pass alone (forward + maps for every image, as ``MapSource``), in this process.

    Built from the ``config.yaml`` a study run wrote, so it is the same model, layers, method and images.
    """

    def __init__(self, config: Path):
        from omegaconf import OmegaConf

        from .mapsource import MapSource
        from .plan import build, build_dataset, plan_study, resolve_device
        from .study import Prepared

        cfg = OmegaConf.load(config)
        self.device = resolve_device(cfg.device)
        backbone = build(cfg.model)
        plan = plan_study(cfg, backbone)
        dataset = build_dataset(cfg)
        backbone.load_weights()
        backbone.to(self.device).eval()
        prepared = Prepared(dataset, backbone.img_size)
        items = [prepared[i] for i in range(len(prepared))]  # data preparation is not the backbone's
        self.items = [item for item in items if "error" not in item]
        self.batch = int(cfg.batch_size)
        self.source = MapSource(backbone, plan, self.device, cfg.precision, None)
        self.layers, self.maps = len(plan.layers), len(plan.heads) + int(plan.method.head_mean)
        self.img_size = backbone.img_size
        self()  # warm-up

    def __call__(self) -> float:
        """Seconds for one pass over every image."""
        t0 = time.perf_counter()
        for i in range(0, len(self.items), self.batch):
            self.source(self.items[i:i + self.batch])  # maps come back on the CPU: synchronised
        return time.perf_counter() - t0


def _codes(against: Path | None) -> list[tuple[str, Path | None]]:
    """(label, source folder) of each code a round runs: this package alone, or the other code and this."""
    return [("", None)] if against is None else [("before", against), ("after", None)]


def _in_turn(codes: list, r: int) -> list:
    """The codes in round ``r``'s order: alternating, so neither always runs on a machine the other warmed."""
    return codes if r % 2 == 0 else codes[::-1]


def pipeline(model: str, device: str, rounds: int, extra: Sequence[str], against: Path | None = None) -> list[dict]:
    """Rounds of (default study in a fresh process, backbone alone here) for one backbone and device.

    Returns:
        One result per code (this package's alone, or ``against``'s then this one's, run in the same rounds).
    """
    codes = _codes(against)
    per_round: dict[str, list[dict]] = {label: [] for label, _ in codes}
    only: BackboneOnly | None = None
    with tempfile.TemporaryDirectory(prefix="layerscope-bench-") as tmp:
        for r in range(rounds):
            done = {}
            for label, src in _in_turn(codes, r):
                print(f"  {_name(model, label)} on {device}: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
                done[label] = _study(model, device, Path(tmp) / f"round{r}{label}", extra,
                                     **({"src": src} if src is not None else {}))
            if only is None:
                only = BackboneOnly(Path(tmp) / f"round0{codes[-1][0]}" / CONFIG)
            alone = only()
            for label, (summary, wall) in done.items():
                n = summary["images"] - len(summary.get("skipped_images", []))
                per_round[label].append(_round_stages(summary, wall, alone))
    return [{"model": _name(model, label), "device": device, "images": n, "rounds": per_round[label],
             "layers": only.layers, "maps": only.maps, "img_size": only.img_size} for label, _ in codes]


def _name(model: str, label: str) -> str:
    return f"{model}@{label}" if label else model


def _round_stages(summary: dict, wall: float, alone: float) -> dict:
    """One study's stages in seconds per image (steady state, after the first batch), from its run_summary."""
    n = summary["images"] - len(summary.get("skipped_images", []))
    total = {k: summary.get(k, 0.0) for k in ("loop_seconds", "backbone_seconds", "score_seconds", "write_wait_seconds",
                                              "data_wait_seconds")}  # older code: no data_wait_seconds (NaN below)
    first = summary.get("first_batch")
    steady, first_extra = total, 0.0
    if first and n > first["images"]:
        # per image in the steady state: after the first batch, whose wait for the first images (worker
        # start, first reads) is a one-time cost like the startup, not a per-image one
        steady = {k: v - first.get(k, 0.0) for k, v in total.items()}
        m = n - first["images"]
        first_extra = first["loop_seconds"] - first["images"] * steady["loop_seconds"] / m
    else:
        m = n
    loop, backbone = steady["loop_seconds"], steady["backbone_seconds"]
    score, wait = steady["score_seconds"], steady["write_wait_seconds"]
    return {"backbone": backbone / m, "scoring": score / m, "writing": summary["write_seconds"] / n,
            "write_wait": wait / m,
            "data_wait": steady["data_wait_seconds"] / m if "data_wait_seconds" in summary else math.nan,
            "other": (loop - backbone - score - wait) / m, "loop": loop / m,
            "dataset_pass": summary.get("dataset_seconds", 0.0) / n, "backbone_only": alone / n,
            "startup": (wall - total["loop_seconds"] - summary.get("dataset_seconds", 0.0)),
            "first_batch_extra": first_extra, "loop_all": total["loop_seconds"] / n}


PIPELINE_COLUMNS = ["model", "device", "stage", "ms/img", "ms_min", "ms_max", "vs_backbone", "vs_min", "vs_max"]


def pipeline_rows(result: dict) -> list[dict]:
    """Per stage: seconds per image and its ratio to the backbone of the same round (median, min, max)."""
    rows = []
    runs = result["rounds"]
    for stage in (*STAGES, "backbone_only"):
        s = spread([r.get(stage, math.nan) for r in runs])  # a stage older code did not report: NaN
        v = spread([r.get(stage, math.nan) / r["backbone"] for r in runs])
        rows.append({"model": result["model"], "device": result["device"], "stage": stage, "seconds_per_image": s[0],
                     "seconds_min": s[1], "seconds_max": s[2], "vs_backbone": v[0], "vs_min": v[1], "vs_max": v[2]})
    outside = spread([(r["loop"] - r["backbone"]) / r["backbone"] for r in runs])
    rate = spread([r["backbone_only"] / r["loop"] for r in runs])  # e2e images/s over backbone-only images/s
    rows.append({"model": result["model"], "device": result["device"], "stage": "outside_backbone",
                 "seconds_per_image": statistics.median([r["loop"] - r["backbone"] for r in runs]),
                 "seconds_min": float("nan"), "seconds_max": float("nan"),
                 "vs_backbone": outside[0], "vs_min": outside[1], "vs_max": outside[2]})
    rows.append({"model": result["model"], "device": result["device"], "stage": "e2e_rate_vs_backbone_only",
                 "seconds_per_image": float("nan"), "seconds_min": float("nan"), "seconds_max": float("nan"),
                 "vs_backbone": rate[0], "vs_min": rate[1], "vs_max": rate[2]})
    return rows


def _pipeline_line(row: dict) -> str:
    def num(v: float, fmt: str) -> str:
        return format(v, fmt) if v == v else "-"

    return (f"{row['model']:26s} {row['device']:6s} {row['stage']:26s} {num(1000 * row['seconds_per_image'], '8.1f')} "
            f"{num(1000 * row['seconds_min'], '8.1f')} {num(1000 * row['seconds_max'], '8.1f')} "
            f"{num(row['vs_backbone'], '11.3f')} {num(row['vs_min'], '8.3f')} {num(row['vs_max'], '8.3f')}")


def per_image_summary(result: dict) -> str:
    """Milliseconds per image outside the backbone by stage, and the end-to-end rate, in words (medians)."""
    runs = result["rounds"]

    def ms(key) -> float:
        return 1000 * statistics.median([key(r) for r in runs])

    outside = [1000 * (r["loop"] - r["backbone"]) for r in runs]
    data = ms(lambda r: r.get("data_wait", math.nan))
    return (f"{result['model']} on {result['device']}: {statistics.median(outside):.1f} ms per image outside the "
            f"backbone [{min(outside):.1f}-{max(outside):.1f}] (scoring and rows {ms(lambda r: r['scoring']):.1f}, "
            f"waiting for the writer {ms(lambda r: r['write_wait']):.1f}, data and the rest "
            f"{ms(lambda r: r['other']):.1f}, of which waiting for data {data:.1f}; "
            f"the writer thread worked {ms(lambda r: r['writing']):.1f} beside them); "
            f"backbone + maps {ms(lambda r: r['backbone']):.1f}; end to end "
            f"{statistics.median([1 / r['loop'] for r in runs]):.2f} images/s, the backbone alone "
            f"{statistics.median([1 / r['backbone_only'] for r in runs]):.2f} images/s; the first batch waited "
            f"{statistics.median([r.get('first_batch_extra', 0.0) for r in runs]):.2f} s more once (with it, the "
            f"loop averages {ms(lambda r: r.get('loop_all', r['loop'])):.1f} ms per image)")


def projection(result: dict, images: int = MVTEC_IMAGES) -> str:
    """The wall time of a study of ``images`` images with the same backbone, layers and maps, in words."""
    runs = result["rounds"]
    loop = statistics.median([r["loop"] for r in runs])
    pooled = statistics.median([r["dataset_pass"] for r in runs])
    startup = statistics.median([r["startup"] + r.get("first_batch_extra", 0.0) for r in runs])
    total = startup + images * (loop + pooled)
    return (f"{result['model']} on {result['device']}: a {images:,}-image study ({result['layers']} layers x "
            f"{result['maps']} maps at {result['img_size']} px) takes about {_hms(total)}, {images / total:.2f} "
            f"images/s (startup and first batch {startup:.0f} s + {images:,} x ({loop:.3f} s loop + {pooled:.3f} s "
            "dataset pass) per image)")


def _hms(seconds: float) -> str:
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def pipeline_table(models: Sequence[str], devices: Sequence[str], rounds: int, extra: Sequence[str],
                   against: Path | None = None) -> list[dict]:
    """Run every model on every device; print the stage table, the target check and the projections (and,
    with ``against``, the other code's table in the same rounds and a before/after line per model)."""
    results, rows = [], []
    print("stages: " + "; ".join(f"{k} = {v}" for k, v in STAGE_TEXT.items()), flush=True)
    print(" ".join(PIPELINE_COLUMNS), flush=True)
    for device in devices:
        for model in models:
            try:
                found = pipeline(model, device, rounds, extra, against)
            except RuntimeError as e:
                print(f"{model:26s} {device:6s} failed: {e}", flush=True)
                continue
            results += found
            for result in found:
                for row in pipeline_rows(result):
                    rows.append(row)
                    print(_pipeline_line(row), flush=True)
    for result in results:
        outside = next(r for r in pipeline_rows(result) if r["stage"] == "outside_backbone")
        verdict = "met" if outside["vs_backbone"] <= TARGET_OUTSIDE else "not met"
        print(f"{result['model']} on {result['device']}: time outside the backbone is {outside['vs_backbone']:.2f} "
              f"[{outside['vs_min']:.2f}-{outside['vs_max']:.2f}] of the backbone's over {len(result['rounds'])} "
              f"rounds of {result['images']} images (target <= {TARGET_OUTSIDE}: {verdict}; dataset pass excluded)")
    for result in results:
        print("per image: " + per_image_summary(result), flush=True)
    for result in results:
        print("projection: " + projection(result), flush=True)
    for before, after in zip(results[::2], results[1::2]) if against is not None else ():
        print("before -> after: " + compared(before, after), flush=True)
    return rows


def compared(before: dict, after: dict) -> str:
    """Median milliseconds per image of the stages outside the backbone, the other code's against this one's."""
    def ms(result: dict, key) -> float:
        return 1000 * spread([key(r) for r in result["rounds"]])[0]  # NaN: a stage that code does not report

    parts = [(what, ms(before, key), ms(after, key)) for what, key in (
        ("outside the backbone", lambda r: r["loop"] - r["backbone"]), ("scoring and rows", lambda r: r["scoring"]),
        ("waiting for the writer", lambda r: r["write_wait"]), ("data and the rest", lambda r: r["other"]),
        ("of which waiting for data", lambda r: r.get("data_wait", math.nan)),
        ("the writer thread", lambda r: r["writing"]), ("backbone + maps", lambda r: r["backbone"]),
        ("loop", lambda r: r["loop"]))]
    model = after["model"].rsplit("@", 1)[0]
    return (f"{model} on {after['device']}, ms per image over {len(after['rounds'])} interleaved rounds: "
            + ", ".join(f"{what} {b:.1f} -> {a:.1f}" for what, b, a in parts))


def marginal(model: str, device: str, rounds: int, against: Path | None = None) -> list[dict] | dict[str, list[dict]]:
    """Rounds of the cold/warm map-cache studies at two sizes; per round the marginal seconds per image.

    Args:
        against: other code's ``src`` folder, run in the same rounds (its order alternating with this code's).

    Returns:
        Per round: ``cold`` and ``warm`` (loop seconds per extra image) and ``images`` (the two sizes); with
        ``against``, those rounds per code: {"before": [...], "after": [...]}.
    """
    codes = _codes(against)
    out: dict[str, list[dict]] = {label: [] for label, _ in codes}
    with tempfile.TemporaryDirectory(prefix="layerscope-marginal-") as tmp:
        for r in range(rounds):
            for label, src in _in_turn(codes, r):
                loops: dict[str, list[float]] = {"cold": [], "warm": []}
                sizes = []
                for k in MARGINAL_SIZES:
                    print(f"  {_name(model, label)} on {device}: round {r + 1}/{rounds}, {16 * k} images",
                          file=sys.stderr, flush=True)
                    cache = Path(tmp) / f"cache{r}_{k}{label}"
                    extra = [f"data.per_combination={k}", "dataset_metrics=false"]
                    for state in ("cold", "warm"):  # the cold run fills the cache the warm one reads
                        summary, _ = _study(model, device, Path(tmp) / f"{state}{r}_{k}{label}", extra, cache=cache,
                                            **({"src": src} if src is not None else {}))
                        if state == "warm" and summary.get("backbone_calls", 0):
                            raise RuntimeError(f"{model}: the warm run called the backbone "
                                               f"{summary['backbone_calls']} times (is the map cache enabled?)")
                        loops[state].append(summary["loop_seconds"])
                    sizes.append(summary["images"])
                span = sizes[1] - sizes[0]
                out[label].append({"images": sizes, **{state: (t[1] - t[0]) / span for state, t in loops.items()}})
    return out[""] if against is None else out


MARGINAL_COLUMNS = ["model", "device", "cache", "ms/img", "ms_min", "ms_max"]


def marginal_table(models: Sequence[str], devices: Sequence[str], rounds: int,
                   against: Path | None = None) -> list[dict]:
    """Print the marginal milliseconds per image, cold and warm cache, and their difference (the backbone)."""
    print(" ".join(MARGINAL_COLUMNS), flush=True)
    rows = []
    for device in devices:
        for plain in models:
            try:
                found = marginal(plain, device, rounds, against)
            except RuntimeError as e:
                print(f"{plain:26s} {device:6s} failed: {e}", flush=True)
                continue
            for label, runs in (found.items() if against is not None else [("", found)]):
                rows += _marginal_rows(_name(plain, label), device, rounds, runs)
    return rows


def _marginal_rows(model: str, device: str, rounds: int, runs: list[dict]) -> list[dict]:
    """Print and return one code's marginal rows (cold, warm, cold-warm) and its one-line summary."""
    rows = []
    for cache, values in (("cold", [r["cold"] for r in runs]), ("warm", [r["warm"] for r in runs]),
                          ("cold-warm", [r["cold"] - r["warm"] for r in runs])):
        median, low, high = spread(values)
        rows.append({"model": model, "device": device, "cache": cache, "seconds_per_image": median,
                     "seconds_min": low, "seconds_max": high, "rounds": rounds})
        print(f"{model:26s} {device:6s} {cache:10s} {1000 * median:8.1f} {1000 * low:8.1f} {1000 * high:8.1f}",
              flush=True)
    sizes = runs[0]["images"]
    print(f"{model} on {device}: one more image costs {1000 * statistics.median(r['warm'] for r in runs):.1f} "
          f"ms outside the backbone (warm cache) and {1000 * statistics.median(r['cold'] for r in runs):.1f} "
          f"ms with it (cold), the slope of the loop time between {sizes[0]} and {sizes[1]} images, median "
          f"of {rounds} rounds", flush=True)
    return rows


# ------------------------------------------------------------------------------------------ estimates


VARIANT_COST = {"plain": 1.0, "ours": 1.05, "hf_sdpa": 1.0, "hf_eager": 2.5, "timm_extract": 2.0}  # x plain
PIPELINE_GFLOP = {"dinov2_vits14_bundled": 66.0, "efficientnet_lite0_bundled": 0.8, "tiny_vit": 0.01,
                  "tiny_cnn": 0.01}  # forward per image, at the config's size
STARTUP_S = 15.0  # one fresh process importing torch, timm and the model, on 2 quiet cores
QUIET_GFLOPS = 50.0  # the probe on 2 quiet cores; a busier machine also starts processes more slowly


def _slowdown(gflops: float) -> float:
    """How much slower than 2 quiet cores the probe says this machine is now (1 to 3): scales the startups."""
    return min(3.0, max(1.0, QUIET_GFLOPS / gflops))


def machine_gflops(device: str = "cpu", seconds: float = 0.3) -> float:
    """This machine's float32 matrix-multiply rate right now, GFLOP/s: the unit of the estimates."""
    dev = torch.device(device)
    a = torch.rand(512, 512, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    a @ a
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ a
        n += 1
        if dev.type == "cuda" and n % 64:
            continue
        sync()
    return 2 * 512 ** 3 * n / (time.perf_counter() - t0) / 1e9


def vit_gflop(model: str, size: int) -> float:
    """Forward FLOPs of one image through a ``CONFIGS`` ViT (12 blocks): attention and MLP matmuls."""
    _, patch, dim, _ = CONFIGS[model]
    n = (size // patch) ** 2 + 1
    return 12 * n * (24 * dim * dim + 4 * n * dim) / 1e9


def capture_estimate(cases, batches, rounds: int, gflops: float, memory_limit_gb: float) -> float:
    """Seconds ``capture_table`` should take: per case and batch, the variants' startups (in parallel, so
    about two on two cores) and ``rounds`` + 1 forwards of every variant, at this machine's rate."""
    total = 0.0
    for model, size in cases:
        for batch in batches:
            skip = attention_bytes(model, size, batch) / 2 ** 30 > memory_limit_gb
            cost = sum(c for v, c in VARIANT_COST.items() if not (skip and v in ("hf_eager", "timm_extract")))
            forward = max(batch * vit_gflop(model, size) / gflops, 0.05)  # small models: overhead, not FLOPs
            total += 1.5 * STARTUP_S * _slowdown(gflops) + (rounds + 1) * cost * forward
    return total


def pipeline_estimate(models, devices, rounds: int, images: int, gflops: dict[str, float]) -> float:
    """Seconds ``pipeline_table`` should take: per round a study (startup, forward, ~0.1 s per image of
    the rest and the dataset pass) and the backbone alone again; unknown models count 10 GFLOP."""
    total = 0.0
    for device in devices:
        for model in models:
            forward = images * PIPELINE_GFLOP.get(model, 10.0) / gflops[device]
            startup = STARTUP_S * _slowdown(gflops[device])
            total += startup + rounds * (startup + 2 * forward + images * 0.1)
    return total


def marginal_estimate(models, rounds: int, gflops: float) -> float:
    """Seconds ``marginal_table`` should take: per round and size a cold and a warm study."""
    sizes = [16 * k for k in MARGINAL_SIZES]
    startup = STARTUP_S * _slowdown(gflops)
    return sum(rounds * sum(2 * startup + n * (PIPELINE_GFLOP.get(m, 10.0) / gflops + 0.2) for n in sizes)
               for m in models)


def _minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


# ------------------------------------------------------------------------------------------ command


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="layerscope-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run (one small case, 2 rounds)")
    p.add_argument("--full", action="store_true",
                   help="capture: every case (ViT-S/8 at 224 and 480 px, ViT-B/16), batches 1 and 8, 5 rounds")
    p.add_argument("--pipeline", action="store_true", help="time the default study by stage instead")
    p.add_argument("--marginal", action="store_true",
                   help="with --pipeline: the marginal ms per image with a cold and a warm map cache instead")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"),
                   help="capture: cpu (default); pipeline: cpu, and cuda too when present (default)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds (default 3; 5 with --full, 2 with --quick or --marginal)")
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--cases", nargs="+", default=None, metavar="MODEL:SIZE",
                   help=f"capture cases, e.g. vit_s8:480 (models: {', '.join(CONFIGS)})")
    p.add_argument("--models", nargs="+", default=None, help="pipeline: model configs (conf/model/*.yaml)")
    p.add_argument("--against", type=Path, default=None, metavar="DIR",
                   help="pipeline: other code's src folder (holding layerscope/), run before/after in the same rounds")
    p.add_argument("--memory-limit-gb", type=float, default=12.0, help="skip N x N variants needing more")
    p.add_argument("--out", type=Path, default=None, help="CSV (default outputs/bench.csv or bench_pipeline.csv)")
    p.add_argument("--serve", nargs=4, metavar=("MODEL", "SIZE", "BATCH", "VARIANT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.serve:
        model, size, batch, variant = a.serve
        serve(model, int(size), int(batch), variant, a.device or "cpu")
        return 0
    if a.marginal and not a.pipeline:
        print("error: --marginal: goes with --pipeline", file=sys.stderr)
        return 2
    if a.against is not None and not a.pipeline:
        print("error: --against: goes with --pipeline", file=sys.stderr)
        return 2
    if a.against is not None and not (a.against / "layerscope" / "run.py").is_file():
        print(f"error: --against {a.against}: expected a src folder holding layerscope/run.py", file=sys.stderr)
        return 2
    rounds = a.rounds if a.rounds is not None else (2 if a.quick or a.marginal else 5 if a.full else 3)
    if rounds < 1:
        print(f"error: --rounds {rounds}: expected at least 1", file=sys.stderr)
        return 2
    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device visible", file=sys.stderr)
        return 2
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs, {rounds} interleaved rounds "
          "(median and min-max over rounds)", flush=True)
    t_start = time.perf_counter()
    if a.pipeline:
        devices = [a.device] if a.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        models = a.models or (PIPELINE_QUICK if a.quick else PIPELINE_MODELS)
        gflops = {d: machine_gflops(d) for d in devices}
        if a.marginal:
            estimate = sum(marginal_estimate(models, rounds, gflops[d]) for d in devices)
        else:
            estimate = pipeline_estimate(models, devices, rounds, 4 if a.quick else 16, gflops)
        estimate *= 2 if a.against is not None else 1  # every study twice
        _announce(estimate, gflops)
        if a.marginal:
            rows = marginal_table(models, devices, rounds, a.against.resolve() if a.against else None)
            fields = ["model", "device", "cache", "seconds_per_image", "seconds_min", "seconds_max", "rounds"]
            out = a.out or Path("outputs/bench_marginal.csv")
        else:
            rows = pipeline_table(models, devices, rounds, QUICK_DATA if a.quick else [],
                                  a.against.resolve() if a.against else None)
            fields = ["model", "device", "stage", "seconds_per_image", "seconds_min", "seconds_max", "vs_backbone",
                      "vs_min", "vs_max"]
            out = a.out or Path("outputs/bench_pipeline.csv")
    else:
        try:
            cases = [(c.split(":")[0], int(c.split(":")[1])) for c in a.cases] if a.cases else None
        except (IndexError, ValueError):
            print(f"error: --cases {' '.join(a.cases)}: expected MODEL:SIZE, e.g. vit_s8:480", file=sys.stderr)
            return 2
        cases = cases or (QUICK if a.quick else FULL if a.full else DEFAULT)
        unknown = [m for m, _ in cases if m not in CONFIGS]
        if unknown:
            print(f"error: --cases {unknown[0]}: expected one of {', '.join(CONFIGS)}", file=sys.stderr)
            return 2
        device = a.device or "cpu"
        batches = a.batches or ([1, 8] if a.full else [1])
        gflops = {device: machine_gflops(device)}
        _announce(capture_estimate(cases, batches, rounds, gflops[device], a.memory_limit_gb), gflops,
                  "" if a.full or a.cases or a.quick else "; --full for every case")
        rows = capture_table(cases, batches, device, rounds, a.memory_limit_gb)
        fields = ["model", "size", "batch", "variant", "device", "rounds", "seconds_per_image", "seconds_min",
                  "seconds_max", "peak_mb", "time_ratio", "ratio_min", "ratio_max", "memory_ratio", "status"]
        out = a.out or Path("outputs/bench.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:  # NaN (undefined) -> empty cell
            w.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()})
    print(f"written: {out} (took {_minutes(time.perf_counter() - t_start)})")
    return 0


def _announce(seconds: float, gflops: dict[str, float], more: str = "") -> None:
    rates = ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in gflops.items())
    print(f"estimated duration: about {_minutes(seconds)} (this machine now: {rates}){more}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
