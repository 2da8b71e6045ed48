"""layerscope-bench: the smoke runs print complete tables with finite ratios (never an assertion on speed)."""
from __future__ import annotations

import csv
import math
import os
import subprocess
import sys

import pytest

from layerscope.bench import capture, common, pipeline
from layerscope.bench import estimate as estimates
from layerscope.cli import bench

from .conftest import ROOT


def _bench(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "layerscope.cli.bench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _table(stdout: str, header: list[str]) -> list[list[str]]:
    """The printed table's rows (split on whitespace): the lines after its header with one field per column."""
    lines = stdout.splitlines()
    rows = []
    for line in lines[lines.index(" ".join(header)) + 1:]:
        if len(line.split()) != len(header):  # the summary lines after the table, "written: ..."
            break
        rows.append(line.split())
    return rows


def test_spread_is_median_min_max_and_ignores_nan():
    assert common.spread([3.0, 1.0, 2.0, float("nan")]) == (2.0, 1.0, 3.0)
    assert all(math.isnan(v) for v in common.spread([]))


def test_pipeline_rows_take_ratios_within_a_round():
    """Round 1 is twice as slow as round 0 in every stage: per-round ratios do not move, raw times do."""
    base = {"backbone": 1.0, "scoring": 0.1, "writing": 0.2, "write_wait": 0.0, "other": 0.05, "loop": 1.15,
            "dataset_pass": 0.3, "backbone_only": 1.0, "startup": 5.0}
    result = {"model": "m", "device": "cpu", "images": 16, "layers": 12, "maps": 7, "img_size": 448,
              "rounds": [base, {k: 2 * v for k, v in base.items()}]}
    rows = {r["stage"]: r for r in pipeline.pipeline_rows(result)}
    assert rows["scoring"]["vs_min"] == pytest.approx(0.1) and rows["scoring"]["vs_max"] == pytest.approx(0.1)
    assert rows["scoring"]["seconds_min"] == pytest.approx(0.1) and rows["scoring"]["seconds_max"] == pytest.approx(0.2)
    assert rows["outside_backbone"]["vs_backbone"] == pytest.approx(0.15)
    assert rows["e2e_rate_vs_backbone_only"]["vs_backbone"] == pytest.approx(1 / 1.15)
    assert math.isnan(rows["outside_backbone_whole_run"]["vs_backbone"])  # a round without it (older code)
    summary = {"images": 16, "loop_seconds": 2.0, "backbone_seconds": 1.6, "score_seconds": 0.2,
               "write_seconds": 0.1, "write_wait_seconds": 0.0, "data_wait_seconds": 0.0,
               "dataset_stream_seconds": 0.032, "dataset_seconds": 0.16, "after_loop_seconds": 0.32}
    stages = pipeline._round_stages(summary, 10.0, 1.5)
    # whole run outside the backbone: (2.0 - 1.6) / 16 in the loop + 0.32 / 16 after it
    assert stages["whole_run_outside"] == pytest.approx(0.045)
    assert stages["dataset_pass"] == pytest.approx(0.01) and stages["after_loop_other"] == pytest.approx(0.01)
    assert stages["dataset_stream"] == pytest.approx(0.002) and stages["startup"] == pytest.approx(7.68)
    text = pipeline.projection(result, images=1700)
    # startup (median 7.5 s) + 1700 x (median loop 1.725 + median dataset pass 0.45) = 3705 s
    assert "1:01:45" in text and "1,700-image" in text


def test_no_arguments_run_the_small_default_after_an_estimate(monkeypatch, capsys, tmp_path):
    """Without options: one case, batch 1, 3 rounds (minutes on 2 cores), announced with an estimate; --full:
    the whole set."""
    calls = []
    monkeypatch.setattr(bench, "machine_gflops", lambda device="cpu": 50.0)
    monkeypatch.setattr(bench, "capture_table", lambda *a: calls.append(a) or [])
    assert bench.main(["--out", str(tmp_path / "b.csv")]) == 0
    assert calls[-1][:4] == (capture.DEFAULT, [1], "cpu", 3)
    out = capsys.readouterr().out
    estimate = estimates.capture_estimate(capture.DEFAULT, [1], 3, 50.0, 12.0)
    assert f"estimated duration: about {common.minutes(estimate)}" in out and "--full for every case" in out
    assert estimate < 300  # on 2 quiet cores
    assert bench.main(["--full", "--out", str(tmp_path / "b.csv")]) == 0
    assert calls[-1][:4] == (capture.FULL, [1, 8], "cpu", 5)
    assert estimates.capture_estimate(capture.FULL, [1, 8], 5, 50.0, 12.0) > 10 * estimate
    assert bench.main(["--marginal"]) == 2  # only with --pipeline


def test_marginal_is_the_slope_between_two_sizes(monkeypatch):
    """Loop time = startup + n x per-image cost: the slope recovers the per-image cost, cold and warm."""
    def fake_study(model, device, out, extra, cache=None):
        n = 16 * int(next(e for e in extra if e.startswith("data.per_combination=")).split("=")[1])
        warm = (out.name.startswith("warm"))
        loop = 3.0 + n * (0.015 if warm else 0.021)
        after = 0.5 + n * 0.002  # the dataset pass and the rest after the loop
        assert "dataset_metrics=false" not in extra  # whole runs
        return {"images": n, "loop_seconds": loop, "after_loop_seconds": after, "seconds": 1.0 + loop + after,
                "dataset_stream_seconds": n * 0.0005, "dataset_seconds": 0.2 + n * 0.001,
                "backbone_calls": 0 if warm else n // 4}, 4.0 + loop + after

    monkeypatch.setattr(pipeline, "_study", fake_study)
    runs = pipeline.marginal("m", "cpu", 2)
    assert [r["images"] for r in runs] == [[16, 48], [16, 48]]
    assert all(r["warm"] == pytest.approx(0.015) and r["cold"] == pytest.approx(0.021) for r in runs)
    assert all(r["warm_after"] == pytest.approx(0.002) and r["warm_whole"] == pytest.approx(0.017) for r in runs)
    assert all(r["warm_run"] == pytest.approx(0.017) and r["warm_dataset"] == pytest.approx(0.0015) for r in runs)
    rows = pipeline.marginal_table(["m"], ["cpu"], 1)
    assert [(r["cache"], round(r["seconds_per_image"], 6)) for r in rows] == [
        ("cold", 0.021), ("warm", 0.015), ("cold-warm", 0.006), ("warm-after-loop", 0.002),
        ("warm-dataset-pass", 0.0015), ("warm-run", 0.017), ("warm-whole-run", 0.017)]


def test_against_runs_the_other_code_in_the_same_rounds_in_alternating_order(monkeypatch, tmp_path, capsys):
    """--against: every round runs both codes (the other one from its src folder), first one then the other."""
    calls = []

    def fake_study(model, device, out, extra, cache=None, src=None):
        calls.append((out.name, src))
        n = 16 * int(next(e for e in extra if e.startswith("data.per_combination=")).split("=")[1])
        cost = 0.030 if src is not None else 0.010  # the other code is slower per image
        return {"images": n, "loop_seconds": 3.0 + n * cost, "backbone_calls": 0 if out.name.startswith("warm")
                else 1}, 1.0

    monkeypatch.setattr(pipeline, "_study", fake_study)
    other = tmp_path / "src"
    found = pipeline.marginal("m", "cpu", 2, against=other)
    assert [r["warm"] for r in found["before"]] == pytest.approx([0.030, 0.030])
    assert [r["warm"] for r in found["after"]] == pytest.approx([0.010, 0.010])
    assert pipeline.marginal_compared("m", "cpu", found).startswith(
        "m on cpu, marginal ms per image outside the backbone (warm cache) over 2 interleaved rounds: whole run")
    firsts = [src for name, src in calls if name.startswith("cold") and "_1" in name]  # the 16-image cold runs
    assert firsts == [other, None, None, other]  # round 0: before, after; round 1: after, before
    assert bench.main(["--against", str(tmp_path)]) == 2  # only with --pipeline
    assert bench.main(["--pipeline", "--against", str(tmp_path / "nothing")]) == 2
    assert "expected a src folder holding layerscope/cli/run.py" in capsys.readouterr().err


@pytest.mark.slow
def test_capture_quick_prints_every_variant_with_finite_ratios(tmp_path):
    proc = _bench(["--quick", "--out", str(tmp_path / "bench.csv")], tmp_path)
    assert "estimated duration: about" in proc.stdout and "took" in proc.stdout
    rows = _table(proc.stdout, capture.CAPTURE_COLUMNS)
    assert [r[3] for r in rows] == list(capture.VARIANTS)
    for r in rows:
        assert r[-1] == "ok", r
        ratio, low, high = (float(v) for v in r[6:9])
        assert all(math.isfinite(v) and v > 0 for v in (ratio, low, high)) and low <= ratio <= high
    assert [r[6] for r in rows][0] == "1.00"  # plain is the baseline of every round
    with open(tmp_path / "bench.csv") as f:
        saved = list(csv.DictReader(f))
    assert [r["variant"] for r in saved] == list(capture.VARIANTS) and all(int(r["rounds"]) == 2 for r in saved)


@pytest.mark.slow
def test_pipeline_quick_prints_every_stage_and_a_projection(tmp_path):
    proc = _bench(["--pipeline", "--quick", "--device", "cpu", "--out", str(tmp_path / "pipe.csv")], tmp_path)
    rows = _table(proc.stdout, pipeline.PIPELINE_COLUMNS)
    stages = [r[2] for r in rows]
    assert stages == [*pipeline.STAGES, "backbone_only", "outside_backbone", "outside_backbone_whole_run",
                      "e2e_rate_vs_backbone_only"]
    for r in rows:
        ratio, low, high = (float(v) for v in r[-3:])
        assert all(math.isfinite(v) and v >= 0 for v in (ratio, low, high)) and low <= ratio <= high, r
    assert "time outside the backbone is" in proc.stdout
    assert "per image: tiny_vit on cpu:" in proc.stdout and "images/s, the backbone alone" in proc.stdout
    assert "projection: tiny_vit on cpu: a 1,700-image study (2 layers x 3 maps at 64 px)" in proc.stdout
