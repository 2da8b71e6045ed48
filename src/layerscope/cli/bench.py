"""``layerscope-bench``: the benchmarks of ``layerscope.bench`` (see its docstring for what each measures).

    layerscope-bench [--quick | --full] [--device cpu|cuda] [--rounds 3] [--cases vit_s8:480] [--out bench.csv]
    layerscope-bench --pipeline [--quick] [--device cpu|cuda] [--models dinov2_vits14_bundled ...] [--rounds 3]
    layerscope-bench --pipeline --marginal [--models ...] [--rounds 2]
    layerscope-bench --pipeline [--marginal] --against OTHER/src   (before/after, interleaved)
    layerscope-bench --knn [--quick] [--device cpu|cuda] [--shots 16] [--rounds 3]   (few-shot k-NN maps)
    layerscope-bench --compare [--quick] [--measures cka rsa ...] [--images 500]   (time per similarity measure)

"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
import time
from pathlib import Path

import torch

from ..bench.capture import CONFIGS, DEFAULT, FULL, QUICK, capture_table, serve
from ..bench.common import minutes
from ..bench.estimate import capture_estimate, machine_gflops, marginal_estimate, pipeline_estimate
from ..bench.pipeline import (PIPELINE_MODELS, PIPELINE_QUICK, QUICK_DATA, marginal_table, pipeline_table,
                              study_module)
from ..results.rundir import write_atomic
from .errors import Parser, UsageError, command


@command(errors=(), write="")
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="layerscope-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run (one small case, 2 rounds)")
    p.add_argument("--full", action="store_true",
                   help="capture: every case (ViT-S/8 at 224 and 480 px, ViT-B/16), batches 1 and 8, 5 rounds")
    p.add_argument("--pipeline", action="store_true", help="time the default study by stage instead")
    p.add_argument("--knn", action="store_true",
                   help="the few-shot k-NN map per image and layer (method=anomalydino on DINOv2 at 448 px, "
                        "method=patchcore on EfficientNet-Lite0) against the backbone's forward pass")
    p.add_argument("--shots", type=int, default=16, help="--knn: reference images in the bank")
    p.add_argument("--compare", action="store_true",
                   help="time layerscope-compare per similarity measure (12 + 5 layers, intervals and nulls)")
    p.add_argument("--measures", nargs="+", default=None, metavar="MEASURE",
                   help="with --compare: the measures (default: every one)")
    p.add_argument("--images", type=int, default=None, help="with --compare: images (default 500; --quick 100)")
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
    if a.compare:
        return _compare(a)
    if a.knn and (a.pipeline or a.marginal or a.against is not None):
        raise UsageError("--knn: goes alone (not with --pipeline, --marginal or --against)")
    if a.shots < 1:
        raise UsageError(f"--shots {a.shots}: expected at least 1")
    if a.marginal and not a.pipeline:
        raise UsageError("--marginal: goes with --pipeline")
    if a.against is not None and not a.pipeline:
        raise UsageError("--against: goes with --pipeline")
    if a.against is not None:
        try:
            study_module(a.against)
        except ValueError:
            raise UsageError(f"--against {a.against}: expected a src folder holding layerscope/cli/run.py (or "
                  "layerscope/run.py)")
    rounds = a.rounds if a.rounds is not None else (2 if a.quick or a.marginal else 5 if a.full else 3)
    if rounds < 1:
        raise UsageError(f"--rounds {rounds}: expected at least 1")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device visible")
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs, {rounds} interleaved rounds "
          "(median and min-max over rounds)", flush=True)
    t_start = time.perf_counter()
    if a.knn:
        from ..bench.fewshot_cost import KNN_CASES, KNN_QUICK, knn_table

        rows = knn_table(KNN_QUICK if a.quick else KNN_CASES, a.device or "cpu", rounds, a.shots)
        fields = list(rows[0]) if rows else []
        out = a.out or Path("outputs/bench_knn.csv")
    elif a.pipeline:
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
            raise UsageError(f"--cases {' '.join(a.cases)}: expected MODEL:SIZE, e.g. vit_s8:480")
        cases = cases or (QUICK if a.quick else FULL if a.full else DEFAULT)
        unknown = [m for m, _ in cases if m not in CONFIGS]
        if unknown:
            raise UsageError(f"--cases {unknown[0]}: expected one of {', '.join(CONFIGS)}")
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
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:  # NaN (undefined) -> empty cell
        w.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()})
    write_atomic(out, text.getvalue())  # a cut leaves the earlier table or this one
    print(f"written: {out} (took {minutes(time.perf_counter() - t_start)})")
    return 0


def _compare(a) -> int:
    """``--compare``: seconds per similarity measure, printed and written to ``--out``."""
    from ..bench.compare_cost import similarity_times
    from ..metrics.measures import MEASURES

    if a.pipeline:
        raise UsageError("--compare: goes without --pipeline")
    names = a.measures or list(MEASURES)
    if bad := [m for m in names if m not in MEASURES]:
        raise UsageError(f"--measures {bad[0]}: expected some of {', '.join(MEASURES)}")
    n = a.images if a.images is not None else (100 if a.quick else 500)
    if n < 10:
        raise UsageError(f"--images {n}: expected at least 10")
    perms, boot = (50, 100) if a.quick else (200, 1000)
    print(f"{os.cpu_count()} CPUs, {os.environ.get('OMP_NUM_THREADS', 'default')} BLAS threads; {n} images, 12 + 5 "
          f"layers, {perms} permutations, {boot} bootstrap draws", flush=True)
    rows = []
    for name in names:  # one at a time, printed as it finishes
        row = similarity_times([name], n, perms, boot)[0]
        print(f"{name:>11}: {row['seconds']:7.1f} s wall, {row['cpu_seconds']:7.1f} s CPU ({row['rows']} rows; "
              f"{row['threads']} threads, load average {row['load']:.1f})", flush=True)
        rows.append(row)
    print(f"{'total':>11}: {sum(r['seconds'] for r in rows):7.1f} s wall, {sum(r['cpu_seconds'] for r in rows):7.1f} s "
          f"CPU (load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    out = a.out or Path("outputs/bench_compare.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_atomic(out, text.getvalue())
    print(f"written: {out}")
    return 0


def _announce(seconds: float, gflops: dict[str, float], more: str = "") -> None:
    rates = ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in gflops.items())
    print(f"estimated duration: about {minutes(seconds)} (this machine now: {rates}){more}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
