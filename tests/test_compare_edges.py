"""layerscope-compare on the edges: images matched by id *and* content (two runs can give one id to two
images), saved representations checked when read (checksums, dtype, NaN/inf), ``--out`` into a folder that
holds other files or an earlier compare (a marker, the outputs replaced as a set, a lock), and one-line
errors for options and runs it cannot use.

Most runs here are made as a run writes them (chunks through ``PartWriter``, then ``consolidate``) from
random images and representations, without a model: fast; the end-to-end tests (marked slow) use real runs.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from layerscope.cli.compare import main
from layerscope.analysis.compare_output import COMPARE_LOCK, MARKER
from layerscope.results.representations import PartWriter, consolidate

from .conftest import ROOT, call_main, compose

D = 6  # representation width of the made runs


def images(n: int, seed: int, size: int = 32) -> np.ndarray:
    """``n`` random (3, size, size) inputs in [0, 1] on the uint8 grid (as inputs made from image files are)."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size)).astype(np.float32) / 255


def features(x: np.ndarray, layer: int, model: str) -> np.ndarray:
    """A fixed function of the image's content: the same image gives the same row in any run of a model."""
    flat = x.reshape(len(x), 3, 8, x.shape[-1] // 8, 8, x.shape[-1] // 8).mean((3, 5)).reshape(len(x), -1)
    w = np.random.default_rng([layer, len(model)]).normal(size=(flat.shape[1], D))
    return np.tanh(flat @ w).astype(np.float32)


def make_run(path: Path, model: str, ids: list[str], x: np.ndarray, layers: int = 2, results: bool = True,
             labels: list[str] | None = None, gain: float = 1.0) -> Path:
    """A finished run folder with saved representations, written the way a run writes them: a chunk of rows
    with each input's hash and thumbnail (``PartWriter``), ``done.txt``, ``consolidate``, the summary; a config
    naming ``model`` (runs of one name and size are one model) and a ``results.csv`` with a category and a
    continuous column. ``gain`` scales the representations (other weights under one config)."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"model:\n  name: {model}\n  img_size: {x.shape[-1]}\nseed: 0\n")
    reps = {layer: gain * features(x, layer, model) for layer in range(layers)}
    rows = [{"rep_mean": {layer: reps[layer][i] for layer in reps}} for i in range(len(ids))]
    _, write = PartWriter(path).task(ids, rows, list(x))
    write()
    (path / "done.txt").write_text("".join(f"{image}\t1\n" for image in ids))
    consolidate(path)
    (path / "run_summary.json").write_text(json.dumps({"complete": True}))
    if results:
        labels = labels or [f"c{i % 3}" for i in range(len(ids))]
        pd.DataFrame({"image": ids, "category": labels, "model": model, "method": "features", "layer": 0,
                      "head": "mean", "threshold": 0.5, "mask_fraction": np.linspace(0, 1, len(ids))}
                     ).to_csv(path / "results.csv", index=False)
    return path


IDS = [f"img_{i:02d}" for i in range(14)]


def compare(*args) -> subprocess.CompletedProcess:
    return call_main(main, [str(a) for a in args])


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a refused command (exit 2, no traceback)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def warnings(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("warning:")]


@pytest.fixture
def pair(tmp_path):
    """Two models (``vit``, ``cnn``) on the same 14 images."""
    x = images(14, 0)
    return make_run(tmp_path / "a", "vit", IDS, x), make_run(tmp_path / "b", "cnn", IDS, x)


def test_same_images_compare_without_a_word(pair, tmp_path):
    proc = compare(*pair, "--out", tmp_path / "o", "--formats", "png")
    assert proc.returncode == 0, proc.stderr
    assert not warnings(proc)
    sim = pd.read_csv(tmp_path / "o" / "similarity.csv")
    assert set(sim["n_images"]) == {14}


def test_two_runs_giving_their_ids_to_other_images_are_refused_naming_both(tmp_path):
    """The issue's case: another seed, the same 14 ids, other images: not '14 shared images'."""
    a = make_run(tmp_path / "a", "vit", IDS, images(14, 0))
    b = make_run(tmp_path / "b", "cnn", IDS, images(14, 1))
    line = one_line(compare(a, b, "--out", tmp_path / "o"))
    assert f"in {a} than in {b}" in line and "14 of them are other images" in line and "0 images in common" in line
    assert not (tmp_path / "o").exists()


def test_ids_holding_other_images_are_left_out_with_one_warning(tmp_path):
    """3 of 14 shared ids are other images: the pair is compared on the 11 that match by id and content,
    exactly as if the runs had only those."""
    x, y = images(14, 0), images(14, 0)
    y[[2, 5, 9]] = images(3, 7)
    a = make_run(tmp_path / "a", "vit", IDS, x)
    b = make_run(tmp_path / "b", "cnn", IDS, y)
    proc = compare(a, b, "--out", tmp_path / "o", "--formats", "png")
    assert proc.returncode == 0, proc.stderr
    (line,) = warnings(proc)
    assert f"in {a} than in {b}" in line and "3 of them are other images" in line and "the 11 images" in line
    keep = [i for i in range(14) if i not in (2, 5, 9)]
    a11 = make_run(tmp_path / "a11", "vit", [IDS[i] for i in keep], x[keep])
    b11 = make_run(tmp_path / "b11", "cnn", [IDS[i] for i in keep], y[keep])
    assert compare(a11, b11, "--out", tmp_path / "o11", "--formats", "png").returncode == 0
    cross = [pd.read_csv(folder / "similarity.csv").query("model_a != model_b").reset_index(drop=True)
             for folder in (tmp_path / "o", tmp_path / "o11")]
    assert set(cross[0]["n_images"]) == {11}
    pd.testing.assert_frame_equal(cross[0], cross[1])


def _block_mean(x: np.ndarray, f: int) -> np.ndarray:
    n, c, s, _ = x.shape
    return x.reshape(n, c, s // f, f, s // f, f).mean((3, 5))


def test_one_image_at_two_input_sizes_matches_by_thumbnail(tmp_path):
    """A ViT at 64 px and a CNN at 32 px see one image at two sizes: hashes differ, thumbnails agree; another
    image at 32 px is told apart."""
    big = images(12, 0, size=64)
    small = np.round(_block_mean(big, 2) * 255) / 255
    a = make_run(tmp_path / "a", "vit", IDS[:12], big)
    b = make_run(tmp_path / "b", "cnn", IDS[:12], small)
    hashes = [json.loads((run / "representations" / "checksums.json").read_text())["image_hash"] for run in (a, b)]
    assert not set(hashes[0]) & set(hashes[1])
    proc = compare(a, b, "--out", tmp_path / "o", "--formats", "png")
    assert proc.returncode == 0 and not warnings(proc), proc.stderr
    c = make_run(tmp_path / "c", "cnn", IDS[:12], images(12, 3, size=32))
    assert "12 of them are other images" in one_line(compare(a, c, "--out", tmp_path / "o2"))


def test_runs_of_one_model_with_other_images_under_one_id_are_not_merged(tmp_path):
    x = images(14, 0)
    first = make_run(tmp_path / "s" / "0", "vit", IDS[:10], x[:10])
    y = images(14, 5)  # ids 5..13 in the second run: 5..9 shared, other images
    second = make_run(tmp_path / "s" / "1", "vit", IDS[5:], y[5:])
    line = one_line(compare(tmp_path / "s"))
    assert f"model vit: runs {first} and {second} hold different images under 5 of their 5 shared ids" in line
    assert not (tmp_path / "s" / "compare").exists()


def test_runs_of_one_model_holding_the_same_images_merge(tmp_path):
    """A sweep that split (and overlapped) the images over jobs: one model of the 14 images."""
    x = images(14, 0)
    make_run(tmp_path / "s" / "0", "vit", IDS[:10], x[:10])
    make_run(tmp_path / "s" / "1", "vit", IDS[5:], x[5:])
    proc = compare(tmp_path / "s", "--formats", "png")
    assert proc.returncode == 0 and not warnings(proc), proc.stderr
    assert set(pd.read_csv(tmp_path / "s" / "compare" / "similarity.csv")["n_images"]) == {14}


def test_runs_of_one_model_with_other_rows_of_one_image_are_not_merged(tmp_path):
    """Same images, other representations (another weights file under one config): refused, not the first kept."""
    x = images(14, 0)
    make_run(tmp_path / "s" / "0", "vit", IDS[:10], x[:10])
    second = make_run(tmp_path / "s" / "1", "vit", IDS[5:], x[5:], gain=1.05)
    line = one_line(compare(tmp_path / "s"))
    assert "hold different representations of 5 of the same images" in line and str(second) in line


def _as_older_run(run: Path) -> Path:
    """The run as a layerscope from before image hashes wrote it."""
    (run / "representations" / "checksums.json").unlink()
    (run / "representations" / "thumbnails.npy").unlink()
    return run


def test_a_run_without_hashes_is_compared_by_id_and_said_so_in_one_line(pair, tmp_path):
    old = _as_older_run(pair[1])
    proc = compare(*pair, "--out", tmp_path / "o", "--formats", "png")
    assert proc.returncode == 0, proc.stderr
    (line,) = warnings(proc)
    assert "content of the images not checked" in line and str(old) in line and str(pair[0]) not in line


def test_runs_of_one_model_without_hashes_are_told_apart_by_their_rows(tmp_path):
    make_run(tmp_path / "s" / "0", "vit", IDS[:10], images(10, 0))
    _as_older_run(tmp_path / "s" / "0")
    second = _as_older_run(make_run(tmp_path / "s" / "1", "vit", IDS[5:], images(9, 1)))
    line = one_line(compare(tmp_path / "s"))
    assert "hold different images under 5 of their 5 shared ids" in line and str(second) in line


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines[::-1], "not the file the run wrote"),
    (lambda lines: [lines[0], lines[0], *lines[2:]], "on lines 1 and 2"),
])
def test_an_edited_images_txt_is_refused_naming_it(pair, tmp_path, edit, message):
    ids_file = pair[0] / "representations" / "images.txt"
    ids_file.write_text("".join(f"{line}\n" for line in edit(ids_file.read_text().splitlines())))
    line = one_line(compare(*pair, "--out", tmp_path / "o"))
    assert str(ids_file) in line and message in line
    assert not (tmp_path / "o").exists()


