"""Bad input through the real command line: exit codes, messages, and what is left on disk."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from layerscope.data.images import BadImage, read_image, read_mask
from layerscope.scoring import ScoreOptions, Target, image_rows
from layerscope.data.ids import safe_name

from .conftest import ROOT, run_cli, run_main

TINY = ["model=tiny_vit", "progress=false", "figures.grid=false"]
SYNTH = [*TINY, "data.textures=[brick]", "data.defects=[scratch,spot]", "data.size=64"]


def one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith(("error: ", "interrupted: "))]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def write_images(folder):
    folder.mkdir()
    rgb = np.zeros((40, 48, 3), np.uint8)
    rgb[:, :24] = (200, 30, 30)
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(folder / "grey_L.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 48), 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(rgb).convert("LA").save(folder / "grey_LA.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette_P.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((np.arange(40 * 48).reshape(40, 48) * 30).astype(np.uint16)).save(folder / "deep_I16.png")
    Image.fromarray(np.linspace(0, 1, 40 * 48, dtype=np.float32).reshape(40, 48)).save(folder / "float_F.tif")
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rotated.save(folder / "exif_rotated.jpg", exif=exif)
    Image.fromarray(rgb[:3, :3]).save(folder / "smaller_than_a_patch.png")
    Image.fromarray(np.zeros((3000, 2000, 3), np.uint8)).save(folder / "large.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "not_an_image.png").write_text("hello")
    good = (folder / "rgb.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "notes.txt").write_text("ignored: not an image suffix")


def test_image_modes_are_converted():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "imgs"
        write_images(folder)
        assert read_image(folder / "grey_L.png").shape == (40, 48, 3)
        assert tuple(read_image(folder / "rgba.png")[0, 0]) == (200, 30, 30)  # alpha dropped
        palette_rgb = Image.open(folder / "palette_P.png").convert("RGB").getpixel((0, 0))
        assert tuple(read_image(folder / "palette_P.png")[0, 0]) == palette_rgb  # the palette's colour
        assert np.abs(read_image(folder / "cmyk.jpg")[0, 0].astype(int) - (200, 30, 30)).max() < 40
        deep = read_image(folder / "deep_I16.png")
        assert deep.dtype == np.uint8 and deep[-1, -1, 0] == round((40 * 48 - 1) * 30 / 65535 * 255)
        flt = read_image(folder / "float_F.tif")
        assert flt[0, 0, 0] == 0 and flt[-1, -1, 0] == 255
        assert read_image(folder / "exif_rotated.jpg").shape == (48, 40, 3)  # EXIF orientation applied
        for name, reason in [("empty.png", "empty file"), ("not_an_image.png", "not a readable image"),
                             ("truncated.png", "unreadable image")]:
            with pytest.raises(BadImage, match=re.escape(name) + ".*" + reason):
                read_image(folder / name)


def test_mask_value_rule(tmp_path):
    grad = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    Image.fromarray(grad).save(tmp_path / "grad.png")
    assert read_mask(tmp_path / "grad.png").sum() == 4 * 128  # > 127 is foreground
    Image.fromarray((grad > 200).astype(np.uint8)).save(tmp_path / "01.png")  # a 0/1 mask
    assert read_mask(tmp_path / "01.png").sum() == 4 * 55


@pytest.mark.slow
def test_folder_run_skips_unreadable_files_and_counts_them(tmp_path):
    write_images(tmp_path / "imgs")
    out = tmp_path / "run"
    proc = run_main([*TINY, "data=folder", f"data.root={tmp_path / 'imgs'}", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "run_summary.json").read_text())
    skipped = " ".join(summary["skipped_images"])
    for name in ("empty.png", "not_an_image.png", "truncated.png"):
        assert name in skipped
        assert name in (out / "run.log").read_text()
    images = set(pd.read_csv(out / "results.csv")["image"])
    assert images == {"cmyk", "deep_I16", "exif_rotated", "float_F", "grey_L", "grey_LA", "large", "palette_P", "rgb",
                      "rgba", "smaller_than_a_patch"}
    assert summary["images_without_mask"] == 11
    notes = pd.read_csv(out / "results.csv")["notes"]
    assert notes.str.startswith("no mask").all()

    fatal = run_main([*TINY, "data=folder", f"data.root={tmp_path / 'imgs'}", "on_bad_image=fail",
                      f"hydra.run.dir={tmp_path / 'fatal'}"], cwd=tmp_path)
    assert fatal.returncode == 2
    assert re.search(r"error: .*(empty|not_an_image|truncated)\.png: .*\(on_bad_image=fail\)", one_error_line(fatal))


def test_mask_of_the_wrong_size_stops_before_the_model_loads(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "masks" / "a_mask.png")
    args = [*TINY, "data=folder", f"data.root={tmp_path / 'imgs'}", f"data.mask_dir={tmp_path / 'masks'}"]
    proc = run_main([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "a_mask.png: mask is 20x20, image a.png is 48x40; expected the same size" in one_error_line(proc)
    assert not (tmp_path / "run" / "results.csv").exists()
    ok = run_main([*args, "data.resize_masks=true", f"hydra.run.dir={tmp_path / 'ok'}"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_all_zero_mask_metrics_are_marked_undefined(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "masks" / "a.png")
    out = tmp_path / "run"
    proc = run_main([*TINY, "data=folder", f"data.root={tmp_path / 'imgs'}", f"data.mask_dir={tmp_path / 'masks'}",
                     f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = pd.read_csv(out / "results.csv")
    assert df["auroc"].isna().all() and df["aupro"].isna().all()
    assert df["notes"].str.contains("no defect pixels: iou_oracle, auroc, aupro").all()
    assert (df["iou"] == 0).all()  # defined: any kept pixel is a false positive


@pytest.mark.parametrize("args,pattern,code", [
    (["model=dino_vit_s8"], r"error: model=dino_vit_s8: no such config; available: .*dino_vits8", 2),
    (["data=mvtecad"], r"error: data=mvtecad: no such config; available: .*mvtec", 2),
    (["method=gradcm"], r"error: method=gradcm: no such config; available: .*cls_attention", 2),
    (["head=7"], r"error: head=7 is out of range: this model has 2 heads, valid -2..1", 2),
    (["threshold=1.2"], r"error: threshold=\[1.2\]: thresholds must be in \[0, 1\]", 2),
    (["model.img_size=60"], r"error: model.img_size=60: expected a positive multiple of the patch size 8", 2),
    (["model.img_size=0"], r"error: model.img_size=0: expected a positive int", 2),
    (["model=tiny_cnn", "method=cls_attention"], r"error: method=cls_attention does not apply to model tiny_cnn", 2),
    (["precision=bf16", "device=cpu"], r"error: precision=bf16 needs a GPU", 2),
    (["method=patch_knn", "data=samples"], r"error: method=patch_knn needs defect-free reference images", 2),
])
def test_config_errors(tmp_path, args, pattern, code):
    out = tmp_path / "run"
    proc = run_main([*(TINY if "data=samples" in args else SYNTH), *args, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert re.search(pattern, proc.stderr, re.S), proc.stderr[-2000:]
    assert not (out / "results.csv").exists()  # nothing ran


def test_pickled_code_in_a_checkpoint_is_refused_on_the_command_line(tmp_path):
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    torch.save({"w": Payload()}, tmp_path / "evil.pth")
    proc = run_main([*SYNTH, "model.pretrained=true", "model.weights.source=file",
                     f"model.weights.path={tmp_path / 'evil.pth'}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "refused to load" in one_error_line(proc) and "safetensors" in proc.stderr
    assert not (tmp_path / "pwned").exists()


def slow_run_args(out):
    # figures for every image slow the tiny model down enough to interrupt it half-way
    return [*TINY, "figures.grid=true", "figures.max_images=1000", "batch_size=1", "cache.enabled=false",
            "data.textures=[brick,moon]", "data.size=64", "data.per_combination=3", f"hydra.run.dir={out}"]


def start(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "layerscope.cli.run", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def done_ids(out) -> list[str]:
    """Images ``done.txt`` lists as finished (one ``id<TAB>rows`` line each)."""
    from layerscope.results.rundir import read_done

    return list(read_done(out))


def wait_for_images(out, n, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if len(done_ids(out)) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before {n} images: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    pytest.fail("run too slow to interrupt")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_keeps_finished_images_and_resumes(tmp_path, sig):
    out = tmp_path / "run"
    proc = start(slow_run_args(out), tmp_path)
    wait_for_images(out, 3, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    done = done_ids(out)
    partial = pd.read_csv(out / "results.csv")
    assert set(done) <= set(partial["image"]) and 3 <= len(done) < 24  # finished images are readable
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted: the images finished so far are in" in stderr, stderr[-3000:]
        assert "Traceback" not in stderr
    again = run_cli(slow_run_args(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in (out / "run.log").read_text()
    df = pd.read_csv(out / "results.csv")
    rows_per_image = df.groupby("image").size()
    assert len(rows_per_image) == 24 and rows_per_image.nunique() == 1  # every image once, none duplicated
    reference = run_cli(slow_run_args(tmp_path / "reference"), cwd=tmp_path)
    assert reference.returncode == 0
    ref = pd.read_csv(tmp_path / "reference" / "results.csv")
    key = ["image", "layer", "head", "threshold"]
    pd.testing.assert_frame_equal(df.sort_values(key).reset_index(drop=True), ref.sort_values(key).reset_index(drop=True))


@pytest.mark.slow
def test_other_config_in_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    assert run_main([*SYNTH, f"hydra.run.dir={out}"], cwd=tmp_path).returncode == 0
    before = (out / "results.csv").read_bytes()
    proc = run_main([*SYNTH, "threshold=0.3", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 2 and "holds results of another configuration" in one_error_line(proc)
    assert (out / "results.csv").read_bytes() == before


@pytest.mark.slow
def test_full_disk_gives_a_clear_error_and_keeps_finished_images(tmp_path):
    import resource

    out = tmp_path / "run"

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "layerscope.cli.run", *SYNTH, "data.per_combination=20", "save_maps=false",
                           # RLIMIT_FSIZE also caps the shared-memory files that DataLoader workers pass tensors
                           # through (a real full disk does not): the limit is for the run's own files
                           "cache.enabled=false", "num_workers=0", f"hydra.run.dir={out}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, preexec_fn=limit_file_size, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert re.search(r"error: cannot write .*results.csv: File too large; free space", proc.stderr)
    done = done_ids(out)
    assert done and set(done) <= set(pd.read_csv(out / "results.csv")["image"])


def test_ids_cannot_write_outside_the_run_folder(tmp_path):
    assert safe_name("../../etc/passwd").startswith("etc_passwd-")
    assert safe_name("..").startswith("_-") and safe_name(".hidden").startswith("hidden-")
    assert safe_name("a b/c").startswith("a_b_c-") and safe_name("a_b_c") == "a_b_c"
    assert safe_name("a b") != safe_name("a_b") and safe_name("猫") != safe_name("犬")
    root = tmp_path / "VOC2012"
    from .test_localization_study import write_voc

    write_voc(root, ["2007_000001"])
    (root / "ImageSets/Segmentation/val.txt").write_text("../../escape/2007_000001\n")
    for sub, ext in (("JPEGImages", "jpg"), ("SegmentationObject", "png"), ("SegmentationClass", "png")):
        target = root / sub / "../../escape"
        target.mkdir(parents=True, exist_ok=True)
        (target / f"2007_000001.{ext}").write_bytes((root / sub / f"2007_000001.{ext}").read_bytes())
    out = tmp_path / "run"
    proc = run_main([*TINY, "data=voc", f"data.root={root}", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = {p.name for p in (out / "maps").iterdir()}
    assert len(written) == 2 and all(n.startswith("escape_2007_000001_obj") for n in written)
    assert sorted(p.name for p in (tmp_path / "escape").iterdir()) == ["2007_000001.jpg", "2007_000001.png"]


def test_degenerate_maps_have_defined_or_explained_metrics():
    import torch

    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:8, 4:8] = True
    maps = torch.stack([torch.full((4, 4), 0.3), torch.zeros(4, 4)])
    rows = image_rows({}, {0: maps}, {0: ["constant", "zero"]}, Target(mask), ScoreOptions([0.6]))
    constant, zero = rows
    assert constant["entropy"] == pytest.approx(1.0) and constant["auroc"] == pytest.approx(0.5)
    assert 0 <= constant["iou"] <= 1 and constant["notes"] == ""
    assert zero["auroc"] == pytest.approx(0.5) and zero["iou"] == 0.0
    assert zero["entropy"] != zero["entropy"] and "map is all zero: entropy, mass_in_mask undefined" in zero["notes"]
