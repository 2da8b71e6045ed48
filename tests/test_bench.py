"""layerscope-bench: the smoke runs print complete tables with finite ratios (never an assertion on speed)."""
from __future__ import annotations

import csv
import math
import os
import subprocess
import sys

import pytest

from layerscope import bench

from .conftest import ROOT


def _bench(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "layerscope.bench", *args], cwd=cwd, env=env, capture_output=True,
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
    assert bench.spread([3.0, 1.0, 2.0, float("nan")]) == (2.0, 1.0, 3.0)
    assert all(math.isnan(v) for v in bench.spread([]))


def test_pipeline_rows_take_ratios_within_a_round():
    """Round 1 is twice as slow as round 0 in every stage: per-round ratios do not move, raw times do."""
    base = {"backbone": 1.0, "scoring": 0.1, "writing": 0.2, "write_wait": 0.0, "other": 0.05, "loop": 1.15,
            "dataset_pass": 0.3, "backbone_only": 1.0, "startup": 5.0}
    result = {"model": "m", "device": "cpu", "images": 16, "layers": 12, "maps": 7, "img_size": 448,
              "rounds": [base, {k: 2 * v for k, v in base.items()}]}
    rows = {r["stage"]: r for r in bench.pipeline_rows(result)}
    assert rows["scoring"]["vs_min"] == pytest.approx(0.1) and rows["scoring"]["vs_max"] == pytest.approx(0.1)
    assert rows["scoring"]["seconds_min"] == pytest.approx(0.1) and rows["scoring"]["seconds_max"] == pytest.approx(0.2)
    assert rows["outside_backbone"]["vs_backbone"] == pytest.approx(0.15)
    assert rows["e2e_rate_vs_backbone_only"]["vs_backbone"] == pytest.approx(1 / 1.15)
    text = bench.projection(result, images=1700)
    # startup (median 7.5 s) + 1700 x (median loop 1.725 + median dataset pass 0.45) = 3705 s
    assert "1:01:45" in text and "1,700-image" in text


def test_capture_quick_prints_every_variant_with_finite_ratios(tmp_path):
    proc = _bench(["--quick", "--out", str(tmp_path / "bench.csv")], tmp_path)
    rows = _table(proc.stdout, bench.CAPTURE_COLUMNS)
    assert [r[3] for r in rows] == list(bench.VARIANTS)
    for r in rows:
        assert r[-1] == "ok", r
        ratio, low, high = (float(v) for v in r[6:9])
        assert all(math.isfinite(v) and v > 0 for v in (ratio, low, high)) and low <= ratio <= high
    assert [r[6] for r in rows][0] == "1.00"  # plain is the baseline of every round
    with open(tmp_path / "bench.csv") as f:
        saved = list(csv.DictReader(f))
    assert [r["variant"] for r in saved] == list(bench.VARIANTS) and all(int(r["rounds"]) == 2 for r in saved)


@pytest.mark.slow
def test_pipeline_quick_prints_every_stage_and_a_projection(tmp_path):
    proc = _bench(["--pipeline", "--quick", "--device", "cpu", "--out", str(tmp_path / "pipe.csv")], tmp_path)
    rows = _table(proc.stdout, bench.PIPELINE_COLUMNS)
    stages = [r[2] for r in rows]
    assert stages == [*bench.STAGES, "backbone_only", "outside_backbone", "e2e_rate_vs_backbone_only"]
    for r in rows:
        ratio, low, high = (float(v) for v in r[-3:])
        assert all(math.isfinite(v) and v >= 0 for v in (ratio, low, high)) and low <= ratio <= high, r
    assert "time outside the backbone is" in proc.stdout
    assert "projection: tiny_vit on cpu: a 1,700-image study (2 layers x 3 maps at 64 px)" in proc.stdout