def test_a_duplicated_id_line_of_an_older_run_is_refused(pair, tmp_path):
    ids_file = _as_older_run(pair[0]) / "representations" / "images.txt"
    lines = ids_file.read_text().splitlines()
    ids_file.write_text("".join(f"{line}\n" for line in [*lines[:3], lines[1], *lines[4:]]))
    assert "on lines 2 and 4" in one_line(compare(*pair, "--out", tmp_path / "o"))


def test_an_array_with_its_rows_reordered_is_refused_naming_it(pair, tmp_path):
    path = pair[1] / "representations" / "mean_layer_1.npy"
    np.save(path, np.load(path)[::-1])
    line = one_line(compare(*pair, "--out", tmp_path / "o"))
    assert str(path) in line and "not the array the run wrote" in line


@pytest.mark.parametrize("older", [False, True], ids=["checked", "older-run"])
@pytest.mark.parametrize("value, message", [
    (np.nan, "1 NaN/inf values (first in row 3, image 'img_03')"),
    (np.inf, "1 NaN/inf values"),
    ("complex", "complex128 values; expected floats"),
    ("str", "<U32 values; expected floats"),
    ("int", "int64 values; expected floats"),
])
def test_a_representation_file_with_nan_or_not_floats_is_refused_naming_it(pair, tmp_path, value, message, older):
    if older:
        _as_older_run(pair[0])
    path = pair[0] / "representations" / "mean_layer_0.npy"
    array = np.load(path)
    if value == "complex":
        array = array.astype(np.complex128)
    elif value == "str":
        array = array.astype(str).astype("<U32")
    elif value == "int":
        array = (array * 100).astype(np.int64)
    else:
        array[3, 2] = value
    np.save(path, array)
    line = one_line(compare(*pair, "--out", tmp_path / "o", "--probe", "category"))
    assert str(path) in line and message in line, line


