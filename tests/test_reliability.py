"""Nothing lost, nothing merged: cut files, corrupted caches, concurrent runs and failing sweep jobs,
through the real command line; after recovery the rows equal a clean run's rows."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from .conftest import ROOT, run_cli

TINY = ["model=tiny_vit", "progress=false", "figures.grid=false"]
SYNTH = [*TINY, "data.textures=[brick]", "data.defects=[scratch,spot]", "data.per_combination=2",
         "data.good_per_texture=2", "data.size=64"]
KEY = ["image", "layer", "head", "threshold"]


def table(run_dir) -> pd.DataFrame:
    df = pd.read_csv(run_dir / "results.csv", dtype={"head": str})
    return df.sort_values(KEY).reset_index(drop=True)


def one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A clean run of the small study: the reference every recovery must reproduce."""
    out = tmp_path_factory.mktemp("clean") / "run"
    proc = run_cli([*SYNTH, f"hydra.run.dir={out}"], cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_results_are_lf_only(clean):
    data = (clean / "results.csv").read_bytes()
    assert b"\r" not in data and data.count(b"\n") == 1 + len(table(clean))


@pytest.mark.parametrize("where", ["inside_quoted_notes", "mid_row", "inside_header", "just_after_a_row"])
def test_a_results_table_cut_at_any_byte_resumes_to_the_clean_rows(clean, tmp_path, where):
    run = tmp_path / "run"
    shutil.copytree(clean, run)  # finished: done.txt lists every image, run_summary.json exists
    data = (run / "results.csv").read_bytes()
    header_end = data.index(b"\n") + 1
    quoted = data.index(b'"no defect pixels') + 10
    cut = {"inside_quoted_notes": quoted, "mid_row": (header_end + len(data)) // 2 + 7,
           "inside_header": header_end // 2, "just_after_a_row": data.index(b"\n", len(data) // 3) + 1}[where]
    (run / "results.csv").write_bytes(data[:cut])  # a full disk or kill -9 cut the file here
    proc = run_cli([*SYNTH, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pd.testing.assert_frame_equal(table(run), table(clean))
    assert json.loads((run / "run_summary.json").read_text())["rows"] == len(table(clean))


def test_a_cut_done_line_and_rows_of_an_unfinished_image_are_redone(clean, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(clean, run)
    (run / "run_summary.json").unlink()  # interrupted: not finished
    done = (run / "done.txt").read_text().splitlines()
    (run / "done.txt").write_text("\n".join(done[:2]) + "\n" + done[2][:3])  # the third line was cut
    proc = run_cli([*SYNTH, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pd.testing.assert_frame_equal(table(run), table(clean))


def test_a_second_run_into_a_busy_folder_stops_and_a_stale_lock_does_not_block(clean, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "a+") as held:  # a live run holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242 on somewhere\n")
        held.flush()
        proc = run_cli([*SYNTH, f"hydra.run.dir={run}"], cwd=tmp_path)
        assert proc.returncode == 2
        assert f"{run} is in use by another run (pid 4242 on somewhere)" in one_error_line(proc)
        assert not (run / "results.csv").exists()
    # the holder is gone (as after kill -9): its lock file stays, but blocks nothing
    proc = run_cli([*SYNTH, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pd.testing.assert_frame_equal(table(run), table(clean))


def test_two_runs_started_together_never_merge_their_rows(clean, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    args = [sys.executable, "-m", "layerscope.run", *SYNTH, f"hydra.run.dir={run}"]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes in ([0, 0], [0, 2]), results  # 2: "in use"; 0 twice: the second found the first finished
    if codes == [0, 2]:
        assert any("is in use by another run" in err for _, err in results)
    data = (run / "results.csv").read_text()
    assert data.count("image,group,") == 1  # one header
    pd.testing.assert_frame_equal(table(run), table(clean))


def test_a_corrupted_cache_entry_is_dropped_and_recomputed(tmp_path):
    cache = tmp_path / "cache"
    first = tmp_path / "first"
    proc = run_cli([*SYNTH, f"cache.dir={cache}", f"hydra.run.dir={first}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entries = sorted(cache.glob("*/*.npz"))
    assert len(entries) == 6
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # truncated
    entries[1].write_bytes(b"")  # empty
    data = bytearray(entries[2].read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte (bad CRC)
    entries[2].write_bytes(bytes(data))
    second = tmp_path / "second"
    proc = run_cli([*SYNTH, f"cache.dir={cache}", f"hydra.run.dir={second}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    summary = json.loads((second / "run_summary.json").read_text())
    assert summary["cache_hits"] == 3 and summary["cache_misses"] == 3
    pd.testing.assert_frame_equal(table(second), table(first))
    third = tmp_path / "third"  # the bad entries were replaced by good ones
    assert run_cli([*SYNTH, f"cache.dir={cache}", f"hydra.run.dir={third}"], cwd=tmp_path).returncode == 0
    assert json.loads((third / "run_summary.json").read_text())["cache_hits"] == 6


def _images(folder, names):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)


def test_file_names_that_clean_to_the_same_id_stay_apart(tmp_path):
    names = ["a b.png", "a_b.png", "猫.png", "犬.png", "grey16.png", "grey16.tif"]
    _images(tmp_path / "imgs", names)
    out = tmp_path / "run"
    proc = run_cli([*TINY, "data=folder", f"data.root={tmp_path / 'imgs'}", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(out / "results.csv")
    assert df["image"].nunique() == 6 and df["source"].nunique() == 6  # one id per file, the path kept
    assert sorted(os.path.basename(s) for s in df["source"].unique()) == sorted(names)
    assert len(list((out / "maps").glob("*.npz"))) == 6
    again = run_cli([*TINY, "data=folder", f"data.root={tmp_path / 'imgs'}", f"hydra.run.dir={tmp_path / 'again'}"],
                    cwd=tmp_path)
    assert again.returncode == 0
    assert sorted(pd.read_csv(tmp_path / "again" / "results.csv")["image"].unique()) == sorted(df["image"].unique())


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_failing_job_does_not_stop_the_sweep_and_is_named(tmp_path, launcher):
    from layerscope.collect import main as collect_main

    sweep = tmp_path / "sweep"
    args = ["-m", *SYNTH, "model.img_size=60,64", f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}"]
    if launcher == "joblib":
        args.append("hydra.launcher.n_jobs=2")
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "failed: job 0: error: model.img_size=60: expected a positive multiple of the patch size 8" in proc.stderr
    assert "1 job(s) of the sweep failed" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((sweep / "1" / "run_summary.json").read_text())["complete"]  # the good job finished
    assert len(table(sweep / "1")) == len(pd.read_csv(sweep / "1" / "results.csv"))
    assert collect_main([str(sweep)]) == 1  # and collect names the failed one
    again = run_cli(args, cwd=tmp_path)  # a rerun skips the finished job and fails the same one again
    assert again.returncode == 1 and "already holds this finished run" in (sweep / "1" / "run.log").read_text()


@pytest.mark.parametrize("args,pattern", [
    (["model=dino_vit_s8"], r"^error: model=dino_vit_s8: no such config; available: .*dino_vits8"),
    (["data=mvtecad"], r"^error: data=mvtecad: no such config; available: .*mvtec"),
    (["method=gradcm"], r"^error: method=gradcm: no such config; available: .*cls_attention"),
    (["foo=1"], r"^error: foo: no such option"),
    (["+foo=1"], r"^error: \+foo=1: foo is not an option of layerscope"),
    (["-m", "model=tiny_vit,nope"], r"^error: model=nope: no such config"),
    (["layer=range(0,12"], r"^error: cannot read the overrides"),
    (["cache.max_gb=-1"], r"^error: cache.max_gb=-1: expected a size in GB > 0"),
    (["figures.max_images=-1"], r"^error: figures.max_images=-1: expected an int >= 0"),
    (["batch_size=abc"], r"^error: batch_size=abc: expected an int >= 1"),
])
def test_bad_options_get_one_line_and_exit_2(tmp_path, args, pattern):
    import re

    proc = run_cli([*SYNTH, *args, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                   cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert re.search(pattern, one_error_line(proc)), proc.stderr[-2000:]
    assert not (tmp_path / "run" / "results.csv").exists()
