"""The run side's safety: options that mean what they say, refused runs that change nothing, saved
maps that a rerun rebuilds, and user folders (symlinks, long names, EXIF, small defects) read right."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import re
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from layerscope import study
from layerscope.data.folder import Folder
from layerscope.data.ids import MAX_ID, safe_name
from layerscope.data.mvtec import MVTecAD
from layerscope.data.transforms import mask_rule_effect, resize_mask
from layerscope.config.checks import bool_options, check_config
from layerscope.config.schema import as_bool
from layerscope.results import layout
from layerscope.results.rundir import RunLock, comparable

from .conftest import CONF, compose, run_main

TINY = ["model=tiny_vit", "progress=false", "figures.grid=false"]
SYNTH = [*TINY, "data.textures=[brick]", "data.defects=[scratch,spot]", "data.size=64"]
KEY = ["image", "layer", "head", "threshold"]


def one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder (the lock file aside), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != layout.LOCK}


# ------------------------------------------------------------------------------------ boolean options


def test_boolean_options_are_read_from_the_defaults(tmp_path):
    """Every key whose default is true/false in the schema, config.yaml or a group config is a boolean option:
    a new boolean key in a group config is found without being listed; a key that is boolean in one file and
    not in another is not."""
    import shutil

    found = set(bool_options())
    assert {"save_maps", "resume", "metrics.faithfulness", "metrics.attention_distance", "dataset_metrics",
            "save_representations", "model.pretrained", "data.recursive"} <= found
    assert not {"batch_size", "threshold", "model.img_size", "data.root", "method.k"} & found

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "data" / "extra.yaml").write_text("shiny: true\nnested:\n  flag: off\nmixed: true\n")
    (conf / "data" / "other.yaml").write_text("mixed: some text\n")
    extended = set(bool_options(conf))
    assert extended - found == {"data.shiny", "data.nested.flag"}


@pytest.mark.parametrize("spelling,value", [("true", True), ("false", False), ("no", False), ("off", False),
                                            ("'false'", False), ("YES", True), ("On", True), ("nO", False)])
def test_boolean_spellings_mean_what_yaml_says(spelling, value):
    cfg = check_config(compose(f"save_maps={spelling}", f"metrics.faithfulness={spelling}", f"resume={spelling}",
                               f"model.pretrained={spelling}"))
    assert (cfg.save_maps, cfg.metrics.faithfulness, cfg.resume, cfg.model.pretrained) == (value,) * 4
    assert all(type(v) is bool for v in (cfg.save_maps, cfg.metrics.faithfulness, cfg.resume))
    # one config, however spelt: a run resumes a folder written with the other spelling
    canonical = check_config(compose(f"save_maps={str(value).lower()}"))
    assert comparable(check_config(compose(f"save_maps={spelling}"))) == comparable(canonical)


@pytest.mark.parametrize("overrides,shown", [
    (["save_maps=maybe"], "save_maps=maybe"), (["save_maps=1"], "save_maps=1"), (["save_maps=null"], "save_maps=None"),
    (["resume=2"], "resume=2"), (["model.pretrained=y"], "model.pretrained=y"),
    (["data=folder", "data.root=.", "data.resize_masks=nope"], "data.resize_masks=nope"),
])
def test_other_values_of_a_boolean_option_are_refused_naming_it(overrides, shown):
    with pytest.raises(ValueError, match=rf"^{re.escape(shown)}: expected true or false"):
        check_config(compose(*overrides))
    assert as_bool("x", "off") is False and as_bool("x", " TRUE ") is True


@pytest.mark.slow
def test_boolean_options_through_the_command_line(tmp_path):
    out = tmp_path / "run"
    proc = run_main([*SYNTH, "save_maps=off", "dataset_metrics=no", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / layout.MAPS).exists() and not (out / layout.DATASET_METRICS).exists()
    assert OmegaConf.load(out / layout.CONFIG).save_maps is False  # stored as a bool
    bad = run_main([*SYNTH, "save_maps=maybe", f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path)
    assert bad.returncode == 2
    assert one_error_line(bad) == "error: save_maps=maybe: expected true or false (yes/no and on/off work too)"
    assert not (tmp_path / "bad").exists()  # refused before Hydra made the folder


# ------------------------------------------------------------------------------- unset mandatory options


def test_unset_data_root_is_one_line_naming_it(tmp_path):
    proc = run_main([*TINY, "data=folder", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert one_error_line(proc) == ("error: data.root is not set (data=folder); expected the folder of your images: "
                                    "data.root=/path/to/images")
    assert "MissingMandatoryValue" not in proc.stderr + proc.stdout and not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,message", [
    (["data=mvtec"], r"^data.root is not set \(data=mvtec\); expected the MVTec AD folder"),
    (["data=mvtec", "data.root=/x"], r"^data.category is not set \(data=mvtec\); expected one category folder"),
    (["data=voc"], r"^data.root is not set \(data=voc\); expected the VOC2012 folder"),
])
def test_unset_options_of_each_dataset_name_what_they_expect(args, message):
    with pytest.raises(ValueError, match=message):
        check_config(compose(*args))


def test_faithfulness_needs_two_steps_at_least():
    from layerscope.metrics.faithfulness import check_faithfulness

    from layerscope.config.schema import MetricsOptions

    model = SimpleNamespace(num_classes=10, name="m")
    metrics = MetricsOptions(faithfulness=True, faithfulness_steps=1, faithfulness_baseline="blur")
    with pytest.raises(ValueError, match=r"^metrics.faithfulness_steps=1: expected an int >= 2"):
        check_faithfulness(metrics, model)
    metrics.faithfulness_steps = 2
    check_faithfulness(metrics, model)


# ------------------------------------------------------------------------------------- refused runs


@pytest.mark.slow
def test_a_refused_run_changes_nothing_in_the_folder_it_refused(tmp_path):
    sweep = tmp_path / "sweep"
    job = sweep / "0"
    first = run_main([*SYNTH, f"hydra.run.dir={job}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(job)
    assert {".hydra/overrides.yaml", ".hydra/config.yaml", layout.LOG} <= set(before)
    assert "data.size=64" in before[".hydra/overrides.yaml"].decode()

    other = run_main([*SYNTH, "threshold=0.5", f"hydra.run.dir={job}"], cwd=tmp_path)  # finished, another config
    assert other.returncode == 2
    assert "holds results of another configuration" in one_error_line(other)
    assert snapshot(job) == before

    with RunLock(job):  # another run holds the folder
        busy = run_main([*SYNTH, f"hydra.run.dir={job}"], cwd=tmp_path)
    assert busy.returncode == 2 and "is in use by another run" in one_error_line(busy)
    assert snapshot(job) == before

    # a sweep whose job 0 lands on that folder with another config: job 1 runs, job 0 is named, 0/ untouched
    swept = run_main(["-m", *SYNTH, "data.contrast=0.3,0.5", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert swept.returncode == 1, swept.stderr[-3000:]
    assert re.search(r"failed: job 0: error: .* holds results of another configuration", swept.stderr)
    assert "1 job(s) of the sweep failed" in swept.stderr
    assert snapshot(job) == before and not (job / "failed.txt").exists()
    assert (sweep / "1" / layout.SUMMARY).exists() and "data.contrast=0.5" in (sweep / "1" / ".hydra" /
                                                                               "overrides.yaml").read_text()
    assert not (sweep / ".refused").exists()


# ------------------------------------------------------------------------------ missing saved maps


def test_a_rerun_rebuilds_missing_saved_maps_with_a_clean_runs_rows(tmp_path, caplog):
    out = tmp_path / "run"
    args = [*SYNTH, "data.good_per_texture=1", "cache.enabled=false"]
    study.run(compose(*args), out)
    rows = pd.read_csv(out / layout.RESULTS)
    files = layout.map_files(out)
    gone = files[1]
    with np.load(gone) as z:
        arrays = {k: z[k] for k in z.files}
    pooled = pd.read_csv(out / layout.DATASET_METRICS)
    gone.unlink()  # as the damaged-map message advises
    with caplog.at_level(logging.WARNING):
        study.run(compose(*args), out)
    assert f"1 finished images have no saved maps ({gone.stem})" in caplog.text
    assert gone.exists() and layout.map_files(out) == files
    with np.load(gone) as z:
        assert set(z.files) == set(arrays)
        for key, value in arrays.items():  # maps of a batch of 1, not 3: equal to float32 rounding (no cache here)
            np.testing.assert_allclose(z[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
            assert z[key].dtype == value.dtype and (key.startswith("layer_") or (z[key] == value).all())
    again = pd.read_csv(out / layout.RESULTS)
    pd.testing.assert_frame_equal(again.sort_values(KEY).reset_index(drop=True),  # as a clean run's (rtol 1e-5)
                                  rows.sort_values(KEY).reset_index(drop=True))
    pd.testing.assert_frame_equal(pd.read_csv(out / layout.DATASET_METRICS), pooled)
    assert json.loads((out / layout.SUMMARY).read_text())["complete"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        study.run(compose(*args), out)  # all there: nothing redone
    assert "already holds this finished run; skipped" in caplog.text


# ------------------------------------------------------------------------------------- user folders


def _png(path: Path, value: int = 0, size=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


def test_recursive_folders_follow_symlinks_once(tmp_path, caplog):
    root, outside = tmp_path / "root", tmp_path / "outside"
    for path in (root / "top.png", root / "a" / "1.png", outside / "o.png", outside / "b" / "2.png"):
        _png(path)
    (root / "ext").symlink_to(outside, target_is_directory=True)  # a linked folder outside the root
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # a loop
    (outside / "b" / "back").symlink_to(root / "a", target_is_directory=True)  # a second way into a/
    with caplog.at_level(logging.WARNING):
        ds = Folder(str(root), recursive=True)
    assert [str(p.relative_to(root)) for p in ds.files] == ["a/1.png", "ext/b/2.png", "ext/o.png", "top.png"]
    assert [(ds[i].id, ds[i].category) for i in range(len(ds))] == [
        ("a__1", "a"), ("ext__b__2", "b"), ("ext__o", "ext"), ("top", "")]
    assert re.search(r"a/loop not read: it is .*root, read already", caplog.text)
    assert re.search(r"b/back not read: it is .*root/a, read already", caplog.text)
    assert [p.name for p in Folder(str(root)).files] == ["top.png"]  # not recursive: the top folder only


def test_mask_resizing_never_loses_a_defect():
    from skimage.measure import block_reduce

    one = np.zeros((128, 128), bool)
    one[37, 90] = True  # one defect pixel
    small = resize_mask(one, 64)
    assert small.sum() == 1 and small[18, 45]
    assert mask_rule_effect(one, small, 64) == (1, True)  # nearest resizing would have lost it
    rng = np.random.default_rng(0)
    for factor, size in ((2, 64), (4, 32), (7, 16)):
        mask = rng.random((size * factor, size * factor)) > 0.995
        np.testing.assert_array_equal(resize_mask(mask, size).numpy(), block_reduce(mask, (factor, factor), np.max))
    for h, w, size in ((100, 37, 64), (90, 130, 64), (33, 33, 64), (7, 300, 16)):
        mask = rng.random((h, w)) > 0.99
        mask[rng.integers(h), rng.integers(w)] = True
        got = resize_mask(mask, size).numpy()
        assert got.shape == (size, size) and got.any()
        nearest = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((size, size), Image.NEAREST)) > 0
        assert (got >= nearest).all()  # never fewer defect cells than nearest resizing
        if size >= h and size >= w:
            np.testing.assert_array_equal(got, nearest)  # upsampling: nearest, as before
        if size < h and size < w:  # brute force: a cell is a defect iff a defect pixel's centre lies in it
            ref = np.zeros((size, size), bool)
            for y, x in zip(*np.nonzero(mask)):
                ref[math.floor(Fraction(2 * y + 1, 2 * h) * size), math.floor(Fraction(2 * x + 1, 2 * w) * size)] = True
            np.testing.assert_array_equal(got, ref)


def test_data_resize_masks_keeps_a_one_pixel_defect(tmp_path):
    _png(tmp_path / "images" / "x.png", 90, (32, 48))
    mask = np.zeros((64, 96), np.uint8)
    mask[20, 30] = 255  # even row and column: nearest resizing to half size skips it
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "x.png")
    got = Folder(str(tmp_path / "images"), mask_dir=str(tmp_path / "masks"), resize_masks=True)[0].mask
    assert got.shape == (32, 48) and np.argwhere(got).tolist() == [[10, 15]]


def test_a_one_pixel_defect_survives_the_run_and_is_logged(tmp_path, caplog):
    images, masks = tmp_path / "images", tmp_path / "masks"
    _png(images / "tiny_defect.png", 90, (128, 128))
    _png(images / "big_defect.png", 90, (128, 128))
    masks.mkdir()
    one = np.zeros((128, 128), np.uint8)
    one[37, 90] = 255
    Image.fromarray(one).save(masks / "tiny_defect.png")
    big = np.zeros((128, 128), np.uint8)
    big[10:60, 10:60] = 255  # even edges at 2x: nearest and the any-pixel rule agree
    Image.fromarray(big).save(masks / "big_defect.png")
    with caplog.at_level(logging.INFO):
        study.run(compose(*TINY, "data=folder", f"data.root={images}", f"data.mask_dir={masks}"), tmp_path / "run")
    df = pd.read_csv(tmp_path / "run" / layout.RESULTS)
    tiny = df[df["image"] == "tiny_defect"]
    assert tiny["mask_fraction"].tolist() == pytest.approx([1 / 64 ** 2] * len(tiny), rel=1e-5)  # 6 digits kept
    assert tiny["auroc"].notna().all()  # scored as a defect image, not "no defect pixels"
    big_fraction = df.loc[df["image"] == "big_defect", "mask_fraction"]
    assert big_fraction.tolist() == pytest.approx([25 ** 2 / 64 ** 2] * len(big_fraction), rel=1e-5)
    assert "1 images have more defect pixels than nearest resizing gives (+1 in all); 1 would have had none" \
        in caplog.text
    summary = json.loads((tmp_path / "run" / layout.SUMMARY).read_text())
    assert (summary["masks_changed_by_resize_rule"], summary["masks_kept_from_vanishing"]) == (1, 1)


def test_long_ids_are_cut_by_the_hash_rule():
    short = "a" * MAX_ID
    assert safe_name(short) == short  # ids that fit are unchanged
    long_a, long_b = "x" * 247 + "a", "x" * 247 + "b"
    ids = safe_name(long_a), safe_name(long_b)
    assert ids[0] != ids[1] and all(len(i) == MAX_ID for i in ids)
    assert ids[0] == "x" * (MAX_ID - 9) + "-" + hashlib.sha1(long_a.encode()).hexdigest()[:8]
    assert safe_name(long_a) == ids[0]  # the same on every run
    from layerscope.cli.run import os_advice

    assert "longer than this file system allows" in os_advice(OSError(errno.ENAMETOOLONG, "File name too long"))
    assert "free space" in os_advice(OSError(errno.ENOSPC, "No space left on device"))


@pytest.mark.slow
def test_a_legal_251_character_file_name_runs_with_its_mask(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    name = "n" * 247  # + ".png": 251 characters, legal
    _png(images / f"{name}.png", 90, (64, 64))
    masks.mkdir()
    mask = np.zeros((64, 64), np.uint8)
    mask[5:20, 5:20] = 255
    Image.fromarray(mask).save(masks / f"{name}.png")  # name_mask.png would be 256 characters: not possible
    out = tmp_path / "run"
    proc = run_main(["model=tiny_vit", "progress=false", "data=folder", f"data.root={images}", f"data.mask_dir={masks}",
                     f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(out / layout.RESULTS)
    assert df["image"].nunique() == 1 and len(df["image"].iloc[0]) == MAX_ID
    assert df["mask_fraction"].tolist() == pytest.approx([15 ** 2 / 64 ** 2] * len(df), rel=1e-5)
    assert df["source"].iloc[0].endswith(f"{name}.png")
    assert len(layout.map_files(out)) == 1 and len(list((out / layout.FIGURES).glob("*_grid.png"))) == 1


def _exif_png(path: Path, array: np.ndarray) -> None:
    im = Image.fromarray(array)
    exif = im.getexif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, exif=exif)


def test_exif_rotation_applies_to_image_and_mask_alike(tmp_path):
    image = np.zeros((48, 64, 3), np.uint8)  # stored 64 x 48
    image[2:10, 40:60] = 255
    mask = np.zeros((48, 64), np.uint8)
    mask[2:10, 40:60] = 255  # on the bright block, as stored
    _exif_png(tmp_path / "images" / "x.png", image)
    _exif_png(tmp_path / "masks" / "x.png", mask)
    ds = Folder(str(tmp_path / "images"), mask_dir=str(tmp_path / "masks"))  # one size check, one rule
    s = ds[0]
    assert s.image.shape == (64, 48, 3) and s.mask.shape == (64, 48)
    np.testing.assert_array_equal(s.image, np.rot90(image, -1))  # orientation 6: turned clockwise
    np.testing.assert_array_equal(s.mask, s.image[..., 0] == 255)  # the mask stays on its defect
    # MVTec reads its masks by the same rule
    root = tmp_path / "mvtec" / "cat"
    _exif_png(root / "test" / "bad" / "000.png", image)
    _exif_png(root / "ground_truth" / "bad" / "000_mask.png", mask)
    m = MVTecAD(str(tmp_path / "mvtec"), "cat")[0]
    np.testing.assert_array_equal(m.mask, m.image[..., 0] == 255)