def test_a_chunk_with_nan_of_an_unfinished_run_is_refused(pair, tmp_path):
    run = pair[0]
    (run / "run_summary.json").unlink()  # unfinished: its rows come from the chunks
    part = next((run / "representations" / "parts").glob("part_*.npz"))
    with np.load(part) as z:
        arrays = dict(z)
    arrays["mean_layer_1"][0, 0] = np.nan
    np.savez(part, **arrays)
    line = one_line(compare(*pair, "--out", tmp_path / "o"))
    assert "NaN/inf values (first in row 0, image 'img_00')" in line and "mean_layer_1" in line


# --out


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_out_replaces_its_own_previous_outputs_as_a_set_and_keeps_the_users_files(pair, tmp_path):
    out = tmp_path / "o"
    assert compare(pair[0], "--out", out, "--probe", "category", "--formats", "png").returncode == 0
    first = _files(out)
    assert {"similarity.csv", "probe.csv", "probe_category_mean.png", MARKER} <= first
    (out / "notes.txt").write_text("mine")
    proc = compare(pair[0], "--out", out, "--formats", "png")
    assert proc.returncode == 0, proc.stderr
    now = _files(out)
    assert "probe.csv" not in now and "probe_category_mean.png" not in now  # the earlier compare's, removed
    assert (out / "notes.txt").read_text() == "mine"
    listed = set(json.loads((out / MARKER).read_text())["files"])
    assert listed == now - {MARKER, COMPARE_LOCK, "notes.txt"}
    assert "cka_vit__vit_mean_linear.png" in listed and "similarity.csv" in listed
    printed = {Path(line).name for line in proc.stdout.splitlines()}
    assert printed == listed


