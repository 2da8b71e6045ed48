"""The Python API (load, wrap, maps, score) against the models' own computations and against a run."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import layerscope as ls

from .conftest import ROOT, run_main

HF_KW = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=96, patch_size=8,
             image_size=64)


def hf_model(kind: str, attn: str = "eager"):
    """A random-init transformers vision model with eager attention (the write-up's ``output_attentions``)."""
    import transformers

    torch.manual_seed(0)
    config_cls, model_cls = {
        "ViTModel": ("ViTConfig", "ViTModel"),
        "ViTForImageClassification": ("ViTConfig", "ViTForImageClassification"),
        "Dinov2WithRegistersModel": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel"),
        "DeiTModel": ("DeiTConfig", "DeiTModel"),
    }[kind]
    config = getattr(transformers, config_cls)(**HF_KW, num_labels=5)
    config._attn_implementation = attn
    return getattr(transformers, model_cls)(config).eval()


@pytest.mark.slow
@pytest.mark.parametrize("kind,prefix", [("ViTModel", 1), ("Dinov2WithRegistersModel", 5), ("DeiTModel", 2)])
def test_wrapped_transformers_cls_attention_equals_output_attentions_every_layer(kind, prefix):
    model = hf_model(kind)
    bb = ls.wrap(model)
    assert bb.num_prefix == prefix and bb.num_layers == 3 and bb.img_size == 64
    x = torch.randn(2, 3, 64, 64)  # already preprocessed: the model's own input
    m = ls.maps(bb, x, method="cls_attention")
    with torch.no_grad():
        out = model(pixel_values=x, output_attentions=True)
    assert m.layers == [0, 1, 2] and m.names == ["0", "1", "2", "mean"]
    for layer in range(3):
        expected = out.attentions[layer][:, :, 0, prefix:].reshape(2, 3, 8, 8)  # the write-up's computation
        np.testing.assert_allclose(m[layer][:, :3], expected.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(m[layer][:, 3], expected.mean(1).numpy(), atol=1e-5, rtol=0)
    by_name = ls.maps(bb, x, layers=bb.layer_names()[1], method="cls_attention")
    np.testing.assert_array_equal(by_name[1], m[1])


def reference_gradcam(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Grad-CAM per channel: relu(sum_c mean_xy(grad_c) * act_c), (B, C, h, w) -> (B, h, w)."""
    out = torch.zeros(act.shape[0], *act.shape[2:])
    for b in range(act.shape[0]):
        for c in range(act.shape[1]):
            out[b] += grad[b, c].mean() * act[b, c]
    return out.clamp(min=0)


def plain_gradcam(model, modules, x, score_fn):
    """Grad-CAM with plain forward hooks and tensor hooks, one backward, as users write it."""
    acts, grads = {}, {}

    def keep(name):
        def hook(_m, _i, out):
            acts[name] = out.detach()
            out.register_hook(lambda g: grads.__setitem__(name, g.detach()))
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in modules.items()]
    try:
        score_fn(model(x)).sum().backward()
    finally:
        for h in handles:
            h.remove()
    model.zero_grad()
    return {n: reference_gradcam(acts[n], grads[n]) for n in modules}


@pytest.mark.slow
def test_wrapped_torchvision_resnet18_gradcam_equals_plain_hooks_for_class_and_callable_targets():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    bb = ls.wrap(model, layers=["layer3", "layer4"])
    assert bb.num_classes == 1000 and bb.kind == "module" and bb.img_size == 224
    x = torch.randn(2, 3, 224, 224)
    modules = {"layer3": model.layer3, "layer4": model.layer4}
    mixed = lambda out: out[:, 3] - 0.5 * out[:, 7]  # noqa: E731 - any differentiable score per image
    for target, score_fn in ((3, lambda out: out[:, 3]), (mixed, mixed), ([5, 9], lambda out: out[:, [5, 9]].diag()),
                             (None, lambda out: out.gather(1, out.argmax(-1, keepdim=True))[:, 0])):
        m = ls.maps(bb, x, method="gradcam", target=target, batch_size=2)
        expected = plain_gradcam(model, modules, x, score_fn)
        for name in modules:
            assert m[name].shape == (2, 1, *expected[name].shape[-2:])
            np.testing.assert_allclose(m[name][:, 0], expected[name].numpy(), atol=1e-5, rtol=1e-4)
        assert np.abs(m["layer4"]).sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_wrapped_transformers_classifier_takes_a_callable_on_its_output():
    model = hf_model("ViTForImageClassification", attn="sdpa")
    bb = ls.wrap(model)
    assert bb.num_classes == 5 and bb.labels is not None
    x = torch.randn(2, 3, 64, 64)
    by_class = ls.maps(bb, x, method="gradcam", target=2)
    by_callable = ls.maps(bb, x, method="gradcam", target=lambda out: out.logits[:, 2])  # the model's own output
    for layer in by_class.layers:
        np.testing.assert_array_equal(by_class[layer], by_callable[layer])
    assert np.abs(by_class[0]).sum() > 0


def test_patch_knn_learns_from_references():
    bb = ls.load("tiny_cnn")
    rng = np.random.default_rng(0)
    normal = [rng.integers(100, 110, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    odd = normal[0].copy()
    odd[8:24, 8:24] = 255
    m = ls.maps(bb, [normal[0], odd], layers=[2], method="patch_knn", references=normal, k=1)
    assert m.names == ["knn"] and m[2].shape == (2, 1, 8, 8)
    assert m[2][0].max() < 1e-3 < m[2][1, 0, 1:3, 1:3].min()  # a reference itself is at distance 0
    with pytest.raises(ValueError, match=r"^method=patch_knn learns from defect-free images: give references="):
        ls.maps(bb, [odd], method="patch_knn")


@pytest.mark.slow
def test_target_and_layer_mistakes_are_one_line_errors():
    import torchvision

    bb = ls.wrap(torchvision.models.resnet18(weights=None), layers=["layer4"])
    x = torch.randn(2, 3, 224, 224)
    for kwargs, message in (
            (dict(method="features", target=3), r"^target= applies to gradient methods"),
            (dict(method="gradcam", target=1000), r"^method.target_class=1000 is out of range"),
            (dict(method="gradcam", target=[1, 2, 3]), r"^target: 3 classes for 2 images"),
            (dict(method="gradcam", target=lambda out: out), r"^target: the callable returned \(2, 1000\)"),
            (dict(method="cls_attention"), r"^method=cls_attention needs attention that layerscope can read"),
            (dict(method="gradcam", layers="layer9"), r"^layers='layer9': not a layer of model ResNet"),
            (dict(method="nope"), r"^method=nope: no such config; available: .*gradcam"),
            (dict(method="features", reductions=["l2"], colour=1), r"^method.colour: no such option")):
        with pytest.raises(ValueError, match=message):
            ls.maps(bb, x, **kwargs)
    with pytest.raises(ValueError, match=r"^layers='layer9': ResNet has no module of that name \(closest: layer"):
        ls.wrap(bb.model, layers=["layer9"])
    with pytest.raises(ValueError, match=r"^wrap: layerscope cannot find the layers of a ResNet by itself; give layers="):
        ls.wrap(bb.model)
    with pytest.raises(ValueError, match=r"^layers='fc': output \(1, 1000\) is not a map"):
        ls.wrap(bb.model, layers=["fc"])
    with pytest.raises(ValueError, match=r"^images: a tensor is taken as the model's preprocessed input"):
        ls.maps(bb, torch.randn(1, 3, 100, 100), method="features")


def tiny_timm_vit(num_classes=0):
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=8, depth=2,
                             embed_dim=32, num_heads=2, num_classes=num_classes)


@pytest.mark.slow
def test_wrapped_timm_vit_reads_preprocessing_and_named_modules_give_the_same_features():
    model = tiny_timm_vit()
    bb = ls.wrap(model)
    assert (bb.kind, bb.img_size, bb.num_prefix, bb.layer_names()) == ("vit", 64, 1, ["blocks.0", "blocks.1"])
    torch.testing.assert_close(bb.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))  # vit_tiny's pretrained_cfg
    images = [np.random.default_rng(i).integers(0, 255, (50, 70, 3), dtype=np.uint8) for i in range(2)]
    whole = ls.maps(bb, images, layers="blocks.1", method="features")
    generic = ls.maps(ls.wrap(model, layers=["blocks.1"]), images, method="features")  # tokens -> grid
    np.testing.assert_allclose(generic["blocks.1"], whole["blocks.1"], atol=1e-6)
    norm1 = ls.maps(ls.wrap(model, layers=["blocks.1.norm1"]), images, method="eigencam")
    assert norm1["blocks.1.norm1"].shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"^img_size=96: this timm model takes \(64, 64\) px"):
        ls.wrap(model, img_size=96)


def test_images_as_paths_pil_and_arrays_give_identical_maps_and_overlays(tmp_path):
    bb = ls.load("tiny_vit")
    rgb = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "cat.png")
    a = ls.maps(bb, [tmp_path / "cat.png"], method="cls_attention")
    b = ls.maps(bb, Image.fromarray(rgb), method="cls_attention")
    c = ls.maps(bb, rgb, method="cls_attention")
    assert a.ids == ["cat"] and b.ids == ["0"]
    for layer in a.layers:
        np.testing.assert_array_equal(a[layer], b[layer])
        np.testing.assert_array_equal(a[layer], c[layer])
    up = a.upsample()
    assert up[0].shape == (1, 3, 64, 64) and a[0].shape == (1, 3, 8, 8)
    assert up[0].max() <= a[0].max() + 1e-7 and up[0].min() >= a[0].min() - 1e-7  # bilinear: no new extremes
    np.testing.assert_array_equal(a.upsample(64, mode="nearest")[0], a[0].repeat(8, -1).repeat(8, -2))
    picture = a.overlay(0, 1, "mean")
    assert picture.size == (64, 64) and picture.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(a.overlay(0, 1, alpha=0.0)), a.images[0])
    hot = np.asarray(a.overlay(0, 1, alpha=1.0)).reshape(-1, 3)
    from layerscope.figures.grid import colormap

    assert (hot == colormap()[255]).all(-1).any() and (hot == colormap()[0]).all(-1).any()


@pytest.mark.slow
def test_api_and_a_cli_run_give_identical_maps_and_rows(tmp_path):
    """Same model (random init, seed 0), images, masks and options: the saved maps .npz and results.csv
    of ``layerscope`` equal ``ls.maps`` and ``ls.score``."""
    import pandas as pd

    from layerscope.results.maps_io import load_maps

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(images / f"{name}.png")
        mask = np.zeros((48, 80), np.uint8)
        mask[10:30, 20:50] = 255
        Image.fromarray(mask).save(masks / f"{name}.png")
    run = tmp_path / "run"
    proc = run_main(["model=tiny_vit", "data=folder", f"data.root={images}", f"data.mask_dir={masks}",
                     "method=cls_attention", "threshold=[0.5,0.7]", "progress=false", "cache.enabled=false",
                     "figures.grid=false", "batch_size=2", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = sorted(images.glob("*.png"))
    m = ls.maps(ls.load("tiny_vit"), paths, method="cls_attention", batch_size=2)  # the run's batches
    for i, path in enumerate(paths):
        saved = load_maps(run / "maps" / f"{path.stem}.npz")
        assert saved["maps"].keys() == set(m.layers)
        for layer in m.layers:
            np.testing.assert_array_equal(saved["maps"][layer], m[layer][i])
        np.testing.assert_array_equal(saved["image"], m.images[i])
    cli = pd.read_csv(run / "results.csv", dtype={"head": str, "best_head": str})
    api = ls.score(m, [masks / p.name for p in paths], threshold=[0.5, 0.7])
    assert list(api.columns) == list(cli.columns) and len(api) == len(cli)
    key = ["image", "layer", "head", "threshold"]
    cli, api = cli.sort_values(key).reset_index(drop=True), api.sort_values(key).reset_index(drop=True)
    for column in cli.columns:
        if column in ("dataset", "source", "category", "group", "notes") or cli[column].isna().all():
            continue
        if cli[column].dtype.kind in "fi":
            np.testing.assert_allclose(api[column].astype(float), cli[column], rtol=1e-5, atol=1e-9,
                                       err_msg=column)  # results.csv keeps 6 significant digits
        else:
            assert (api[column].fillna("").astype(str) == cli[column].fillna("").astype(str)).all(), column


@pytest.mark.slow
def test_timm_and_hf_configs_on_the_command_line(tmp_path):
    """model=timm runs a ViT and a CNN arch that conf/model/ does not name (random init, no network)."""
    names = {p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")}
    archs = ["deit_tiny_patch16_224", "resnet10t"]
    assert not any(a in (ROOT / "conf" / "model" / f"{n}.yaml").read_text() for a in archs for n in names)
    proc = run_main(["-m", "model=timm", f"model.arch={','.join(archs)}", "model.pretrained=false", "model.img_size=64",
                     "data.textures=[brick]", "data.defects=[spot]", "data.size=64", "progress=false",
                     "figures.grid=false", "cache.enabled=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import pandas as pd

    kinds = {}
    for job in sorted((tmp_path / "sweep").glob("[0-9]*")):
        summary = json.loads((job / "run_summary.json").read_text())
        df = pd.read_csv(job / "results.csv", dtype={"head": str})
        assert summary["complete"] and len(df) > 0
        kinds[summary["model"]] = (df["kind"].iloc[0], df["method"].iloc[0], int(df["layer"].max()) + 1)
    assert kinds == {"deit_tiny_patch16_224": ("vit", "cls_attention", 12), "resnet10t": ("cnn", "features", 5)}
    proc = run_main(["model=timm", "progress=false"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: model=timm needs model.arch=")


@pytest.mark.slow
def test_load_timm_by_name_reads_the_pretrained_cfg_and_the_run_seed():
    bb = ls.load("timm", arch="vit_tiny_patch16_224.augreg_in21k", pretrained=False, img_size=32,
                 model_kwargs={"depth": 2})
    assert (bb.name, bb.kind, bb.img_size, bb.num_layers, bb.num_classes) == (
        "vit_tiny_patch16_224.augreg_in21k", "vit", 32, 2, 21843)
    torch.testing.assert_close(bb.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    again = ls.load("tiny_cnn")
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = ls.load("tiny_cnn")
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), again.parameters()))
    with pytest.raises(ValueError, match=r"^model.colour: no such option"):
        ls.load("tiny_cnn", colour=1)
    with pytest.raises(ValueError, match=r"^model=nope: no such config; available: "):
        ls.load("nope")
    with pytest.raises(ValueError, match=r"^model.arch=not_a_model: timm has no such model"):
        ls.load("timm", arch="not_a_model")


@pytest.mark.slow
def test_hf_config_from_a_local_folder_loads_its_weights_and_processor(tmp_path):
    model = hf_model("Dinov2WithRegistersModel", attn="sdpa")
    model.save_pretrained(tmp_path / "dino")
    (tmp_path / "dino" / "preprocessor_config.json").write_text(json.dumps(
        {"do_center_crop": True, "crop_size": {"height": 56, "width": 56}, "size": {"shortest_edge": 64},
         "image_mean": [0.4, 0.4, 0.4], "image_std": [0.2, 0.2, 0.2]}))
    bb = ls.load("hf", hub_id=str(tmp_path / "dino"))
    assert (bb.name, bb.img_size, bb.num_prefix, bb.num_classes) == ("dino", 56, 5, 0)
    torch.testing.assert_close(bb.std.flatten(), torch.tensor([0.2, 0.2, 0.2]))
    x = torch.randn(1, 3, 56, 56)
    ours = ls.maps(bb, x, method="cls_attention")
    wrapped = ls.maps(ls.wrap(model, img_size=56), x, method="cls_attention")  # the saved weights were loaded
    for layer in ours.layers:
        np.testing.assert_allclose(ours[layer], wrapped[layer], atol=1e-6)
    random = ls.load("hf", hub_id=str(tmp_path / "dino"), pretrained=False, seed=1)
    assert not np.allclose(ls.maps(random, x, layers=[0])[0], ours[0])
    from layerscope.backbones import WeightsError

    with pytest.raises(WeightsError, match=r"^model.hub_id=no-one/nothing: .*not in the local hub cache.*local model "
                                           r"folder"):
        ls.load("hf", hub_id="no-one/nothing")  # offline in the tests: one line, no traceback in a run
    with pytest.raises(ValueError, match=r"^model=hf needs model.hub_id="):
        ls.load("hf")


@pytest.mark.slow
def test_faithfulness_from_score_matches_the_function():
    from layerscope.metrics.faithfulness import deletion_insertion

    bb = ls.load("tiny_cnn", num_classes=10)
    images = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(2)]
    m = ls.maps(bb, images, layers=[3], method="gradcam", target=[2, 4])
    df = ls.score(m, None, faithfulness=True, faithfulness_steps=4)
    x = torch.from_numpy(m.images).permute(0, 3, 1, 2).float() / 255
    expected = deletion_insertion(lambda z: bb.logits(bb.normalize(z)), x, torch.from_numpy(m[3]), torch.tensor([2, 4]),
                                  steps=4, batch_size=16)
    np.testing.assert_allclose(df["deletion_auc"], expected[:, 0, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(df["insertion_auc"], expected[:, 0, 1].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"^colour: not a scoring option"):
        ls.score(m, None, colour=1)


@pytest.mark.slow
def test_import_layerscope_stays_cheap():
    code = ("import sys, layerscope as ls; assert 'torch' not in sys.modules, 'torch'; "
            "assert callable(ls.load) and callable(ls.maps) and 'torch' in sys.modules")
    env_path = str(ROOT / "src")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_docstring_examples_run():
    import doctest

    from layerscope import api
    from layerscope.api import compute, models, scores
    from layerscope.metrics import faithfulness

    for module in (api, models, compute, scores, faithfulness):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted >= 2 and result.failed == 0, module.__name__


def test_ls_maps_is_the_api_function_not_a_module():
    """``ls.maps`` and ``from layerscope import maps`` are the plain API function (its own signature and
    docstring); the map methods live in ``layerscope.methods``."""
    import inspect

    import layerscope.api
    from layerscope import maps

    assert maps is layerscope.api.maps and inspect.isfunction(ls.maps)
    assert list(inspect.signature(ls.maps).parameters)[:2] == ["backbone", "images"]
    assert ls.maps.__doc__ == layerscope.api.maps.__doc__
