"""Pipeline benchmark: the default study by stage, its marginal cost per image, before/after other code."""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from ..results.layout import CONFIG, SUMMARY
from .common import spread

PIPELINE_MODELS = ["dinov2_vits14_bundled", "efficientnet_lite0_bundled"]
PIPELINE_QUICK = ["tiny_vit"]
QUICK_DATA = ["data.textures=[brick]"]  # 4 images: a smoke run
MVTEC_IMAGES = 1700  # MVTec AD's test set, all categories
TARGET_OUTSIDE = 0.25  # the goal: time outside the backbone at most this share of the backbone's
MARGINAL_SIZES = (1, 3)  # data.per_combination: 16 and 48 synthetic images


STAGES = ("backbone", "scoring", "writing", "write_wait", "data_wait", "dataset_stream", "other", "loop",
          "dataset_pass", "after_loop_other")
STAGE_TEXT = {
    "backbone": "forward + maps in the study",
    "scoring": "rows and results.csv",
    "writing": "npz + png by the background thread",
    "write_wait": "time the study waited for that thread",
    "data_wait": "time the study waited for the next prepared batch (from the DataLoader workers)",
    "dataset_stream": "the dataset-level counts accumulated batch by batch in the loop",
    "other": "the rest of the loop (data_wait and dataset_stream included)",
    "loop": "the study's image loop end to end (after its first batch, whose one-time wait is apart)",
    "dataset_pass": "the dataset-level protocol at the end (a merge of the streamed counts; older code: a pass "
                    "over the saved maps)",
    "after_loop_other": "the rest of the work after the loop (representations, the summary)",
    "outside_backbone_whole_run": "outside the backbone, whole run: the loop less the backbone, plus all the work "
                                  "after it",
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
    cmd = [sys.executable, "-m", study_module(src), f"model={model}", f"device={device}", *caching,
           "progress=false", f"hydra.run.dir={out}", *extra]
    first = str(src if src is not None else Path(__file__).resolve().parents[2])  # this package, or the other code
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([first, *filter(None, [os.environ.get("PYTHONPATH")])]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = [t for t in proc.stderr.strip().splitlines() if t.strip()]
        raise RuntimeError(f"{' '.join(cmd[2:])}: {lines[-1] if lines else proc.returncode}")
    return json.loads((out / SUMMARY).read_text()), wall


def study_module(src: Path | None) -> str:
    """The module that runs a study in the code at ``src`` (None: this code): ``layerscope.cli.run``, or
    ``layerscope.run`` in older code (before the commands moved to ``cli/``); raises ValueError for neither."""
    root = Path(src) if src is not None else Path(__file__).resolve().parents[2]
    for module in ("layerscope.cli.run", "layerscope.run"):
        if (root / Path(*module.split("."))).with_suffix(".py").is_file():
            return module
    raise ValueError(f"{root}: expected a src folder holding layerscope/cli/run.py (or layerscope/run.py)")


class BackboneOnly:
    """The study's backbone pass alone (forward + maps for every image, as ``MapSource``), in this process.

    Built from the ``config.yaml`` a study run wrote, so it is the same model, layers, method and images.
    """

    def __init__(self, config: Path):
        from omegaconf import OmegaConf

        from ..mapsource import MapSource
        from ..plan import build, build_dataset, plan_study
        from ..runtime import resolve_device
        from ..data.handover import Prepared

        cfg = OmegaConf.load(config)
        self.device = resolve_device(cfg.device)
        backbone = build(cfg.model)
        plan = plan_study(cfg, backbone)
        dataset = build_dataset(cfg)
        backbone.load_weights()
        backbone.to(self.device).eval()
        prepared = Prepared(dataset, backbone.img_size)
        items = [prepared[i] for i in range(len(prepared))]  # data preparation is not the backbone's
        self.items = [item for item in items if item.error is None]
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
                n = _scored(summary)
                per_round[label].append(_round_stages(summary, wall, alone))
    return [{"model": _name(model, label), "device": device, "images": n, "rounds": per_round[label],
             "layers": only.layers, "maps": only.maps, "img_size": only.img_size} for label, _ in codes]


def _name(model: str, label: str) -> str:
    return f"{model}@{label}" if label else model


def _scored(summary: dict) -> int:
    """Images a study scored: ``images`` (older summaries counted the skipped ones in it too)."""
    return summary["images"] if "skipped" in summary else summary["images"] - len(summary.get("skipped_images", []))


def _round_stages(summary: dict, wall: float, alone: float) -> dict:
    """One study's stages in seconds per image (steady state, after the first batch), from its run_summary."""
    n = _scored(summary)
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
    dataset = summary.get("dataset_seconds", 0.0)
    after = summary.get("after_loop_seconds", dataset)  # older code timed only the dataset pass after its loop
    return {"backbone": backbone / m, "scoring": score / m, "writing": summary["write_seconds"] / n,
            "write_wait": wait / m,
            "data_wait": steady["data_wait_seconds"] / m if "data_wait_seconds" in summary else math.nan,
            "other": (loop - backbone - score - wait) / m, "loop": loop / m,
            "dataset_stream": summary.get("dataset_stream_seconds", math.nan) / n,  # older code: NaN
            "dataset_pass": dataset / n, "after_loop_other": (after - dataset) / n,
            "whole_run_outside": (loop - backbone) / m + after / n, "backbone_only": alone / n,
            "startup": (wall - total["loop_seconds"] - after),
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
    whole = spread([r["whole_run_outside"] / r["backbone"] for r in runs if "whole_run_outside" in r])
    rows.append({"model": result["model"], "device": result["device"], "stage": "outside_backbone_whole_run",
                 "seconds_per_image": spread([r.get("whole_run_outside", math.nan) for r in runs])[0],
                 "seconds_min": float("nan"), "seconds_max": float("nan"),
                 "vs_backbone": whole[0], "vs_min": whole[1], "vs_max": whole[2]})
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
    whole = ms(lambda r: r.get("whole_run_outside", math.nan))
    return (f"{result['model']} on {result['device']}: {statistics.median(outside):.1f} ms per image outside the "
            f"backbone [{min(outside):.1f}-{max(outside):.1f}] (scoring and rows {ms(lambda r: r['scoring']):.1f}, "
            f"waiting for the writer {ms(lambda r: r['write_wait']):.1f}, data and the rest "
            f"{ms(lambda r: r['other']):.1f}, of which waiting for data {data:.1f} and the dataset-level counts "
            f"{ms(lambda r: r.get('dataset_stream', math.nan)):.1f}; "
            f"the writer thread worked {ms(lambda r: r['writing']):.1f} beside them); "
            f"backbone + maps {ms(lambda r: r['backbone']):.1f}; end to end "
            f"{statistics.median([1 / r['loop'] for r in runs]):.2f} images/s, the backbone alone "
            f"{statistics.median([1 / r['backbone_only'] for r in runs]):.2f} images/s; the first batch waited "
            f"{statistics.median([r.get('first_batch_extra', 0.0) for r in runs]):.2f} s more once (with it, the "
            f"loop averages {ms(lambda r: r.get('loop_all', r['loop'])):.1f} ms per image); after the loop, the "
            f"dataset pass {ms(lambda r: r['dataset_pass']):.1f} and the rest "
            f"{ms(lambda r: r.get('after_loop_other', math.nan)):.1f}; outside the backbone, whole run {whole:.1f} ms "
            "per image")


def projection(result: dict, images: int = MVTEC_IMAGES) -> str:
    """The wall time of a study of ``images`` images with the same backbone, layers and maps, in words."""
    runs = result["rounds"]
    loop = statistics.median([r["loop"] for r in runs])
    pooled = statistics.median([r["dataset_pass"] + r.get("after_loop_other", 0.0) for r in runs])
    startup = statistics.median([r["startup"] + r.get("first_batch_extra", 0.0) for r in runs])
    total = startup + images * (loop + pooled)
    return (f"{result['model']} on {result['device']}: a {images:,}-image study ({result['layers']} layers x "
            f"{result['maps']} maps at {result['img_size']} px) takes about {_hms(total)}, {images / total:.2f} "
            f"images/s (startup and first batch {startup:.0f} s + {images:,} x ({loop:.3f} s loop + {pooled:.3f} s "
            "dataset pass and the rest after the loop) per image)")


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
        found_rows = {r["stage"]: r for r in pipeline_rows(result)}
        outside, whole = found_rows["outside_backbone"], found_rows["outside_backbone_whole_run"]
        verdict = "met" if outside["vs_backbone"] <= TARGET_OUTSIDE else "not met"
        print(f"{result['model']} on {result['device']}: time outside the backbone is {outside['vs_backbone']:.2f} "
              f"[{outside['vs_min']:.2f}-{outside['vs_max']:.2f}] of the backbone's over {len(result['rounds'])} "
              f"rounds of {result['images']} images (target <= {TARGET_OUTSIDE}: {verdict}; the loop only); whole run "
              f"{whole['vs_backbone']:.2f} [{whole['vs_min']:.2f}-{whole['vs_max']:.2f}], "
              f"{1000 * whole['seconds_per_image']:.1f} ms per image (the dataset pass and the rest after the loop in)")
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
        ("of which the dataset-level counts", lambda r: r.get("dataset_stream", math.nan)),
        ("dataset pass after the loop", lambda r: r["dataset_pass"]),
        ("the rest after the loop", lambda r: r.get("after_loop_other", math.nan)),
        ("outside the backbone, whole run", lambda r: r.get("whole_run_outside", math.nan)),
        ("the writer thread", lambda r: r["writing"]), ("backbone + maps", lambda r: r["backbone"]),
        ("loop", lambda r: r["loop"]))]
    model = after["model"].rsplit("@", 1)[0]
    return (f"{model} on {after['device']}, ms per image over {len(after['rounds'])} interleaved rounds: "
            + ", ".join(f"{what} {b:.1f} -> {a:.1f}" + (f" ({a / b:.2f}x)" if b > 0 else "") for what, b, a in parts))


def marginal(model: str, device: str, rounds: int, against: Path | None = None) -> list[dict] | dict[str, list[dict]]:
    """Rounds of the cold/warm map-cache studies at two sizes, whole runs (the dataset-level pass and all the work
    after the loop included); per round the marginal seconds per image.

    Args:
        against: other code's ``src`` folder, run in the same rounds (its order alternating with this code's).

    Returns:
        Per round: ``cold`` and ``warm`` (loop seconds per extra image), ``warm_after`` (the work after the
        loop: the dataset pass and the rest), ``warm_dataset`` (the dataset-level pass: its counts in the loop and
        its end), ``warm_run`` (the run by its own clock, ``run_summary.json``'s ``seconds``: from the weights'
        loading to the summary, without the interpreter's start, whose seconds vary more than 32 images
        cost), ``warm_whole`` (the whole process, wall clock: with a warm cache, all of it outside the backbone)
        and ``images`` (the two sizes); with ``against``, those rounds per code: {"before": [...], "after":
        [...]}. Older code without a figure gives NaN.
    """
    codes = _codes(against)
    out: dict[str, list[dict]] = {label: [] for label, _ in codes}
    with tempfile.TemporaryDirectory(prefix="layerscope-marginal-") as tmp:
        for r in range(rounds):
            for label, src in _in_turn(codes, r):
                loops: dict[str, list[float]] = {"cold": [], "warm": [], "warm_after": [], "warm_dataset": [],
                                                 "warm_run": [], "warm_whole": []}
                sizes = []
                for k in MARGINAL_SIZES:
                    print(f"  {_name(model, label)} on {device}: round {r + 1}/{rounds}, {16 * k} images",
                          file=sys.stderr, flush=True)
                    cache = Path(tmp) / f"cache{r}_{k}{label}"
                    extra = [f"data.per_combination={k}"]
                    for state in ("cold", "warm"):  # the cold run fills the cache the warm one reads
                        summary, wall = _study(model, device, Path(tmp) / f"{state}{r}_{k}{label}", extra, cache=cache,
                                               **({"src": src} if src is not None else {}))
                        if state == "warm" and summary.get("backbone_calls", 0):
                            raise RuntimeError(f"{model}: the warm run called the backbone "
                                               f"{summary['backbone_calls']} times (is the map cache enabled?)")
                        loops[state].append(summary["loop_seconds"])
                        if state == "warm":  # older code timed only the dataset pass after its loop
                            loops["warm_after"].append(summary.get("after_loop_seconds",
                                                                   summary.get("dataset_seconds", 0.0)))
                            loops["warm_dataset"].append(summary.get("dataset_stream_seconds", math.nan)
                                                         + summary.get("dataset_seconds", math.nan))
                            loops["warm_run"].append(summary.get("seconds", math.nan))
                            loops["warm_whole"].append(wall)
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
            if against is not None:
                print("before -> after: " + marginal_compared(plain, device, found), flush=True)
    return rows


def marginal_compared(model: str, device: str, found: dict[str, list[dict]]) -> str:
    """Median marginal milliseconds per image (warm cache), the other code's against this one's, with the ratio."""
    parts = []
    for what, key in (("whole run", "warm_whole"), ("the run's own clock", "warm_run"), ("loop", "warm"),
                      ("after the loop", "warm_after"), ("dataset pass", "warm_dataset")):
        b, a = (1000 * spread([r.get(key, math.nan) for r in found[label]])[0] for label in ("before", "after"))
        parts.append(f"{what} {b:.1f} -> {a:.1f}" + (f" ({a / b:.2f}x)" if b > 0 else ""))
    return (f"{model} on {device}, marginal ms per image outside the backbone (warm cache) over "
            f"{len(found['after'])} interleaved rounds: " + ", ".join(parts))


def _marginal_rows(model: str, device: str, rounds: int, runs: list[dict]) -> list[dict]:
    """Print and return one code's marginal rows (cold, warm, cold-warm) and its one-line summary."""
    rows = []
    for cache, values in (("cold", [r["cold"] for r in runs]), ("warm", [r["warm"] for r in runs]),
                          ("cold-warm", [r["cold"] - r["warm"] for r in runs]),
                          ("warm-after-loop", [r.get("warm_after", math.nan) for r in runs]),
                          ("warm-dataset-pass", [r.get("warm_dataset", math.nan) for r in runs]),
                          ("warm-run", [r.get("warm_run", math.nan) for r in runs]),
                          ("warm-whole-run", [r.get("warm_whole", math.nan) for r in runs])):
        median, low, high = spread(values)
        rows.append({"model": model, "device": device, "cache": cache, "seconds_per_image": median,
                     "seconds_min": low, "seconds_max": high, "rounds": rounds})
        print(f"{model:26s} {device:6s} {cache:16s} {1000 * median:8.1f} {1000 * low:8.1f} {1000 * high:8.1f}",
              flush=True)
    sizes = runs[0]["images"]
    whole = spread([r.get("warm_whole", math.nan) for r in runs])[0]
    after = spread([r.get("warm_after", math.nan) for r in runs])[0]
    own = spread([r.get("warm_run", math.nan) for r in runs])[0]
    dataset = spread([r.get("warm_dataset", math.nan) for r in runs])[0]
    print(f"{model} on {device}: one more image costs {1000 * whole:.1f} ms outside the backbone, whole run (warm "
          f"cache, wall clock; {1000 * own:.1f} by the run's own clock, without the interpreter's start; of which the "
          f"loop {1000 * statistics.median(r['warm'] for r in runs):.1f} and the work after the loop "
          f"{1000 * after:.1f}; the dataset-level pass, in the loop and after it, {1000 * dataset:.1f}), and "
          f"{1000 * statistics.median(r['cold'] for r in runs):.1f} ms in the loop with the backbone (cold), the "
          f"slopes between {sizes[0]} and {sizes[1]} images, median of {rounds} rounds", flush=True)
    return rows
