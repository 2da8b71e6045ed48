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

from .conftest import ROOT, SMALL_RUN, run_cli, run_main

TINY = ["model=tiny_vit", "progress=false", "figures.grid=false"]
SYNTH = SMALL_RUN
KEY = ["image", "layer", "head", "threshold"]


def table(run_dir) -> pd.DataFrame:
    df = pd.read_csv(run_dir / "results.csv", dtype={"head": str})
    return df.sort_values(KEY).reset_index(drop=True)


def one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture
def clean(small_run):
    """A clean run of the small study (``SYNTH``): the reference every recovery must reproduce."""
    return small_run


@pytest.mark.slow
def test_results_are_lf_only(clean):
    data = (clean / "results.csv").read_bytes()
    assert b"\r" not in data and data.count(b"\n") == 1 + len(table(clean))


@pytest.mark.slow
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
    proc = run_main([*SYNTH, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pd.testing.assert_frame_equal(table(run), table(clean))
    assert json.loads((run / "run_summary.json").read_text())["rows"] == len(table(clean))


@pytest.mark.slow
def test_a_cut_done_line_and_rows_of_an_unfinished_image_are_redone(clean, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(clean, run)
    (run / "run_summary.json").unlink()  # interrupted: not finished
    done = (run / "done.txt").read_text().splitlines()
    (run / "done.txt").write_text("\n".join(done[:2]) + "\n" + done[2][:3])  # the third line was cut
    proc = run_main([*SYNTH, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pd.testing.assert_frame_equal(table(run), table(clean))


@pytest.mark.slow
def test_a_second_run_into_a_busy_folder_stops_and_a_stale_lock_does_not_block(clean, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "a+") as held:  # a live run holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242 on somewhere\n")
        held.flush()
        proc = run_main([*SYNTH, f"hydra.run.dir={run}"], cwd=tmp_path)
        assert proc.returncode == 2
        assert f"{run} is in use by another run (pid 4242 on somewhere)" in one_error_line(proc)
        assert not (run / "results.csv").exists()
    # the holder is gone (as after kill -9): its lock file stays, but blocks nothing
    proc = run_main([*SYNTH, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pd.testing.assert_frame_equal(table(run), table(clean))


@pytest.mark.slow
def test_two_runs_started_together_never_merge_their_rows(clean, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    args = [sys.executable, "-m", "layerscope.cli.run", *SYNTH, f"hydra.run.dir={run}"]
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


@pytest.mark.slow
def test_a_corrupted_cache_entry_is_dropped_and_recomputed(tmp_path):
    cache = tmp_path / "cache"
    first = tmp_path / "first"
    proc = run_main([*SYNTH, f"cache.dir={cache}", f"hydra.run.dir={first}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entries = sorted(cache.glob("*/*.npz"))
    assert len(entries) == 6
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # truncated
    entries[1].write_bytes(b"")  # empty
    data = bytearray(entries[2].read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte (bad CRC)
    entries[2].write_bytes(bytes(data))
    second = tmp_path / "second"
    proc = run_main([*SYNTH, f"cache.dir={cache}", f"hydra.run.dir={second}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    summary = json.loads((second / "run_summary.json").read_text())
    assert summary["cache_hits"] == 3 and summary["cache_misses"] == 3
    pd.testing.assert_frame_equal(table(second), table(first))
    third = tmp_path / "third"  # the bad entries were replaced by good ones
    assert run_main([*SYNTH, f"cache.dir={cache}", f"hydra.run.dir={third}"], cwd=tmp_path).returncode == 0
    assert json.loads((third / "run_summary.json").read_text())["cache_hits"] == 6


def _images(folder, names):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)


@pytest.mark.slow
def test_file_names_that_clean_to_the_same_id_stay_apart(tmp_path):
    names = ["a b.png", "a_b.png", "猫.png", "犬.png", "grey16.png", "grey16.tif"]
    _images(tmp_path / "imgs", names)
    out = tmp_path / "run"
    proc = run_main([*TINY, "data=folder", f"data.root={tmp_path / 'imgs'}", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(out / "results.csv")
    assert df["image"].nunique() == 6 and df["source"].nunique() == 6  # one id per file, the path kept
    assert sorted(os.path.basename(s) for s in df["source"].unique()) == sorted(names)
    assert len(list((out / "maps").glob("*.npz"))) == 6
    again = run_main([*TINY, "data=folder", f"data.root={tmp_path / 'imgs'}", f"hydra.run.dir={tmp_path / 'again'}"],
                     cwd=tmp_path)
    assert again.returncode == 0
    assert sorted(pd.read_csv(tmp_path / "again" / "results.csv")["image"].unique()) == sorted(df["image"].unique())


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_failing_job_does_not_stop_the_sweep_and_is_named(tmp_path, launcher):
    from layerscope.cli.collect import main as collect_main

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

    proc = run_main([*SYNTH, *args, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                    cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert re.search(pattern, one_error_line(proc)), proc.stderr[-2000:]
    assert not (tmp_path / "run" / "results.csv").exists()


@pytest.mark.slow
def test_a_bad_option_through_the_command_line(tmp_path):
    proc = run_cli([*SYNTH, "foo=1", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert one_error_line(proc).startswith("error: foo: no such option")
    assert not (tmp_path / "run").exists()


def test_report_and_figures_refuse_empty_or_foreign_tables_in_one_line(clean, tmp_path):
    from layerscope.cli.figures import main as figures_main
    from layerscope.cli.report import main as report_main

    cases = {"zero_bytes": b"", "header_only": (clean / "results.csv").read_bytes().split(b"\n")[0] + b"\n",
             "foreign": b"a,b,c\n1,2,3\n"}
    expected = {"zero_bytes": "empty file", "header_only": "no rows", "foreign": "not a layerscope results table"}
    for name, data in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.csv").write_bytes(data)
        for tool in (report_main, figures_main):
            import contextlib
            import io

            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = tool([str(folder)])
            lines = [line for line in err.getvalue().splitlines() if line.startswith("error: ")]
            assert code == 2 and len(lines) == 1 and expected[name] in lines[0], (name, tool, err.getvalue())


def test_report_leaves_out_the_image_an_unfinished_run_was_cut_in(clean, tmp_path):
    from layerscope.results.table import load_results

    run = tmp_path / "run"
    shutil.copytree(clean, run)
    (run / "run_summary.json").unlink()
    done = (run / "done.txt").read_text().splitlines()
    (run / "done.txt").write_text("\n".join(done[:3]) + "\n")  # the 4th image's rows are there, not finished
    df = load_results(run)
    assert sorted(df["image"].unique()) == sorted(line.split("\t")[0] for line in done[:3])


@pytest.mark.slow
def test_bad_checkpoints_get_one_line(tmp_path):
    import torch
    from safetensors.torch import save_file

    from layerscope.backbones import WeightsError
    from layerscope.plan import build

    from .conftest import compose

    save_file({"w": torch.zeros(3)}, str(tmp_path / "ok.safetensors"))
    good = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00garbage" * 10)
    cfg = compose("model=tiny_vit")
    bb = build(cfg.model)
    wrong = {k: torch.zeros(*(s + 1 for s in v.shape)) for k, v in bb.model.state_dict().items()}
    save_file(wrong, str(tmp_path / "shapes.safetensors"))
    for name, message in (("cut", "not a readable safetensors file"), ("garbage", "not a readable safetensors file"),
                          ("shapes", "checkpoint tensors of the wrong shape")):
        proc = run_main([*SYNTH, "model.pretrained=true", "model.weights.source=file",
                         f"model.weights.path={tmp_path / (name + '.safetensors')}",
                         f"hydra.run.dir={tmp_path / name}"], cwd=tmp_path)
        assert proc.returncode == 2 and message in one_error_line(proc), proc.stderr[-2000:]
    del WeightsError


def test_masks_follow_one_rule(tmp_path):
    from layerscope.data.images import read_mask

    shape = np.zeros((20, 20), np.uint8)
    shape[5:10, 5:10] = 1
    red = np.zeros((20, 20, 3), np.uint8)
    red[shape == 1] = (255, 0, 0)
    cases = {"red.png": red, "hundred.png": shape * 100, "labels.png": shape * 2, "ones.png": shape,
             "white.png": shape * 255}
    for name, arr in cases.items():
        Image.fromarray(arr).save(tmp_path / name)
        assert (read_mask(tmp_path / name) == (shape == 1)).all(), name
    soft = np.tile(np.linspace(0, 1, 20, dtype=np.float32), (20, 1))  # a float mask in [0, 1]: split at 0.5
    Image.fromarray(soft, mode="F").save(tmp_path / "soft.tif")
    assert (read_mask(tmp_path / "soft.tif") == (soft > 0.5)).all()


def test_readers_rgb_float_tiff_and_dark_16_bit(tmp_path):
    import tifffile

    from layerscope.data.images import read_image

    rgb = np.random.default_rng(0).random((8, 10, 3), dtype=np.float32)
    tifffile.imwrite(tmp_path / "rgb_float.tif", rgb)
    got = read_image(tmp_path / "rgb_float.tif")
    assert got.shape == (8, 10, 3) and np.abs(got.astype(float) - rgb * 255).max() <= 0.5
    dark = np.full((6, 6), 200, np.uint16)  # a 16-bit image whose maximum is below 256: still 16-bit data
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    assert read_image(tmp_path / "dark16.png")[0, 0, 0] == round(200 / 65535 * 255)


@pytest.mark.slow
def test_a_100_megapixel_image_is_read(tmp_path):
    from layerscope.data.images import read_image

    Image.new("1", (10_000, 10_000)).save(tmp_path / "big.png")  # 100 MP, above Pillow's own 89 MP limit
    assert read_image(tmp_path / "big.png").shape == (10_000, 10_000, 3)


def test_a_cache_that_cannot_be_written_is_warned_about_once(tmp_path, monkeypatch, caplog):
    import torch

    from layerscope.results import cache as cache_module

    c = cache_module.MapCache(tmp_path, "k")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module.np, "savez", full_disk)
    with caplog.at_level("WARNING"):
        for i in range(3):
            c.put(f"img{i}", {0: torch.zeros(2, 2)}, None)
    assert not c.writable and sum("not writable" in r.message for r in caplog.records) == 1
    assert list(tmp_path.rglob("*.npz")) == []  # no half-written entry


@pytest.mark.slow
def test_a_full_disk_while_writing_maps_names_the_file_and_leaves_no_half_file(tmp_path):
    import resource

    out = tmp_path / "run"

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (6_000, 6_000))  # results rows fit, a maps file does not

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "layerscope.cli.run", *SYNTH, "cache.enabled=false",
                           "num_workers=0",  # RLIMIT_FSIZE would also cap the workers' shared-memory files
                           f"hydra.run.dir={out}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          preexec_fn=limit_file_size, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: cannot write {out / 'maps'}/" in one_error_line(proc) or "results.csv" in one_error_line(proc)
    assert not list((out / "maps").glob("*.tmp*")) if (out / "maps").exists() else True
    again = run_cli([*SYNTH, "cache.enabled=false", f"hydra.run.dir={out}"], cwd=tmp_path)  # space freed: resume
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(list((out / "maps").glob("*.npz"))) == 6


def test_every_readme_command_is_valid_bash():
    import re

    text = (ROOT / "README.md").read_text() + (ROOT / "experiments" / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    inline = re.findall(r"`((?:layerscope|python -m src\.run)[^`]*)`", text)
    script = "\n".join(blocks + inline)
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "~/" not in script.replace("~/.cache", "")


@pytest.mark.slow
def test_figures_max_images_holds_across_a_resume(clean, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(clean, run)
    (run / "run_summary.json").unlink()
    done = (run / "done.txt").read_text().splitlines()
    (run / "done.txt").write_text("\n".join(done[:3]) + "\n")
    (run / "figures").mkdir(exist_ok=True)
    for line in done[:3]:  # the interrupted run had drawn its first 3 grids
        (run / "figures" / f"{line.split(chr(9))[0]}_grid.png").write_bytes(b"png")
    args = [a for a in SYNTH if a != "figures.grid=false"]
    proc = run_main([*args, "figures.grid=true", "figures.max_images=4", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((run / "figures").glob("*_grid.png"))) == 4  # 3 before + 1 now, not 3 + 4
