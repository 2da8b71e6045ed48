"""The report page and the figures on a user's own folder of images: nothing overwritten that the page
did not write, two pages at once, names that are HTML, ids that are paths, ids that slug alike, failed
and unfinished sweep jobs shown, one-line errors for outputs that are files."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from layerscope.figures.map_pictures import layer_head_grids
from layerscope.analysis.saved import Study
from layerscope.results.layout import image_stem
from layerscope.results.table import read_table
from layerscope.view import MARKER, REPORT, ViewError, build

from .conftest import ROOT, call_main, compose, run_main
from .test_view import _parse

IDS = ("x=1", "x+1", "x-1")  # three ids the page and the figures used to give one file name
BAD_CATEGORY = "<!--<script>&"


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` (a ``layerscope.cli`` command) as its ``main(argv)`` in this process (exit code,
    stdout, stderr)."""
    import importlib

    return call_main(importlib.import_module(module).main, list(args))


def _one_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def _images(folder: Path, masks: Path | None, names, seed: int = 0) -> None:
    """64 px noise images (each different), with a square defect mask each when ``masks`` is given."""
    rng = np.random.default_rng(seed)
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(folder / f"{name}.png")
        if masks is not None:
            m = np.zeros((64, 64), np.uint8)
            m[8 + 4 * i:30, 10:34] = 255
            (masks / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(m).save(masks / f"{name}_mask.png")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> Path:
    """The README's "your own images" example with a tiny model: ``data=folder data.root=... data.mask_dir=...``,
    through the command's main in this process (images x=1, x+1, x-1: no category, every image with a mask)."""
    base = tmp_path_factory.mktemp("folder")
    parts, masks = base / "parts", base / "parts_masks"
    parts.mkdir()
    masks.mkdir()
    _images(parts, masks, IDS)
    run = base / "run"
    proc = run_main(["model=tiny_vit", "data=folder", f"data.root={parts}", f"data.mask_dir={masks}",
                     "progress=false", f"hydra.run.dir={run}"], cwd=base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


@pytest.fixture
def run_copy(folder_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(folder_run, run)
    return run


# ----------------------------------------------------------------------- the README's folder example


@pytest.mark.slow
def test_readme_folder_example_then_the_page(folder_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(folder_run, run)
    assert read_table(run / "dataset_metrics.csv")["category"].isin(["", "all"]).all()  # "" stays "", never NaN
    proc = _cli("layerscope.cli.view", str(run), "--boot", "50")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(_parse(run / REPORT).data)
    assert sorted(im["id"] for im in data["images"]) == sorted(IDS)
    # three ids, three different pictures: the thumbnails (and the grids) of the three images differ
    thumbs = {im["id"]: (run / unquote(im["thumb"])).read_bytes() for im in data["images"]}
    grids = {im["id"]: (run / unquote(im["s"]["0"]["g"])).read_bytes() for im in data["images"]}
    assert len(set(thumbs.values())) == 3 and len(set(grids.values())) == 3
    assert (run / "report_files" / MARKER).is_file()
    text = (run / REPORT).read_text(encoding="utf-8")
    assert "(1 finished)" in text and "Not every run finished" not in text


def test_table_reader_keeps_names_as_written(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image,group,category,model,head,layer,auroc,threshold_rule\n"
                    "NA,,,m,0,1,0.5,\nnull,g,None,m,mean,2,,keep_mass\nnan,,good,m,1,3,nan,\n")
    t = read_table(path)
    assert t["image"].tolist() == ["NA", "null", "nan"] and t["category"].tolist() == ["", "None", "good"]
    assert t["head"].tolist() == ["0", "mean", "1"] and t["layer"].tolist() == [1, 2, 3]
    assert t["group"].isna().tolist() == [True, False, True]  # an empty group means "the image itself"
    assert t["threshold_rule"].isna().tolist() == [True, False, True]
    assert t["auroc"].dtype == float and t["auroc"].isna().tolist() == [False, True, True]


def test_figures_of_ids_that_slug_alike_are_three_files(folder_run, tmp_path):
    paths = layer_head_grids(folder_run, tmp_path / "figs", formats=("png",), max_images=3)
    assert len(paths) == 3 and len(set(paths)) == 3 and all(p.is_file() for p in paths)
    assert {p.stem.rsplit("_", 1)[-1] for p in paths} == set(IDS)
    assert image_stem("a/b") != image_stem("a_b") and "/" not in image_stem("../../secret")
    assert all(image_stem(i) == i for i in IDS)  # the ids a run writes name their own files


# ----------------------------------------------------------------------- where the page writes


def test_view_out_refuses_what_it_did_not_write_in_one_line(run_copy, tmp_path):
    somewhere = tmp_path / "somewhere"
    (somewhere / "important_files").mkdir(parents=True)
    (somewhere / "important_files" / "thesis.tex").write_text("years of work")
    line = _one_error(_cli("layerscope.cli.view", str(run_copy), "--out", str(somewhere / "important.html")))
    assert "important_files" in line and "not written by layerscope-view" in line
    assert (somewhere / "important_files" / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in somewhere.iterdir()) == ["important_files"]  # no page, no .tmp

    before = (run_copy / "results.csv").read_bytes()
    line = _one_error(_cli("layerscope.cli.view", str(run_copy), "--out", str(run_copy / "results.csv")))
    assert "results.csv" in line and (run_copy / "results.csv").read_bytes() == before

    line = _one_error(_cli("layerscope.cli.view", str(run_copy), "--out", str(somewhere)))
    assert "is a folder" in line
    assert not [p for p in [*run_copy.iterdir(), *somewhere.iterdir()] if ".tmp" in p.name]


def test_view_out_replaces_only_its_own_page(run_copy, tmp_path):
    other = tmp_path / "notes.html"
    other.write_text("<!DOCTYPE html><title>my notes</title>")
    with pytest.raises(ViewError, match="not a page written by layerscope-view"):
        build(run_copy, other, n_boot=20)
    assert other.read_text() == "<!DOCTYPE html><title>my notes</title>"
    with pytest.raises(ViewError, match="expected a file name ending in .html"):
        build(run_copy, run_copy / "maps" / "new.npz", n_boot=20)  # would add a file the tools read as maps
    assert sorted(p.name for p in (run_copy / "maps").iterdir()) == sorted(f"{i}.npz" for i in IDS)

    page = build(run_copy, n_boot=20)  # the default page, then again: its own page and pictures are replaced
    (page.with_name("report_files") / "thumb" / "stale.jpg").write_bytes(b"old picture")
    build(run_copy, n_boot=20)
    assert not (run_copy / "report_files" / "thumb" / "stale.jpg").exists()
    assert (run_copy / "report_files" / MARKER).is_file()
    assert not [p for p in run_copy.iterdir() if ".tmp" in p.name]

    # a page and pictures written before the marker existed are recognised as the page's own
    (run_copy / "report_files" / MARKER).unlink()
    build(run_copy, n_boot=20)
    # ... but a pictures folder holding anything else is not
    (run_copy / "report_files" / MARKER).unlink()
    (run_copy / "report_files" / "mine.txt").write_text("keep")
    with pytest.raises(ViewError, match="report_files exists and was not written"):
        build(run_copy, n_boot=20)
    assert (run_copy / "report_files" / "mine.txt").read_text() == "keep"


def test_a_second_page_writer_waits_for_the_first(run_copy, capsys):
    build(run_copy, n_boot=20)
    stamp = (run_copy / REPORT).stat().st_mtime_ns
    lock = open(run_copy / f".{REPORT}.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)  # another writer holds the page
    done = {}
    worker = threading.Thread(target=lambda: done.update(path=build(run_copy, n_boot=20)))
    worker.start()
    waited = ""
    deadline = time.monotonic() + 300  # only a hang reaches this; the wait itself is an event, not a duration
    while "waiting for another layerscope-view" not in waited and time.monotonic() < deadline:
        waited += capsys.readouterr().err
        time.sleep(0.05)
    assert "waiting for another layerscope-view" in waited
    assert (run_copy / REPORT).stat().st_mtime_ns == stamp and (run_copy / "report_files" / MARKER).is_file()
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    worker.join(300)
    assert done["path"] == run_copy / REPORT and (run_copy / REPORT).stat().st_mtime_ns != stamp


@pytest.mark.slow
def test_two_pages_at_once_through_the_cli_lose_nothing(run_copy):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    procs = [subprocess.Popen([sys.executable, "-m", "layerscope.view", str(run_copy), "--boot", "20"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    data = json.loads(_parse(run_copy / REPORT).data)
    wanted = [run_copy / unquote(im[k]) for im in data["images"] for k in ("thumb", "input")]
    wanted += [run_copy / unquote(s["g"]) for im in data["images"] for s in im["s"].values()]
    assert len(wanted) == 9 and all(p.is_file() for p in wanted)
    assert not [p for p in run_copy.iterdir() if ".tmp" in p.name]


# ----------------------------------------------------------------------- names and ids from the tables


@pytest.fixture(scope="module")
def html_names(tmp_path_factory) -> Path:
    """A recursive folder run whose subfolder (a category) is named like HTML."""
    from layerscope import study

    base = tmp_path_factory.mktemp("names")
    _images(base / "data", None, ["plain", f"{BAD_CATEGORY}/a", f"{BAD_CATEGORY}/b"], seed=1)
    run = base / "run"
    study.run(compose("model=tiny_vit", "data=folder", f"data.root={base / 'data'}", "data.recursive=true",
                      "progress=false", "figures.grid=false"), run)
    return run


def test_names_that_are_html_stay_text_in_the_page_and_the_report(html_names, capsys):
    from layerscope.cli.report import main as report_main

    page = build(html_names, n_boot=20)
    parsed = _parse(page)
    assert not set("<>&") & set(parsed.data)  # nothing in the JSON block can end or comment it out
    data = json.loads(parsed.data)
    assert BAD_CATEGORY in {im["cat"] for im in data["images"]}
    scripts = [a for tag, a in parsed.tags if tag == "script"]
    assert len(scripts) == 2 and scripts[0].get("id") == "data"  # the page's own script still follows
    assert BAD_CATEGORY not in page.read_text(encoding="utf-8")

    assert report_main([str(html_names), "--protocol", "per_image", "--metric", "entropy", "--boot", "20"]) == 0
    md = (html_names / "report_entropy.md").read_text()
    assert "## &lt;!--&lt;script&gt;&amp;" in md and BAD_CATEGORY not in md
    capsys.readouterr()


def test_an_id_that_is_a_path_never_reads_outside_the_run(run_copy, monkeypatch):
    import layerscope.analysis.saved as saved

    secret = run_copy.parent / "secret.npz"  # where maps/../../secret.npz pointed
    shutil.copy(run_copy / "maps" / "x=1.npz", secret)
    outside = run_copy.parent / "elsewhere.npz"
    shutil.copy(run_copy / "maps" / "x+1.npz", outside)
    (run_copy / "maps" / "x+1.npz").unlink()
    (run_copy / "maps" / "x+1.npz").symlink_to(outside)  # a link out of the run folder
    df = pd.read_csv(run_copy / "results.csv", dtype=str, keep_default_na=False)
    df.loc[df["image"] == "x=1", ["image", "group"]] = "../../secret"
    df.to_csv(run_copy / "results.csv", index=False)
    (run_copy / "done.txt").write_text((run_copy / "done.txt").read_text().replace("x=1\t", "../../secret\t"))

    opened = []
    real = saved.load_maps
    monkeypatch.setattr(saved, "load_maps", lambda path: opened.append(Path(path)) or real(path))
    study = Study(run_copy)
    assert set(study.images.loc[study.images["saved"], "image"]) == {"x-1"}
    page = build(run_copy, n_boot=20)
    layer_head_grids(study, run_copy / "figs", formats=("png",))
    data = json.loads(_parse(page).data)
    assert [im["id"] for im in data["images"]] == ["x-1"]
    assert opened and all(p.resolve().is_relative_to(run_copy.resolve()) for p in opened)
    assert "../../secret" in set(study.df["image"])  # its rows still count; its maps are not read


# ----------------------------------------------------------------------- failed and unfinished jobs


@pytest.fixture
def broken_sweep(folder_run, tmp_path) -> Path:
    """A sweep of 4 planned jobs: 0 finished, 1 failed before its first image, 2 stopped after one image,
    3 never started."""
    sweep = tmp_path / "sweep"
    shutil.copytree(folder_run, sweep / "0")
    (sweep / "1" / ".hydra").mkdir(parents=True)
    (sweep / "1" / ".hydra" / "overrides.yaml").write_text("- model.img_size=60\n")
    (sweep / "1" / "failed.txt").write_text("error: model.img_size=60: expected a positive multiple of 8\n")
    shutil.copytree(folder_run, sweep / "2")
    (sweep / "2" / "run_summary.json").unlink()
    (sweep / "2" / "done.txt").write_text((sweep / "2" / "done.txt").read_text().splitlines(keepends=True)[0])
    (sweep / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: ['model.img_size=56,60,64,72']\n"
                                         "  sweeper:\n    params: null\n")
    return sweep


def test_failed_and_unfinished_jobs_show_in_the_page(broken_sweep):
    from layerscope.cli.collect import collect

    text = build(broken_sweep, n_boot=20).read_text(encoding="utf-8")
    assert "<b>3</b> runs (1 finished, 1 failed, 1 unfinished; 1 planned never started)" in text
    assert "job 1 failed: error: model.img_size=60: expected a positive multiple of 8" in text
    assert "job 2 unfinished: no run_summary.json" in text
    parsed = _parse(broken_sweep / REPORT)
    assert [a.get("class") for tag, a in parsed.tags if tag == "tr" and a.get("class")] == ["failed", "unfinished"]
    _, problems = collect(broken_sweep)  # collect tells the same story
    assert len(problems) == 3 and "job 1 failed" in problems[0] and "1 of 4 planned jobs never started" in problems[2]


def test_failed_and_unfinished_jobs_show_in_the_reports_warning(broken_sweep):
    proc = _cli("layerscope.cli.report", str(broken_sweep), "--protocol", "per_image", "--metric", "auroc", "--boot", "20")
    assert proc.returncode == 0, proc.stderr[-2000:]
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning: not every run")]
    assert len(warning) == 1, proc.stderr[-2000:]
    assert "job 1 failed: error: model.img_size=60" in warning[0] and "job 2 unfinished" in warning[0]
    assert "1 planned job(s) never started" in warning[0]


# ----------------------------------------------------------------------- outputs that are files


@pytest.mark.slow
def test_figures_and_export_onto_a_file_say_so_in_one_line(folder_run, tmp_path):
    existing = tmp_path / "existing_file"
    existing.write_text("keep")
    line = _one_error(_cli("layerscope.cli.figures", str(folder_run), "--out", str(existing), "--kinds", "layer_head"))
    assert str(existing) in line and "is a file" in line
    line = _one_error(_cli("layerscope.cli.export", str(existing), "--textures", "brick", "--per-combination", "1"))
    assert str(existing) in line and "is a file" in line
    assert existing.read_text() == "keep"