def test_out_never_replaces_a_users_own_file(pair, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "similarity.csv").write_text("mine\n")
    line = one_line(compare(pair[0], "--out", out))
    assert f"{out / 'similarity.csv'} exists and was not written by layerscope-compare" in line
    assert (out / "similarity.csv").read_text() == "mine\n" and _files(out) == {"similarity.csv"}
    # a figure's name too, in a folder the command wrote before (not one of its files)
    mine = tmp_path / "o2"
    assert compare(pair[0], "--out", mine, "--formats", "png").returncode == 0
    (mine / "probe_category_mean.png").write_bytes(b"mine")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    line = one_line(compare(pair[0], "--out", mine, "--formats", "png", "--probe", "category"))
    assert "probe_category_mean.png exists and was not written by layerscope-compare" in line
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before  # nothing replaced, nothing removed


def test_out_written_before_the_marker_is_replaced(pair, tmp_path):
    out = tmp_path / "o"
    assert compare(pair[0], "--out", out, "--probe", "category", "--formats", "png").returncode == 0
    (out / MARKER).unlink()
    assert compare(pair[0], "--out", out, "--formats", "png").returncode == 0
    assert "probe.csv" not in _files(out)


def test_out_that_is_a_file_is_one_line(pair, tmp_path):
    path = tmp_path / "file.csv"
    path.write_text("mine\n")
    line = one_line(compare(pair[0], "--out", path))
    assert f"--out {path}: exists and is not a folder" in line and path.read_text() == "mine\n"


def test_a_killed_compares_staging_folder_is_cleaned(pair, tmp_path):
    out = tmp_path / "o"
    left = out / f"{MARKER}.123-0badc0de.tmp"
    left.mkdir(parents=True)
    (left / "cka_vit__cnn_mean_linear.png").write_bytes(b"half")
    assert compare(pair[0], "--out", out, "--formats", "png").returncode == 0
    assert not left.exists() and not [p for p in out.iterdir() if p.name.endswith(".tmp")]


class _Signal:
    """A stderr that sets ``seen`` once ``text`` was written (the compare thread waits on the lock)."""

    def __init__(self, text: str):
        self.text, self.seen, self.lines = text, threading.Event(), []

    def write(self, s: str) -> int:
        self.lines.append(s)
        if self.text in s:
            self.seen.set()
        return len(s)

    def flush(self) -> None:
        pass


