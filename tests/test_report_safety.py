"""Reading saved results safely: edited or missing map files, undefined pooled metrics and option checks of
``layerscope-report`` and ``layerscope-rescore``, each failing in one line that names the file or option."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from layerscope import study
from layerscope.figures.score_plots import dataset_vs_layer
from layerscope.cli.report import main as report_main
from layerscope.config.schema import MetricsOptions
from layerscope.rescoring import OPTIONS
from layerscope.cli.rescore import main as rescore_main
from layerscope.results import layout
from layerscope.results.maps_io import load_maps
from layerscope.analysis.pool import build_pool

from .conftest import ROOT

EDITED = "brick_scratch_0"


@pytest.fixture
def run_dir(small_run):
    """A finished 6-image run (4 defective, 2 good) with saved maps; tests edit copies of it."""
    return small_run


def copy_run(run_dir, dst):
    shutil.copytree(run_dir, dst)
    return dst


def rewrite(path, edit):
    """Apply ``edit(arrays, meta)`` to a saved-maps file, as a user editing it with numpy would."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    edit(arrays, meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez_compressed(path, **arrays)


def call(tool, args):
    """(exit code, stdout, stderr) of a command's ``main`` run in-process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = tool([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def cli(module: str, args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


# ------------------------------------------------------------------------------------- edited map files


def _extra_layer(a, m):
    a["layer_99"] = a["layer_0"]


def _short_names(a, m):
    m["names"]["0"] = m["names"]["0"][:2]


def _flat_map(a, m):
    a["layer_0"] = a["layer_0"][0]


def _small_mask(a, m):
    a["mask"] = a["mask"][::2, ::2]


def _smaller_grid(a, m):
    a["layer_0"] = np.ascontiguousarray(a["layer_0"][:, :4, :4])


def _smaller_image(a, m):  # consistent within the file, not with the run
    a["image"], a["mask"] = a["image"][::2, ::2], a["mask"][::2, ::2]


def _float_mask(a, m):
    a["mask"] = a["mask"].astype(np.float32)


EDITS = {  # edit -> what the one-line error must say
    "extra_layer_99": (_extra_layer, "maps of layers [0, 1, 99] but names for layers [0, 1]"),
    "names_shorter_than_K": (_short_names, "layer_0 holds 3 maps but 2 names"),
    "2d_map": (_flat_map, "layer_0 is float32 (8, 8), expected float maps (K, h, w)"),
    "32px_mask_in_64px_run": (_small_mask, "mask is bool (32, 32), expected bool (64, 64)"),
    "other_grid": (_smaller_grid, "layer_0 of shape (3, 4, 4), expected (3, 8, 8) as in brick_good_0.npz"),
    "other_input_size": (_smaller_image, "image (32, 32, 3), expected (64, 64, 3) as in brick_good_0.npz"),
    "float_mask": (_float_mask, "mask is float32 (64, 64), expected bool"),
}


@pytest.mark.parametrize("kind", list(EDITS))
def test_an_edited_map_file_is_refused_in_one_line_naming_it(run_dir, tmp_path, kind):
    edit, expected = EDITS[kind]
    run = copy_run(run_dir, tmp_path / "run")
    rewrite(layout.map_file(run, EDITED), edit)
    before = (run / layout.DATASET_METRICS).read_bytes()
    for tool, args in ((report_main, [run, "--protocol", "dataset", "--boot", 5]),
                       (rescore_main, [run, "threshold=[0.5]"])):
        code, _, err = call(tool, args)
        line = error_line(err)
        assert code == 2 and f"{layout.map_file(run, EDITED)}: " in line and expected in line, line
    assert (run / layout.DATASET_METRICS).read_bytes() == before  # nothing written over
    assert not (run / "results_rescored.csv").exists() and not (run / "results_rescored.partial.csv").exists()


@pytest.mark.slow
def test_an_edited_map_file_through_the_command_line(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    rewrite(layout.map_file(run, EDITED), _extra_layer)
    for module in ("layerscope.cli.report", "layerscope.cli.rescore"):
        args = [run, "--protocol", "dataset"] if module == "layerscope.cli.report" else [run, "threshold=[0.5]"]
        proc = cli(module, args, tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"{EDITED}.npz: maps of layers [0, 1, 99]" in error_line(proc.stderr)


def test_the_untouched_files_still_load_and_pool(run_dir):
    d = load_maps(layout.map_file(run_dir, EDITED))
    assert set(d["maps"]) == {0, 1} and d["names"][0] == ["0", "1", "mean"] and d["mask"].shape == (64, 64)
    pool = build_pool(run_dir)
    try:
        assert len(pool.images) == 6 and set(pool.images["category"]) == {"good", "scratch", "spot"}
        masks = [load_maps(p)["mask"] for p in layout.map_files(run_dir)]
        assert pool.images["defect_pixels"].sum() == sum(int(m.sum()) for m in masks)
        assert pool.images["normal_pixels"].sum() == sum(int((~m).sum()) for m in masks)
    finally:
        pool.close()


# ------------------------------------------------------------------------------------- missing maps


def test_pooling_fewer_images_than_the_run_scored_warns_naming_them(run_dir, tmp_path, caplog):
    run = copy_run(run_dir, tmp_path / "run")
    layout.map_file(run, EDITED).unlink()
    with caplog.at_level(logging.WARNING, logger="layerscope.analysis.pool"):
        pool = build_pool(run)
    pool.close()
    assert len(pool.images) == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 of the 6 images the run scored have no saved maps" in warnings[0]
    assert warnings[0].endswith(f"left out: {EDITED}; rerun the run to rebuild them")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="layerscope.analysis.pool"):
        build_pool(run_dir).close()  # nothing missing: no warning
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.slow
def test_the_missing_map_warning_through_the_command_line(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    layout.map_file(run, EDITED).unlink()
    proc = cli("layerscope.cli.report", [run, "--protocol", "dataset", "--boot", 5], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "have no saved maps" in line]
    assert len(lines) == 1 and EDITED in lines[0] and "1 of the 6 images" in lines[0]


# ------------------------------------------------------------------------------------- undefined metrics


def _masks(run, value: bool | None, category: str | None = None):
    """Set every mask to all-False (``value`` False), all-True (True); optionally every category."""
    def edit(a, m):
        a["mask"] = np.full_like(a["mask"], value)
        if category is not None:
            m["category"] = category
    for path in layout.map_files(run):
        rewrite(path, edit)


@pytest.mark.parametrize("case,value,category,reason", [
    ("defects_vanished", False, None, "no defect pixels"),
    ("all_good", False, "good", "no defect pixels"),
    ("whole_image_masks", True, None, "no normal pixels"),
])
def test_undefined_pooled_metrics_are_reported_and_the_report_goes_on(run_dir, tmp_path, caplog, case, value,
                                                                      category, reason):
    run = copy_run(run_dir, tmp_path / "run")
    _masks(run, value, category)
    for metric in ("auroc", "aupro"):
        code, out, err = call(report_main, [run, "--protocol", "dataset", "--boot", 5, "--metric", metric])
        assert code == 0, err
        name = "pixel_auroc" if metric == "auroc" else metric
        assert f"## all\n\nPooled `{name}` undefined: {reason}." in out
        assert "nan" not in (run / f"report_dataset_{name}.md").read_text()
    table = pd.read_csv(run / layout.DATASET_METRICS)
    assert table["pixel_auroc"].isna().all() and table["aupro"].isna().all()
    assert table["notes"].str.contains(f"undefined: {reason}").all()
    if value:  # whole-image masks: every image defective, so image AUROC has no negatives
        assert table["notes"].str.contains("image_auroc undefined: no defect-free images").all()
        assert table["pixel_ap"].notna().all()  # AP needs defect pixels only: still ranked
    # the run's own log line says why rather than "best AUPRO nan"
    cfg = OmegaConf.create({"dataset_metrics": True, "save_maps": True, "seed": 0})
    with caplog.at_level(logging.INFO, logger="layerscope"):
        study.dataset_pass(cfg, run)
        text = " ".join(r.getMessage() for r in caplog.records if r.name == "layerscope.study")
        assert f"AUPRO undefined: {reason}" in text and "nan" not in text
        # the figure of pooled metrics against layer skips, with a one-line reason, instead of stopping
        assert dataset_vs_layer(run, tmp_path / "figs", formats=["png"]) == []
    assert any("dataset_vs_layer: pixel_auroc undefined for every map" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_undefined_pooled_metrics_through_the_command_line(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    _masks(run, False)
    proc = cli("layerscope.cli.report", [run, "--protocol", "dataset", "--boot", 5], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Pooled `pixel_auroc` undefined: no defect pixels." in proc.stdout and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------- option checks


@pytest.mark.parametrize("args,line", [
    (["--boot", "0"], "error: --boot 0: expected an int >= 1"),
    (["--boot", "-5"], "error: --boot -5: expected an int >= 1"),
    (["--stability", "-1"], "error: --stability -1: expected an int >= 0"),
    (["--top", "-1"], "error: --top -1: expected an int >= 1"),
    (["--calibration", "0.5", "--cost-miss", "100", "--cost-false-alarm", "-5"],
     "error: --cost-false-alarm -5: expected a finite cost >= 0 per part"),
    (["--calibration", "0.5", "--cost-miss", "inf", "--cost-false-alarm", "2"],
     "error: --cost-miss inf: expected a finite cost > 0 per part"),
    (["--calibration", "0.5", "--cost-miss", "nan", "--cost-false-alarm", "2"],
     "error: --cost-miss nan: expected a finite cost > 0 per part"),
    (["--calibration", "0.5", "--cost-miss", "0", "--cost-false-alarm", "2"],
     "error: --cost-miss 0: expected a finite cost > 0 per part"),
    (["--calibration", "0.5", "--target-fpr", "-0.1"], "error: --target-fpr -0.1: expected a share in [0, 1]"),
    (["--calibration", "0.5", "--target-fpr", "2"], "error: --target-fpr 2: expected a share in [0, 1]"),
    (["--calibration", "0.5", "--target-fpr", "nan"], "error: --target-fpr nan: expected a share in [0, 1]"),
    (["--calibration", "0.5", "--cost-miss", "1", "--cost-false-alarm", "1", "--defect-rate", "1.5"],
     "error: --defect-rate 1.5: expected a share in [0, 1]"),
])
def test_report_options_out_of_range_exit_2_in_one_line(run_dir, args, line):
    code, out, err = call(report_main, [run_dir, "--protocol", "dataset", *args])
    assert code == 2 and error_line(err) == line and out == ""
    assert not list(run_dir.glob("report_dataset_*")) and not list(run_dir.glob("choice_*"))  # checked first


def test_an_option_out_of_range_through_the_command_line(run_dir, tmp_path):
    proc = cli("layerscope.cli.report", [run_dir, "--boot", "0"], tmp_path)
    assert proc.returncode == 2 and error_line(proc.stderr) == "error: --boot 0: expected an int >= 1"


@pytest.mark.parametrize("text", ['{"calibration": [1, 2]}', "[1, 2, 3]", "{not json", '{"calibration_images": 3}'])
def test_a_calibration_json_that_is_not_a_choice_file_is_refused(run_dir, tmp_path, text):
    foreign = tmp_path / "foreign.json"
    foreign.write_text(text)
    code, _, err = call(report_main, [run_dir, "--protocol", "dataset", "--boot", 5, "--calibration", foreign])
    assert code == 2
    assert error_line(err) == (f"error: --calibration {foreign}: expected a choice_*.json written by "
                               "layerscope-report (with a list of calibration_images)")


# ------------------------------------------------------------------------------------- the held-out choice


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"{name} in a choice file: not strict JSON")
    return json.loads(text, parse_constant=refuse)


def test_without_defect_free_images_the_false_alarm_rate_is_undefined_and_the_json_strict(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    good = [p for p in layout.map_files(run) if "good" in p.stem]
    assert len(good) == 2
    for p in good:
        p.unlink()
    done = [line for line in (run / layout.DONE).read_text().splitlines() if "good" not in line]
    (run / layout.DONE).write_text("".join(line + "\n" for line in done))
    code, out, err = call(report_main, [run, "--protocol", "dataset", "--boot", 20, "--stability", 5,
                                        "--calibration", "0.5", "--cost-miss", "100", "--cost-false-alarm", "2",
                                        "--defect-rate", "0.1"])
    assert code == 0, err
    result = _strict_json((run / "choice_pixel_auroc.json").read_text())
    e = result["economics"]
    assert e["false_alarm_rate"] is None and e["expected_cost_per_part"] is None and e["image_threshold"] is None
    assert e["no_inspection_cost_per_part"] == pytest.approx(0.1 * 100)
    assert result["held_out"]["image_false_alarm_rate"] == {"value": None, "ci": [None, None]}
    md = (run / "choice_pixel_auroc.md").read_text()
    assert "| image_false_alarm_rate | undefined: no defect-free images |" in md
    assert "false-alarm rate undefined: no defect-free images among the calibration images" in md
    assert "false-alarm rate 0.000" not in md and "nan" not in md


def test_a_threshold_that_flags_no_part_has_no_break_even_rate():
    from layerscope.protocol import _economics

    bad = np.array([True, False, True, False])
    scores = np.array([0.1, 0.9, 0.5, 0.4])  # the highest score is a good part: any flag costs a false alarm
    e = _economics(scores, bad, scores, bad, cost_miss=1.0, cost_false_alarm=1000.0, defect_rate=0.01, n_boot=20,
                   rng=np.random.default_rng(0))
    assert e["image_threshold"] == np.inf and e["miss_rate"] == 1 and e["false_alarm_rate"] == 0
    assert e["expected_cost_per_part"] == pytest.approx(0.01) == e["no_inspection_cost_per_part"]
    assert np.isnan(e["break_even_defect_rate"]) and "nan" not in e["verdict"]
    assert e["verdict"].endswith("no break-even defect rate (the threshold flags no part: it costs what no "
                                 "inspection costs).")


def test_a_target_fpr_without_normal_pixels_is_refused_in_one_line(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    _masks(run, True)  # whole-image masks: pixel AP is defined, a pixel FPR is not
    code, _, err = call(report_main, [run, "--protocol", "dataset", "--metric", "ap", "--boot", 5, "--stability", 5,
                                      "--calibration", "0.5", "--target-fpr", "0.1"])
    assert code == 2 and error_line(err).startswith(
        "error: --target-fpr 0.1: the calibration images hold no normal pixel, so the pixel FPR is undefined")
    assert (run / "report_dataset_pixel_ap.md").exists()  # the ranking before the choice is kept


def test_the_choice_json_writes_undefined_and_infinite_numbers_as_null(run_dir, tmp_path):
    from layerscope.protocol import choose, write_choice

    pool = build_pool(run_dir)
    try:
        result = choose(pool, "aupro", 0.5, n_boot=10, n_stability=5)
    finally:
        pool.close()
    result["threshold"] = float("inf")  # what an unreachable --target-fpr gives: predict nothing
    result["held_out"]["pixel_iou"] = {"value": float("nan"), "ci": [float("nan"), float("-inf")]}
    js, md = write_choice(tmp_path, result)
    saved = _strict_json(js.read_text())
    assert saved["threshold"] is None and saved["held_out"]["pixel_iou"] == {"value": None, "ci": [None, None]}
    assert saved["held_out"]["aupro"] == {k: result["held_out"]["aupro"][k] for k in ("value", "ci")}
    assert "threshold inf" in md.read_text() and "| pixel_iou | undefined |  |" in md.read_text()


def test_the_dataset_ranking_names_the_held_out_choice_when_there_is_one(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    assert call(report_main, [run, "--protocol", "dataset", "--boot", 5])[0] == 0
    md = (run / "report_dataset_pixel_auroc.md").read_text()
    assert "use `--calibration` for a held-out estimate" in md and "choice_" not in md
    assert call(report_main, [run, "--protocol", "dataset", "--boot", 5, "--stability", 5, "--calibration",
                              "0.5"])[0] == 0
    md = (run / "report_dataset_pixel_auroc.md").read_text()
    assert "the held-out estimate is in `choice_pixel_auroc.md`" in md and "use `--calibration`" not in md


# ------------------------------------------------------------------------------------- rescoring options


def test_rescore_accepts_every_metrics_option_the_scorer_reads():
    scored = {f"metrics.{f.name}" for f in dataclasses.fields(MetricsOptions)}
    # deletion/insertion and attention distance need the model (rescoring carries the saved distances over)
    model_reruns = {k for k in scored if k.startswith(("metrics.faithfulness", "metrics.attention_distance"))}
    model_reruns |= {"metrics.road", "metrics.road_noise", "metrics.randomisation",  # ROAD, MPRT: the model again
                     "metrics.randomisation_seeding", "metrics.random_logit_rule"}
    assert scored - model_reruns == {o for o in OPTIONS if o.startswith("metrics.")}
    readme = (ROOT / "README.md").read_text()
    assert all(f"`{o}`" in readme for o in scored - model_reruns)


def test_rescore_with_a_pointing_tolerance(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    for tolerance in (15, 0, 1000):
        code, _, err = call(rescore_main, [run, f"metrics.pointing_tolerance={tolerance}", "--out",
                                           f"tol{tolerance}.csv"])
        assert code == 0, err
    key = ["image", "layer", "head", "threshold"]
    read = {name: pd.read_csv(run / name, dtype={"head": str}).sort_values(key).reset_index(drop=True)
            for name in ("results.csv", "tol15.csv", "tol0.csv", "tol1000.csv")}
    # the run's own tolerance (15) rescored gives the run's column; 1000 px reaches the mask from anywhere
    pd.testing.assert_series_equal(read["tol15.csv"]["pointing_tol"], read["results.csv"]["pointing_tol"])
    defect = read["tol1000.csv"]["mask_fraction"] > 0
    assert (read["tol1000.csv"].loc[defect, "pointing_tol"] == 1).all()
    assert (read["tol0.csv"]["pointing_tol"].fillna(0) <= read["tol15.csv"]["pointing_tol"].fillna(0)).all()
    assert OmegaConf.load(run / "tol0.config.yaml").metrics.pointing_tolerance == 0
    code, _, err = call(rescore_main, [run, "metrics.pointing_tolerance=-1", "--out", "neg.csv"])
    assert code == 2 and error_line(err) == "error: metrics.pointing_tolerance=-1: expected pixels >= 0"


def test_a_report_cut_while_writing_keeps_the_earlier_report_whole(run_dir, tmp_path, monkeypatch):
    """The report's tables go through a temporary file and a rename: a failure before the rename (a cut, a
    full disk) leaves the earlier report byte for byte, and no half-written table under the report's name."""
    from pathlib import Path

    run = copy_run(run_dir, tmp_path / "run")
    args = [run, "--protocol", "per_image", "--metric", "auroc", "--boot", "20"]
    assert call(report_main, args)[0] == 0
    earlier = {p.name: p.read_bytes() for p in run.glob("report_*")}
    assert {"report_auroc.csv", "report_auroc.md"} <= set(earlier)

    def cut(self, target):
        raise OSError(28, "No space left on device", str(target))

    monkeypatch.setattr(Path, "replace", cut)
    code, _, err = call(report_main, [*args[:-1], "7"])  # another bootstrap: other numbers in the CIs
    assert code == 2 and error_line(err) == (f"error: cannot write {run / 'report_auroc.csv'}: No space left on "
                                             "device; the earlier report is kept")
    assert {p.name: p.read_bytes() for p in run.glob("report_*")} == earlier
