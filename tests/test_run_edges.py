"""Edges of runs, data, scoring and reports: ids that never collide, NaN maps, a category called ``all``, folders
with nothing readable, unwritable or non-ASCII output folders, report options that do not fit, shared memory
that cannot be sized, odd names in Markdown."""
from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from layerscope.cli.report import main as report_main
from layerscope.cli.rescore import main as rescore_main
from layerscope.data.folder import Folder
from layerscope.data.handover import SHM, no_leftover_segments
from layerscope.data.ids import path_id, safe_name
from layerscope.heldout import choose
from layerscope.protocol import dataset_metrics, write_dataset_metrics
from layerscope.results import catalog, layout
from layerscope.analysis.pool import build_pool
from layerscope.analysis.leaderboard import dataset_markdown, md, rank_dataset, to_markdown
from layerscope.scoring import NONFINITE_NOTE, ScoreOptions, Target, image_rows
from layerscope.scoring import batch_image_rows

from .conftest import ROOT, SMALL_RUN, call_main, run_main

TINY = ["model=tiny_vit", "progress=false", "figures.grid=false"]


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith(("error: ", "warning: "))]


def one_error(proc) -> str:
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def save_png(path: Path, value: int = 90, size: tuple[int, int] = (32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.full((*size, 3), value, np.uint8)
    rgb[: size[0] // 2, : size[1] // 3] = 255 - value  # some structure
    Image.fromarray(rgb).save(path)


def save_mask(path: Path, box: tuple[int, int, int, int] | None, size: tuple[int, int] = (32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros(size, np.uint8)
    if box is not None:
        m[box[0]:box[1], box[2]:box[3]] = 255
    Image.fromarray(m).save(path)


# ------------------------------------------------------------------------------------------- 1: image ids


def test_path_ids_are_injective_over_every_small_path():
    """Every path of up to three parts over names full of underscores: no two share an id (the rule is checked by
    brute force, not by re-deriving it), and a plain path keeps its plain joined name."""
    names = ["a", "b", "_", "__", "a_", "_a", "a__b", "a_b", "a___b", "sub", "x", "sub__x"]
    paths = [p for n in (1, 2, 3) for p in itertools.product(names, repeat=n)]
    ids = {}
    for p in paths:
        i = safe_name(path_id(p))
        assert i not in ids, (p, ids.get(i))
        ids[i] = p
    assert path_id(("sub", "x")) == "sub__x" and path_id(("a_b",)) == "a_b" and path_id(("cat", "img_1")) == \
        "cat__img_1"
    assert re.fullmatch(r"sub__x-[0-9a-f]{8}", path_id(("sub__x",)))


def test_a_folder_whose_ids_would_still_meet_is_refused_in_one_line(tmp_path):
    for name in ("x.png", "x.tif", "x.png.png"):  # x.png and x.tif keep their suffix: "x.png", as x.png.png's stem
        save_png(tmp_path / name)
    with pytest.raises(ValueError, match=r"x\.png and x\.png\.png both become image id 'x\.png'.*rename one"):
        Folder(str(tmp_path))


@pytest.mark.slow
def test_recursive_folder_keeps_sub_x_and_sub__x_apart(tmp_path):
    root = tmp_path / "imgs"
    save_png(root / "sub" / "x.png", 40)
    save_png(root / "sub__x.png", 200)
    out = tmp_path / "run"
    proc = run_main([*TINY, "data=folder", f"data.root={root}", "data.recursive=true", f"hydra.run.dir={out}"],
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = layout.read_done(out)
    assert len(done) == 2 and len(set(done)) == 2 and "sub__x" in done
    files = layout.map_files(out)
    assert len(files) == 2
    images = {json.loads(bytes(np.load(f)["meta"]).decode())["image"]: np.load(f)["image"] for f in files}
    assert set(images) == set(done)
    assert not np.array_equal(*images.values())  # two images, both kept
    rows = pd.read_csv(out / "results.csv")
    assert rows.groupby("image").size().nunique() == 1 and rows["image"].nunique() == 2


# ------------------------------------------------------------------------------------------- 3: NaN maps


def _targets(g: torch.Generator) -> list[Target | None]:
    mask = torch.zeros(28, 28, dtype=torch.bool)
    mask[4:12, 6:15] = True
    mask |= torch.rand(28, 28, generator=g) > 0.97
    return [Target(mask), None, Target(mask.clone())]


def _rows_equal(a: list[dict], b: list[dict]) -> bool:
    def same(x, y):
        if x is None or y is None:
            return x is None and y is None
        if isinstance(x, float) and isinstance(y, float):
            return (math.isnan(x) and math.isnan(y)) or x == y
        return x == y
    return len(a) == len(b) and all(set(r) == set(s) and all(same(r[k], s[k]) for k in r) for r, s in zip(a, b))


def test_a_non_finite_map_gets_empty_columns_and_a_note_in_both_scorers():
    g = torch.Generator().manual_seed(0)
    names = ["0", "1", "2", "mean"]
    maps = {0: torch.rand(3, 4, 7, 7, generator=g), 1: torch.rand(3, 4, 14, 14, generator=g)}
    bad = {k: v.clone() for k, v in maps.items()}
    bad[0][0, 1] = float("nan")  # a whole map NaN
    bad[1][2, 0, 3, 3] = float("inf")  # one infinite cell
    bad[1][0, 3, 0, 0] = float("-inf")
    targets = _targets(g)
    metas = [{"image": f"im{i}"} for i in range(3)]
    opts = ScoreOptions([0.3, 0.6], pointing_tolerance=2)
    extras = [{0: {"deletion_auc": torch.arange(4.0)}}, None, None]
    batch = batch_image_rows(metas, bad, {0: names, 1: names}, targets, opts, extras)
    single = [image_rows(metas[b], {k: v[b] for k, v in bad.items()}, {0: names, 1: names}, targets[b], opts,
                         extras[b]) for b in range(3)]
    assert all(_rows_equal(x, y) for x, y in zip(batch, single))  # the run's scorer and rescore's: the same rows
    clean = batch_image_rows(metas, maps, {0: names, 1: names}, targets, opts, extras)
    flagged = {(0, 0, "1"), (2, 1, "0"), (0, 1, "mean")}
    metric_columns = [c for c in (*catalog.PER_IMAGE, "deletion_auc", "pointing_tol")]
    for b in range(3):
        for row, ref in zip(batch[b], clean[b]):
            head = row["best_head"] if row["head"] == "best" else row["head"]
            if (b, row["layer"], head) in flagged:
                assert row["notes"] == NONFINITE_NOTE and row["head"] != "best"
                assert all(math.isnan(row.get(c, math.nan)) for c in metric_columns), row  # undefined: NaN
            elif row["head"] == "best":  # the best among the finite heads
                same = [r for r in batch[b] if r["layer"] == row["layer"] and r["threshold"] == row["threshold"]]
                finite = [r for r in same if r["head"] not in ("best", "mean") and r["notes"] != NONFINITE_NOTE]
                assert row["iou"] == max(r["iou"] for r in finite)
                twin = next(r for r in finite if r["head"] == row["best_head"])
                assert _rows_equal([dict(row, head=twin["head"], best_head=None)], [dict(twin, best_head=None)])
            else:  # every other map is scored as before
                assert _rows_equal([row], [ref]), (b, row["layer"], row["head"])
    # an all-NaN map scored alone (ls.score's path) is no number either
    alone = image_rows({}, {0: torch.full((1, 5, 5), float("nan"))}, {0: ["x"]}, targets[0], opts)
    assert all(math.isnan(r["auroc"]) and math.isnan(r["aupro"]) and math.isnan(r["iou_oracle"]) for r in alone)


@pytest.fixture
def nan_run(small_run, tmp_path) -> Path:
    """A copy of the session's small run where one map of one image is NaN and one cell of another map infinite."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    files = layout.map_files(run)
    for path, (layer, k, where) in zip(files[:2], [(1, 0, np.s_[:]), (0, 1, np.s_[2, 3])]):
        with np.load(path) as z:
            arrays = {key: z[key] for key in z.files}
        arrays[f"layer_{layer}"][k][where] = np.nan if layer == 1 else np.inf
        np.savez(path, **arrays)
    return run


def test_maps_with_nan_are_rescored_and_pooled_without_a_number(nan_run):
    code = call_main(rescore_main, [str(nan_run), "threshold=[0.5]"])
    assert code.returncode == 0, code.stderr[-2000:]
    rescored = pd.read_csv(nan_run / "results_rescored.csv")
    bad = rescored[rescored["notes"] == NONFINITE_NOTE]
    assert len(bad) == 2 and bad[["auroc", "aupro", "iou", "entropy", "score_max"]].isna().all().all()
    pool = build_pool(nan_run)
    try:
        assert sorted(pool.nonfinite.values()) == [1, 1]
        table = dataset_metrics(pool, n_boot=5)
        flagged = table[table["notes"].str.startswith("map has NaN/inf", na=False)]
        assert len(flagged) == 2 * 3 and flagged[["pixel_auroc", "aupro", "pixel_ap", "image_auroc"]].isna().all().all()
        assert (flagged["notes"] == "map has NaN/inf values in 1 image: every metric undefined").all()
        others = table[~table["notes"].str.startswith("map has NaN/inf", na=False)]
        assert others[others["category"] == "all"]["pixel_auroc"].notna().all()
        result = choose(pool, "aupro", 0.5, n_boot=5, n_stability=5)
        chosen = pool.candidates[(pool.candidates["layer"] == result["chosen"]["layer"])
                                 & (pool.candidates["head"] == result["chosen"]["head"])].index[0]
        assert chosen not in pool.nonfinite
        assert all(not any(s["layer"] == pool.candidates.loc[c, "layer"] and s["head"] == pool.candidates.loc[c, "head"]
                           for c in pool.nonfinite) for s in result["stability"])
    finally:
        pool.close()
    report = call_main(report_main, [str(nan_run), "--protocol", "dataset", "--boot", "5"])
    assert report.returncode == 0 and not error_lines(report.stderr), report.stderr[-2000:]


@pytest.mark.slow
def test_a_checkpoint_with_a_nan_weight_finishes_and_counts_its_maps(tmp_path):
    from safetensors.torch import save_file

    from layerscope.plan import build

    from .conftest import compose

    bb = build(compose("model=tiny_vit").model)
    state = {k: v.clone().contiguous() for k, v in bb.model.state_dict().items()}
    state["blocks.1.attn.qkv.weight"][0, 0] = float("nan")  # head 0 of the last block, and the mean over heads
    save_file(state, str(tmp_path / "nan.safetensors"))
    out = tmp_path / "run"
    proc = run_main([*SMALL_RUN, "model.pretrained=true", "model.weights.source=file",
                     f"model.weights.path={tmp_path / 'nan.safetensors'}", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / layout.SUMMARY).read_text())
    rows = pd.read_csv(out / "results.csv")
    bad = rows[rows["notes"] == NONFINITE_NOTE]
    assert summary["complete"] and summary["nonfinite_maps"] == 6 * 2  # 6 images x (head 0, mean) of layer 1
    assert set(zip(bad["layer"], bad["head"])) == {(1, "0"), (1, "mean")}
    assert bad[["auroc", "aupro", "iou_oracle", "iou", "entropy"]].isna().all().all()
    assert rows.loc[rows["layer"] == 0, "auroc"].notna().any()
    assert "have NaN/inf values" in proc.stdout + proc.stderr
    dm = pd.read_csv(out / layout.DATASET_METRICS)
    assert dm.loc[(dm["layer"] == 1) & (dm["head"].astype(str) == "0"), "aupro"].isna().all()
    # the study's table (image scores and NaN maps from its scorer's rows) is the pass over its saved maps
    again = tmp_path / "again"
    shutil.copytree(out, again)
    (again / layout.DATASET_METRICS).unlink()
    write_dataset_metrics(again, n_boot=0)
    assert (again / layout.DATASET_METRICS).read_text() == (out / layout.DATASET_METRICS).read_text()


# ------------------------------------------------------------------------------------------- 6, 22: categories


def _category_folder(tmp_path: Path) -> tuple[Path, Path]:
    """Three categories (``all``, ``scratch``, ``good``) of three 32 px images each, with masks."""
    root, masks = tmp_path / "imgs", tmp_path / "masks"
    for c, category in enumerate(("all", "scratch", "good")):
        for i in range(3):
            save_png(root / category / f"{category}{i}.png", 60 + 40 * i + 10 * c)
            save_mask(masks / category / f"{category}{i}.png",
                      None if category == "good" else (4 + 3 * i, 14 + 3 * i, 5 + 2 * c, 20))
    return root, masks


@pytest.mark.slow
def test_a_category_called_all_stays_apart_from_the_aggregate(tmp_path):
    root, masks = _category_folder(tmp_path)
    out = tmp_path / "run"
    proc = run_main([*TINY, "data=folder", f"data.root={root}", f"data.mask_dir={masks}", "data.recursive=true",
                     f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(pd.read_csv(out / "results.csv")["category"]) == {"all", "scratch", "good"}  # the data as it is
    report = call_main(report_main, [str(out), "--boot", "50"])
    assert report.returncode == 0, report.stderr[-3000:]
    per_image = pd.read_csv(out / "report_auroc.csv")
    assert not per_image.duplicated(["category", *catalog.CANDIDATE]).any()
    n = per_image.groupby("category")["n"].max().to_dict()
    assert n == {"all_": 3, "scratch": 3, catalog.AGGREGATE: 6}  # good images have no defect: no AUROC
    dm = pd.read_csv(out / layout.DATASET_METRICS)
    assert not dm.duplicated(["category", *catalog.CANDIDATE]).any()
    images = dm.groupby("category")["n_images"].max().to_dict()
    assert images == {"all_": 6, "scratch": 6, catalog.AGGREGATE: 9}  # a defect type pooled with the good images
    with_ci = dm.dropna(subset=["aupro_ci_low"])
    assert len(with_ci) and (with_ci["category"] == catalog.AGGREGATE).all()
    inside = (with_ci["aupro_ci_low"] <= with_ci["aupro"] + 1e-9) & (with_ci["aupro"] <= with_ci["aupro_ci_high"] + 1e-9)
    assert inside.all(), with_ci[["layer", "head", "aupro", "aupro_ci_low", "aupro_ci_high"]]
    printed = re.findall(r"\| (\d\.\d{3}) \[(\d\.\d{3}), (\d\.\d{3})\] \|",
                         (out / "report_dataset_pixel_auroc.md").read_text())
    assert printed
    for value, low, high in printed:  # as printed: each value inside its own interval
        assert float(low) <= float(value) <= float(high), (value, low, high)


def test_data_categories_never_read_as_the_aggregate():
    names = ["all", "all_", "all__", "All", "good", "ball", "all x", ""]
    shown = [catalog.data_category(n) for n in names]
    assert catalog.AGGREGATE not in shown and len(set(shown)) == len(names)
    assert shown[-4:] == ["good", "ball", "all x", ""]


def test_markdown_keeps_a_newline_category_on_its_heading_and_says_undefined():
    assert md("line one\nline two\r") == "line one\\nline two\\r"
    table = pd.DataFrame([{"category": "a\nb", "model": "m", "method": "x", "layer": 0, "head": "0", "mean": float("nan"),
                           "ci_low": float("nan"), "ci_high": float("nan"), "n": 3, "rank": 1}])
    text = to_markdown(table, 5)
    assert "## a\\nb" in text and "\n## a\n" not in text and "nan" not in text and "| undefined |" in text
    pooled = pd.DataFrame([{"category": "x\ny", "model": "m", "method": "x", "layer": 0, "head": "0",
                            "pixel_auroc": 0.5, "aupro": 0.4, "pixel_ap": float("nan"), "pixel_f1_max": 0.2,
                            "image_auroc": float("nan"), "aupro_ci_low": 0.3, "aupro_ci_high": 0.5, "n_images": 4,
                            "n_defect_images": 2}])
    text = dataset_markdown(rank_dataset(pooled, "aupro"), 5)
    assert "## x\\ny" in text and "nan" not in text.lower().replace("undefined", "")
    assert "0.400 [0.300, 0.500]" in text and text.count("undefined") == 2


def test_report_through_the_command_line_on_a_newline_category(small_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    results = pd.read_csv(run / "results.csv")
    results.loc[results["category"] == "scratch", "category"] = "scr\natch"
    results.to_csv(run / "results.csv", index=False)
    proc = call_main(report_main, [str(run), "--protocol", "per_image", "--boot", "20"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (run / "report_auroc.md").read_text()
    assert "## scr\\natch" in text and not any(line == "atch" for line in text.splitlines())


# ------------------------------------------------------------------------------------------- 13, 22: unreadable


def test_a_folder_of_unreadable_files_exits_2_listing_why(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    (root / "gone.png").symlink_to(tmp_path / "nowhere.png")
    out = tmp_path / "run"
    proc = run_main([*TINY, "data=folder", f"data.root={root}", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 2
    line = one_error(proc)
    assert "no image could be read (3 skipped)" in line
    for name, why in (("empty.png", "empty file"), ("text.png", "not a readable image"),
                      ("gone.png", "dangling symbolic link")):
        assert name in line and why in line, line
    assert not (out / layout.SUMMARY).exists()


def test_an_error_inside_a_run_is_one_line_on_the_console_and_recorded_in_the_log_file(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()  # no image: the dataset refuses it once the run has its folder
    out = tmp_path / "run"
    proc = run_main([*TINY, "data=folder", f"data.root={root}", f"hydra.run.dir={out}"], cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"error: data.root={root}: no images"), lines[0]
    assert "no images" not in proc.stdout, proc.stdout[-3000:]  # the console's log lines: not again there
    logged = [line for line in (out / layout.LOG).read_text().splitlines() if "[ERROR]" in line]
    assert len(logged) == 1 and logged[0].endswith(lines[0]), logged


def test_a_crash_inside_a_sweep_job_is_one_line_on_the_console_its_traceback_in_the_jobs_log(tmp_path, monkeypatch):
    from layerscope import study

    def crash(cfg, out_dir, on_accept=None):
        on_accept(True)  # the folder is the job's: its log file records from here on
        raise RuntimeError("boom inside the run")

    monkeypatch.setattr(study, "run", crash)
    sweep = tmp_path / "sweep"
    proc = run_main(["-m", *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    job_log = sweep / "0" / layout.LOG
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == f"error: RuntimeError: boom inside the run (traceback in {job_log})", proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert "Traceback" not in console and console.count("boom inside the run") == 2  # and the sweep's closing list
    logged = job_log.read_text()
    assert "Traceback" in logged and logged.count("RuntimeError: boom inside the run") == 2  # traceback, error line


def test_summary_counts_scored_images_and_lists_odd_entries_as_skipped(tmp_path):
    root = tmp_path / "imgs"
    save_png(root / "a.png", 50)
    save_png(root / "b.png", 150)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n")
    (root / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (root / "folder.png").mkdir()
    os.mkfifo(root / "pipe.png")
    out = tmp_path / "run"
    proc = run_main([*TINY, "data=folder", f"data.root={root}", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / layout.SUMMARY).read_text())
    assert summary["images"] == 2 and summary["skipped"] == 4 and len(summary["skipped_images"]) == 4
    listed = " ".join(summary["skipped_images"])
    for name, why in (("gone.png", "a dangling symbolic link"), ("folder.png", "a folder"),
                      ("pipe.png", "a FIFO"), ("broken.png", "")):
        assert f"{root / name}: {why}" in listed, listed
    assert set(pd.read_csv(out / "results.csv")["image"]) == {"a", "b"}


# ------------------------------------------------------------------------------------------- 14, 15: output folders


UNPRIVILEGED = """
import contextlib, io, json, sys
from layerscope.cli.run import main
out = []
for args in json.loads(sys.argv[1]):
    sys.argv, err = ["layerscope", *args], io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


def _as_unprivileged(runs: list[list[str]], cwd: Path) -> list[tuple[int, str]]:
    """``layerscope ARGS`` for each ARGS of ``runs`` (in one process), without the right to write where the
    permissions say no: root drops CAP_DAC_OVERRIDE (``setpriv``); any other user has no such right anyway.

    Returns:
        (exit code, stderr) per run.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root can write anywhere, and setpriv is not there to drop that right")
        prefix = ["setpriv", "--bounding-set=-dac_override", "--inh-caps=-dac_override"]
    proc = subprocess.run([*prefix, sys.executable, "-c", UNPRIVILEGED, json.dumps(runs)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(r) for r in json.loads(proc.stdout.splitlines()[-1])]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"" for p in sorted(folder.rglob("*"))}


@pytest.mark.slow
def test_read_only_output_folders_are_one_line_and_nothing_is_written(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    existing, log_only = tmp_path / "old_run", tmp_path / "log_only"
    for run in (existing, log_only):
        run.mkdir()
        (run / "run.log").write_text("an earlier run\n")
        (run / "results.csv").write_text("image\n")
    before = _tree(tmp_path)
    locked.chmod(0o555)
    existing.chmod(0o555)
    for run in (existing, log_only):
        (run / "run.log").chmod(0o444)
    cases = ((locked / "new" / "run", f"cannot write into {locked} "), (existing, f"cannot write into {existing} "),
             (log_only, f"cannot write {log_only / 'run.log'} "))
    try:
        answers = _as_unprivileged([[*SMALL_RUN, f"hydra.run.dir={out}"] for out, _ in cases], tmp_path)
        for (out, named), (code, stderr) in zip(cases, answers):
            assert code == 2, stderr[-3000:]
            line = one_error(subprocess.CompletedProcess([], code, "", stderr))
            assert line.startswith(f"error: hydra.run.dir={out}: {named}") and \
                "choose a folder you can write" in line, line
    finally:
        locked.chmod(0o755)
        existing.chmod(0o755)
    assert _tree(tmp_path) == before


@pytest.mark.slow
def test_non_ascii_paths_in_overrides_are_accepted(tmp_path):
    root = tmp_path / "bïlder ü"
    save_png(root / "a.png")
    out = tmp_path / "résultats"
    proc = run_main([*TINY, "data=folder", f"data.root={root}", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / layout.SUMMARY).exists() and not (tmp_path / "outputs").exists()
    assert json.loads((out / layout.SUMMARY).read_text())["images"] == 1


def test_non_ascii_that_cannot_be_quoted_for_you_gets_hydras_quoting(tmp_path):
    # a list, and a sweep of one of Hydra's own keys (which Hydra would have answered with its lexer's traceback)
    for args in (["data.defects=[ünï]", f"hydra.run.dir={tmp_path / 'run'}"], [f"hydra.run.dir={tmp_path / 'a,ünï'}"]):
        proc = run_main([*TINY, *args], cwd=tmp_path)
        assert proc.returncode == 2
        line = one_error(proc)
        assert line.startswith("error: cannot read the overrides") and "inside its own quotes" in line and \
            """'data.defects=["ünï"]'""" in line, line
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------- 19, 20: report


def test_report_metric_without_a_dataset_form_writes_the_per_image_report_and_says_so(small_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    for old in [*run.glob("report_*"), *run.glob("choice_*")]:  # what other tests' reports left in the shared run
        old.unlink()
    before = _tree(run)
    proc = call_main(report_main, [str(run), "--metric", "iou", "--boot", "20"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "note: --metric iou has no dataset-level form: only the per-image report is written" in proc.stderr
    assert (run / "report_iou.csv").exists() and not list(run.glob("report_dataset_*"))
    assert (run / layout.DATASET_METRICS).read_bytes() == before[layout.DATASET_METRICS]
    pixel_ap = call_main(report_main, [str(run), "--metric", "pixel_ap", "--boot", "5"])
    assert pixel_ap.returncode == 0 and "has no per-image form" in pixel_ap.stderr
    assert (run / "report_dataset_pixel_ap.csv").exists() and not (run / "report_pixel_ap.csv").exists()
    after = _tree(run)
    for metric in ("nonsense", "iou"):
        args = [str(run), "--metric", metric] + (["--calibration", "0.5"] if metric == "iou" else [])
        bad = call_main(report_main, args)
        assert bad.returncode == 2 and re.search(r"--(metric nonsense: expected one of|calibration: the held-out)",
                                                 one_error(bad))
    assert _tree(run) == after  # checked before anything is written


def test_report_on_a_foreign_results_csv_is_one_line(tmp_path):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "results.csv").write_text("name,score\nx,1\n")
    for protocol in ("both", "per_image"):
        proc = call_main(report_main, [str(folder), "--protocol", protocol])
        assert proc.returncode == 2
        assert "results.csv" in one_error(proc)


# ------------------------------------------------------------------------------------------- 21: shared memory


def test_shared_memory_files_of_a_failed_block_are_removed(tmp_path):
    if not SHM.is_dir():
        pytest.skip("no /dev/shm")
    kept = SHM / f"torch_{os.getpid()}_kept_by_test"
    kept.write_bytes(b"")
    made = SHM / f"torch_{os.getpid()}_made_by_test"
    try:
        with pytest.raises(RuntimeError, match="unable to resize"):
            with no_leftover_segments():
                made.write_bytes(b"")  # as torch leaves it when sizing fails
                raise RuntimeError("unable to resize file to the right size")
        assert not made.exists() and kept.exists()
    finally:
        kept.unlink(missing_ok=True)
        made.unlink(missing_ok=True)


@pytest.mark.slow
def test_a_run_under_a_file_size_limit_leaves_no_shared_memory_files(tmp_path):
    if not SHM.is_dir():
        pytest.skip("no /dev/shm")
    import resource
    import signal

    def limit() -> None:  # a block of shared slots cannot be sized; the run's own files are small
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 19, 1 << 19))

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "layerscope.cli.run", *SMALL_RUN, "num_workers=auto",
                             "batch_size=8", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env,
                            preexec_fn=limit, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert not list(SHM.glob(f"torch_{proc.pid}_*"))