def test_two_compares_into_one_folder_take_turns(pair, tmp_path, monkeypatch):
    """While another compare holds the folder's lock, a second one waits (saying so) and writes nothing; then
    it writes its whole set."""
    out = tmp_path / "o"
    assert compare(pair[0], "--out", out, "--probe", "category", "--formats", "png").returncode == 0
    signal = _Signal("waiting for another layerscope-compare")
    monkeypatch.setattr(sys, "stderr", signal)
    result = {}
    with open(out / COMPARE_LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        thread = threading.Thread(target=lambda: result.setdefault("code", main([str(pair[0]), "--out", str(out),
                                                                                 "--formats", "png"])))
        thread.start()
        assert signal.seen.wait(120), "".join(signal.lines)
        assert (out / "probe.csv").exists()  # nothing replaced while the other holds the folder
        fcntl.flock(held, fcntl.LOCK_UN)
    thread.join(120)
    assert result.get("code") == 0, "".join(signal.lines)
    assert "probe.csv" not in _files(out) and (out / "similarity.csv").exists()


# one-line errors of options and runs


def test_probe_image_is_refused_in_one_line(pair, tmp_path):
    line = one_line(compare(*pair, "--out", tmp_path / "o", "--probe", "image"))
    assert "--probe image: the image id is not a label" in line


def test_a_continuous_probe_label_is_refused_in_one_line(pair, tmp_path):
    line = one_line(compare(*pair, "--out", tmp_path / "o", "--probe", "mask_fraction"))
    assert "--probe mask_fraction: 14 classes in 14 images of model vit (14 images alone in their class" in line
    assert not (tmp_path / "o").exists()


def test_a_label_with_nearly_one_class_per_image_is_refused_but_groups_are_not(tmp_path):
    x = images(14, 0)
    nearly = [f"v{i}" for i in range(12)] + ["v0", "v1"]  # 12 classes in 14 images, 10 alone: refused
    run = make_run(tmp_path / "a", "vit", IDS, x, labels=nearly)
    assert "12 classes in 14 images" in one_line(compare(run, "--probe", "category"))
    pairs = [f"g{i // 2}" for i in range(14)]  # 7 classes of 2: a probe can answer
    ok = make_run(tmp_path / "b", "vit", IDS, x, labels=pairs)
    assert compare(ok, "--probe", "category", "--formats", "png").returncode == 0


def test_a_negative_seed_names_the_option(pair, tmp_path):
    assert "--seed: '-1': expected an int >= 0" in one_line(compare(*pair, "--out", tmp_path / "o", "--seed", "-1"))


def test_arrays_without_summary_or_chunks_get_one_line_naming_the_folder(pair, tmp_path):
    run = pair[0]
    (run / "run_summary.json").unlink()
    shutil.rmtree(run / "representations" / "parts")
    line = one_line(compare(run))
    assert f"{run / 'representations'}: arrays without run_summary.json" in line and "CNN" not in line


def test_a_run_without_results_csv_is_compared_and_its_probe_refused_in_one_line(pair, tmp_path):
    (pair[1] / "results.csv").unlink()
    proc = compare(*pair, "--out", tmp_path / "o", "--formats", "png")
    assert proc.returncode == 0, proc.stderr
    assert set(pd.read_csv(tmp_path / "o" / "similarity.csv")["model_a"]) == {"vit", "cnn"}
    line = one_line(compare(*pair, "--out", tmp_path / "o", "--probe", "category"))
    assert f"{pair[1]} has no results.csv" in line


@pytest.mark.slow
def test_writing_into_a_read_only_run_folder_is_one_line(pair, tmp_path):
    """The default --out (RUN/compare) inside a run folder the user cannot write: one line, nothing written.
    As root, the write permission check is made real by dropping the capability that overrides it."""
    run = pair[0]
    run.chmod(0o555)
    try:
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                pytest.skip("running as root without setpriv: a read-only folder cannot be made")
            env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
            proc = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m",
                                   "layerscope.cli.compare", str(run), "--formats", "png"], env=env,
                                  capture_output=True, text=True, timeout=300)
        else:
            proc = compare(run, "--formats", "png")
        line = one_line(proc)
        assert f"--out {run / 'compare'}: cannot write there (Permission denied)" in line
        assert not (run / "compare").exists()
    finally:
        run.chmod(0o755)


# end to end: real runs


SMALL = ["data.textures=[brick]", "data.defects=[scratch,spot]", "data.per_combination=3", "data.good_per_texture=0",
         "data.size=64", "progress=false", "figures.grid=false", "dataset_metrics=false", "save_representations=true",
         "cache.enabled=false"]


@pytest.mark.slow
def test_a_run_saves_the_hash_and_thumbnail_of_each_input_the_model_saw(tmp_path):
    """The hashes a run saves are those of the dataset's preprocessed inputs, computed here from the pixels."""
    from layerscope import study
    from layerscope.data.transforms import to_input
    from layerscope.plan import build_dataset

    cfg = compose("model=tiny_cnn", *SMALL)
    run = tmp_path / "run"
    study.run(cfg, run)
    checks = json.loads((run / "representations" / "checksums.json").read_text())
    ids = (run / "representations" / "images.txt").read_text().splitlines()
    dataset = build_dataset(cfg)
    want = {}
    for i in range(len(dataset)):
        x = to_input(dataset[i], 64)[0].numpy()
        u8 = np.ascontiguousarray((x.transpose(1, 2, 0) * 255).round().astype(np.uint8))
        want[dataset[i].id] = hashlib.sha256(u8.tobytes() + str(u8.shape).encode()).hexdigest()[:32]
        thumb = np.load(run / "representations" / "thumbnails.npy")[ids.index(dataset[i].id)]
        block = x.astype(np.float64).reshape(3, 16, 4, 16, 4).mean((2, 4)).transpose(1, 2, 0) * 255
        np.testing.assert_allclose(thumb, block, atol=0.5 + 1e-6)  # the 4 x 4 block means, rounded
    assert checks["input_size"] == 64 and checks["image_hash"] == [want[image] for image in ids]
    assert checks["images_txt_sha256"] == hashlib.sha256((run / "representations" / "images.txt").read_bytes()
                                                         ).hexdigest()


@pytest.mark.slow
def test_real_runs_of_another_seed_or_per_combination_are_not_compared_as_the_same_images(tmp_path):
    from layerscope import study

    vit = tmp_path / "vit"
    study.run(compose("model=tiny_vit", *SMALL, "seed=0"), vit)
    cnn = tmp_path / "cnn"
    study.run(compose("model=tiny_cnn", *SMALL, "seed=1"), cnn)
    line = one_line(compare(vit, cnn, "--out", tmp_path / "o"))
    assert f"in {vit} than in {cnn}" in line and "0 images in common" in line
    more = tmp_path / "s" / "more"  # one model config, more images per combination: other images under the ids
    study.run(compose("model=tiny_vit", *SMALL, "seed=0", "data.per_combination=5"), more)
    shutil.copytree(vit, tmp_path / "s" / "vit")
    line = one_line(compare(tmp_path / "s"))
    assert "model tiny_vit: runs" in line and "hold different images under" in line


def test_configs_of_one_name_are_labelled_by_what_differs(tmp_path):
    """A trained model and its random-init control: one name, two configs, two labelled models."""
    x = images(12, 0)
    make_run(tmp_path / "s" / "0", "vit", IDS[:12], x)
    random = make_run(tmp_path / "s" / "1", "vit", IDS[:12], x, gain=0.5)
    config = random / "config.yaml"
    config.write_text(config.read_text().replace("model:\n", "model:\n  pretrained: false\n"))
    (tmp_path / "s" / "0" / "config.yaml").write_text(
        config.read_text().replace("pretrained: false", "pretrained: true"))
    assert compare(tmp_path / "s", "--formats", "png").returncode == 0
    sim = pd.read_csv(tmp_path / "s" / "compare" / "similarity.csv")
    assert list(dict.fromkeys(sim["model_a"])) == ["vit · pretrained", "vit · random init"]


def test_a_removed_layer_file_is_named(pair, tmp_path):
    path = pair[0] / "representations" / "mean_layer_1.npy"
    path.unlink()
    line = one_line(compare(*pair, "--out", tmp_path / "o"))
    assert f"{path}: missing, though the run wrote it" in line


def test_a_third_config_of_one_name_is_labelled_by_the_option_only_it_sets(tmp_path):
    x = images(12, 0)
    for i, extra in enumerate(["pretrained: true\n", "pretrained: false\n",
                               "pretrained: false\n  model_kwargs:\n    init_values: null\n"]):
        run = make_run(tmp_path / "s" / str(i), "vit", IDS[:12], x, gain=1 + i / 10)
        config = run / "config.yaml"
        config.write_text(config.read_text().replace("model:\n", f"model:\n  {extra}"))
    assert compare(tmp_path / "s", "--formats", "png").returncode == 0
    sim = pd.read_csv(tmp_path / "s" / "compare" / "similarity.csv")
    assert list(dict.fromkeys(sim["model_a"])) == ["vit · pretrained", "vit · random init",
                                                   "vit · model_kwargs.init_values=null · random init"]
