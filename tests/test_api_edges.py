"""The Python API's edges and model loading: models without a CLS token, masks scored as a run scores them,
the user's train mode and buffers, 16-bit images, weights options, cast and unreadable models, and the
one-line messages for inputs the API cannot take."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import layerscope as ls
from layerscope.methods.registry import names

from .conftest import run_main

QUIET = ["progress=false", "figures.grid=false", "cache.enabled=false"]


def vit_without_cls(**kwargs):
    """A 2-block random-init timm ViT without a CLS token, mean-pooled (SigLIP's layout, tiny)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=8, depth=2,
                             embed_dim=32, num_heads=2, num_classes=0, class_token=False, global_pool="avg", **kwargs)


def picture(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


# ---- 4: a ViT without a CLS token -----------------------------------------------------------------------

def test_vit_without_cls_token_refuses_cls_methods_and_keeps_the_others():
    model = vit_without_cls()
    bb = ls.wrap(model)
    assert bb.num_prefix == 0 and not bb.has_cls and bb.representation_kinds == ("mean",)
    x = torch.randn(1, 3, 64, 64)
    for method in names(vit_only=True):
        with pytest.raises(ValueError, match=rf"^method={method} reads the CLS token's attention; model .* has no CLS "
                                             r"token \(timm class_token=False\); use a method that reads no attention: "
                                             r"features, a CAM, eigencam, patch_knn"):
            ls.maps(bb, x, method=method)
    with pytest.raises(ValueError, match=r"^method.embedding_target=cosine: expected norm"):
        ls.maps(bb, x, method="gradcam", embedding_target="cosine")  # cosine to a CLS token that is not there
    features = ls.maps(bb, x, method="features", reductions=["l2"])
    with torch.no_grad():
        tokens = model.blocks[1](model.blocks[0](model._pos_embed(model.patch_embed(x))))  # (1, 64, 32): no prefix
    np.testing.assert_allclose(features[1][0, 0], tokens[0].norm(dim=-1).reshape(8, 8).numpy(), rtol=1e-5, atol=1e-6)
    assert ls.maps(bb, x, method="auto").names == ["l2", "mean_abs", "pca"]  # auto: features, not CLS attention
    assert ls.maps(bb, x, method="gradcam").names == ["gradcam"]
    assert ls.wrap(vit_without_cls(reg_tokens=2)).num_prefix == 2  # registers but no CLS: still refused
    with pytest.raises(ValueError, match=r"^method=cls_attention reads the CLS token's attention"):
        ls.maps(ls.wrap(vit_without_cls(reg_tokens=2)), x, method="cls_attention")


@pytest.mark.slow
def test_run_refuses_cls_attention_on_siglip_before_any_weights_load(tmp_path):
    """SigLIP's timm arch (no CLS token): one line, exit 2, before the (missing) weights file is read."""
    args = ["model=timm", "model.arch=vit_base_patch16_siglip_224", "model.img_size=32", "+model.model_kwargs.depth=1",
            "model.weights.source=file", f"model.weights.path={tmp_path / 'absent.safetensors'}",
            "method=cls_attention",
            "data.textures=[brick]", "data.defects=[spot]", "data.size=32", *QUIET, f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_main(args, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: method=cls_attention reads the CLS token's attention; model "
                               "vit_base_patch16_siglip_224 has no CLS token")
    assert not (tmp_path / "run" / "results.csv").exists()
    ok = run_main([*args[:3], "model.pretrained=false", "+model.model_kwargs.depth=1", "method=features",
                   "data.textures=[brick]", "data.defects=[spot]", "data.per_combination=1", "data.good_per_texture=0",
                   "data.size=32", *QUIET, f"hydra.run.dir={tmp_path / 'ok'}"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]


# ---- 5: ls.score reads and resizes masks as a run does ----------------------------------------------------

def nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """Plain nearest-neighbour resizing (the rule ls.score used to follow), for contrast."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127


def any_pixel(mask: np.ndarray, size: int) -> np.ndarray:
    """Reference for shrinking: pixel centre (x + 0.5) * size / n falls in cell floor of it; a cell is defect
    where any of its pixels is (written from the rule, not from ``resize_mask``)."""
    out = np.zeros((size, size), bool)
    for y, x in zip(*np.nonzero(mask)):
        out[int((y + 0.5) * size / mask.shape[0]), int((x + 0.5) * size / mask.shape[1])] = True
    return out


def thin_masks(h: int, w: int) -> list[np.ndarray]:
    """1-pixel lines and dots, which nearest resizing to a coarser grid loses or thins."""
    masks = []
    for k in range(3):
        m = np.zeros((h, w), bool)
        m[20 + 9 * k, 10:90] = True       # a horizontal 1-px scratch
        m[30:110, 41 + 5 * k] = True      # a vertical one
        m[101 + k, 7 + 3 * k] = True      # a 1-px dot
        masks.append(m)
    return masks


def test_score_keeps_every_defect_cell_and_refuses_masks_that_do_not_fit():
    bb = ls.load("tiny_vit")  # 64 px
    images = [picture(128, 128, seed=i) for i in range(3)]
    masks = thin_masks(128, 128)
    m = ls.maps(bb, images, layers=[-1], method="cls_attention")
    assert m.sizes == [(128, 128)] * 3
    rows = ls.score(m, masks, threshold=0.6)
    for i, mask in enumerate(masks):
        expected = any_pixel(mask, 64)
        assert not np.array_equal(expected, nearest(mask, 64))  # the two rules differ on these masks
        fraction = rows.loc[rows["image"] == str(i), "mask_fraction"].iloc[0]
        assert fraction == pytest.approx(expected.mean(), abs=1e-6)
    as_files = ls.score(m, [Image.fromarray(mk.astype(np.uint8) * 255) for mk in masks], threshold=0.6)
    assert as_files["mask_fraction"].tolist() == rows["mask_fraction"].tolist()
    one = ls.maps(bb, [picture(50, 70)], layers=[-1], method="features")
    cases = [(np.zeros((10, 10), bool), r"^masks\[0\]: mask is 10x10, image 0 is 70x50; expected the same size"),
             (np.zeros((50, 70, 5), np.uint8), r"^masks\[0\]: a mask must be \(H, W\) or \(H, W, C\) with 1 to 4 "
                                               r"channels, got shape \(50, 70, 5\)"),
             (np.full((50, 70), np.nan), r"^masks\[0\]: the mask has NaN/inf values"),
             (np.zeros((50, 70), complex), r"^masks\[0\]: mask values of dtype complex128")]
    for mask, message in cases:
        with pytest.raises(ValueError, match=message):
            ls.score(one, [mask])


@pytest.mark.slow
def test_api_and_run_give_the_same_rows_on_thin_defects(tmp_path):
    """128 px images, 1-px scratches and dots, a 64 px model: the rows of ls.score equal results.csv."""
    import pandas as pd

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    thin = thin_masks(128, 128)
    for i, mask in enumerate(thin):
        Image.fromarray(picture(128, 128, seed=i)).save(images / f"im{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"im{i}.png")
    proc = run_main(["model=tiny_vit", "data=folder", f"data.root={images}", f"data.mask_dir={masks}",
                     "method=cls_attention", "threshold=[0.5,0.7]", "batch_size=3", *QUIET,
                     f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = sorted(images.glob("*.png"))
    m = ls.maps(ls.load("tiny_vit"), paths, method="cls_attention", batch_size=3)
    api = ls.score(m, thin, threshold=[0.5, 0.7])  # arrays here, files in the run: one reader
    cli = pd.read_csv(tmp_path / "run" / "results.csv", dtype={"head": str, "best_head": str})
    key = ["image", "layer", "head", "threshold"]
    cli, api = cli.sort_values(key).reset_index(drop=True), api.sort_values(key).reset_index(drop=True)
    assert list(api.columns) == list(cli.columns) and len(api) == len(cli) > 0
    assert cli["aupro"].notna().all()
    for column in ("mask_fraction", "auroc", "aupro", "iou", "pointing_game", "mass_inside"):
        if column in cli.columns and not cli[column].isna().all():
            np.testing.assert_allclose(api[column].astype(float), cli[column], rtol=1e-5, atol=1e-9, err_msg=column)
    fractions = cli.groupby("image")["mask_fraction"].first()
    for i, mask in enumerate(thin):  # the nearest rule would have given other fractions, other rows
        assert fractions[f"im{i}"] == pytest.approx(any_pixel(mask, 64).mean(), abs=1e-6)
        assert abs(fractions[f"im{i}"] - nearest(mask, 64).mean()) > 1e-3


# ---- 7: train mode and buffers ----------------------------------------------------------------------------

def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.slow
def test_maps_of_a_train_mode_batchnorm_resnet_run_in_eval_mode_and_leave_it_as_it_was():
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None, num_classes=5)
    bb = ls.wrap(resnet, layers=["layer3", "layer4"], img_size=64)
    images = [picture(64, 64, seed=s) for s in range(2)]
    reference = {m: ls.maps(bb, images, method=m) for m in ("features", "gradcam")}  # eval mode, as wrapped
    resnet.train()
    resnet.layer2.eval()  # a user's mixed modes come back as they were
    modes = {name: mod.training for name, mod in resnet.named_modules()}
    before = state(resnet)
    for method, expected in reference.items():
        got = ls.maps(bb, images, method=method)
        for layer in expected.layers:
            np.testing.assert_array_equal(got[layer], expected[layer])
    after = state(resnet)
    assert before.keys() == after.keys() and any("running_mean" in k for k in before)
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats, num_batches_tracked untouched
    assert {name: mod.training for name, mod in resnet.named_modules()} == modes


def test_maps_of_a_train_mode_dropout_vit_are_the_eval_maps_every_call():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=8, depth=2,
                              embed_dim=32, num_heads=2, num_classes=3, drop_rate=0.5, proj_drop_rate=0.5,
                              attn_drop_rate=0.5)
    bb = ls.wrap(model)
    x = torch.randn(2, 3, 64, 64)
    expected = ls.maps(bb, x, method="cls_attention")
    model.train()
    before = state(model)
    first, second = ls.maps(bb, x, method="cls_attention"), ls.maps(bb, x, method="cls_attention")
    for layer in expected.layers:
        np.testing.assert_array_equal(first[layer], expected[layer])
        np.testing.assert_array_equal(second[layer], expected[layer])
    np.testing.assert_array_equal(first.logits, expected.logits)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, state(model)[k]) for k, v in before.items())


# ---- 8: one rule for 16-bit images --------------------------------------------------------------------------

def test_a_16_bit_image_is_the_same_input_as_a_path_a_pil_object_and_an_array(tmp_path):
    bb = ls.load("tiny_vit")
    grey = np.random.default_rng(0).integers(0, 4000, (40, 56), dtype=np.uint16)  # dark 16-bit data
    Image.fromarray(grey).save(tmp_path / "g16.png")
    expected8 = np.round(grey / 65535 * 255).astype(np.uint8)  # 16-bit scaled by its type's range
    reference = ls.maps(bb, [np.repeat(expected8[..., None], 3, axis=2)], method="features")
    with Image.open(tmp_path / "g16.png") as opened:
        forms = [tmp_path / "g16.png", opened, Image.fromarray(grey), grey, grey[..., None],
                 np.repeat(grey[..., None], 3, axis=2)]
        for form in forms:
            m = ls.maps(bb, [form], method="features")
            np.testing.assert_array_equal(m.images, reference.images)
            np.testing.assert_array_equal(m[1], reference[1])
    assert reference.images.mean() < 20  # not clipped to white, as PIL's convert("RGB") did
    floats = ls.maps(bb, [grey.astype(np.float64) / 65535], method="features")
    np.testing.assert_array_equal(floats.images, reference.images)


def test_image_arrays_of_other_dtypes_and_shapes_are_refused_in_one_line():
    bb = ls.load("tiny_cnn")
    cases = [(np.zeros((0, 5, 3), np.uint8), r"^images\[0\]: an empty image \(5x0 pixels\)"),
             (Image.new("RGB", (5, 0)), r"^images\[0\]: an empty image \(5x0 pixels\)"),
             (np.zeros((8, 8, 3), np.int64), r"^images\[0\]: pixels of dtype int64; expected uint8 \(0..255\), uint16"),
             (np.zeros((8, 8, 3), bool), r"^images\[0\]: pixels of dtype bool"),
             (np.full((8, 8, 3), 2.0), r"^images\[0\]: float pixels must be finite and in \[0, 1\], got 2..2"),
             (np.full((8, 8, 3), np.nan), r"^images\[0\]: float pixels must be finite and in \[0, 1\], got NaN/inf"),
             (np.zeros((8, 8, 2), np.uint8), r"^images\[0\]: expected an \(H, W\), \(H, W, 3\) or \(H, W, 4\) image")]
    for image, message in cases:
        with pytest.raises(ValueError, match=message):
            ls.maps(bb, [image], method="features")


# ---- 10: a weights file with pretrained=false ---------------------------------------------------------------

def test_weights_file_with_pretrained_false_is_refused_in_the_api(tmp_path):
    from layerscope.backbones import WeightsError

    weights = {"source": "file", "path": str(tmp_path / "ckpt.safetensors")}
    for name, kwargs in (("tiny_cnn", {}), ("tiny_vit", {}), ("timm", {"arch": "resnet10t", "pretrained": False})):
        with pytest.raises(ValueError, match=r"^model .*: model.weights.source=file model.weights.path=.*ckpt"
                                             r".safetensors with model.pretrained=false: the file would not be read"):
            ls.load(name, weights=weights, **kwargs)
    with pytest.raises(WeightsError, match=r"^model.weights.path=.*ckpt.safetensors: no such file"):
        ls.load("tiny_cnn", weights=weights, pretrained=True)  # with pretrained=true the file is what loads
    from safetensors.torch import save_file

    torch.manual_seed(3)
    donor = ls.load("tiny_cnn", seed=3)
    save_file({k: v.contiguous() for k, v in donor.model.state_dict().items()}, weights["path"])
    loaded = ls.load("tiny_cnn", weights=weights, pretrained=True, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), donor.model.state_dict().values()))


def test_weights_file_with_pretrained_false_is_refused_by_the_run(tmp_path):
    proc = run_main(["model=tiny_cnn", "model.weights.source=file", "model.weights.path=/nonexistent.pth",
                     "data.textures=[brick]", "data.defects=[spot]", "data.size=64", *QUIET,
                     f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0] == ("error: model tiny_cnn: model.weights.source=file model.weights.path=/nonexistent.pth with "
                        "model.pretrained=false: the file would not be read (random init); set model.pretrained=true "
                        "to load it, or drop the weights options for random init")
    assert not (tmp_path / "run" / "results.csv").exists()


# ---- 16: models the API must cast or refuse -----------------------------------------------------------------

@pytest.fixture(scope="module")
def float32_maps():
    """tiny_cnn's features and Grad-CAM (class 1) and tiny_vit's CLS attention of two pictures, in float32."""
    images = [picture(64, 64, seed=s) for s in range(2)]
    cnn = ls.load("tiny_cnn", num_classes=4)
    return images, {"features": ls.maps(cnn, images, layers=[3, 4], method="features"),
                    "gradcam": ls.maps(cnn, images, layers=[3, 4], method="gradcam", target=1),
                    "cls_attention": ls.maps(ls.load("tiny_vit"), images, method="cls_attention")}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5),
                                       pytest.param(torch.bfloat16, 6e-2, marks=pytest.mark.slow),
                                       pytest.param(torch.float16, 1e-2, marks=pytest.mark.slow)])
def test_a_cast_model_gets_its_input_in_its_dtype_and_gives_float32_maps(dtype, tol, float32_maps):
    images, expected = float32_maps
    cnn, vit = ls.load("tiny_cnn", num_classes=4).to(dtype), ls.load("tiny_vit").to(dtype)
    for method, reference in expected.items():
        got = ls.maps(vit if method == "cls_attention" else cnn, images, layers=reference.layers, method=method,
                      target=1 if method == "gradcam" else None)
        for layer in reference.layers:
            assert got[layer].dtype == np.float32
            scale = np.abs(reference[layer]).max()
            np.testing.assert_allclose(got[layer], reference[layer], atol=tol * scale, rtol=0, err_msg=method)
    assert next(cnn.model.parameters()).dtype == dtype  # the model stays as the user cast it
    wrapped = ls.wrap(ls.load("tiny_cnn", num_classes=4).model.to(dtype), layers=["layer4"], img_size=64)
    reference = expected["features"][4][:, :1]  # l2 of layer4 == the last stage
    got = ls.maps(wrapped, images, method="features", reductions=["l2"])["layer4"]
    np.testing.assert_allclose(got, reference, atol=tol * np.abs(reference).max(), rtol=0)


@pytest.mark.slow
def test_faithfulness_of_a_cast_model_runs_it_in_its_dtype(float32_maps):
    images, expected = float32_maps
    reference = expected["gradcam"]
    got = ls.maps(ls.load("tiny_cnn", num_classes=4).double(), images, layers=[4], method="gradcam", target=1)
    options = dict(faithfulness=True, faithfulness_steps=3, faithfulness_tie_orders=1)
    rows = ls.score(got, None, **options)
    expected_rows = ls.score(reference, None, **options)
    expected_rows = expected_rows[expected_rows["layer"] == 4].reset_index(drop=True)
    assert len(rows) == len(expected_rows) > 0 and rows["deletion_auc"].notna().all()
    np.testing.assert_allclose(rows["deletion_auc"], expected_rows["deletion_auc"], atol=1e-4)
    np.testing.assert_allclose(rows["insertion_auc"], expected_rows["insertion_auc"], atol=1e-4)


def test_models_layerscope_cannot_read_are_one_clear_value_error(monkeypatch):
    import timm

    with pytest.raises(ValueError, match=r"^wrap: a FeatureListNet is a timm features_only=True model"):
        ls.wrap(timm.create_model("resnet10t", pretrained=False, features_only=True))
    with pytest.raises(ValueError, match=r"^model.arch=resnet10t: model.model_kwargs.features_only=true gives a "
                                         r"FeatureListNet"):
        ls.load("timm", arch="resnet10t", pretrained=False, model_kwargs={"features_only": True})
    eva = timm.create_model("eva02_tiny_patch14_224", pretrained=False, depth=1, img_size=28)
    with pytest.raises(ValueError, match=r"^model eva02_tiny_patch14_224: .*\(Eva\) is neither a ViT whose attention "
                                         r"layerscope reads nor a CNN: its stage blocks.0 gives \(1, 5, 192\)"):
        ls.wrap(eva)
    assert ls.wrap(eva, layers=["blocks.0"]).kind == "module"  # the way out the message gives
    with pytest.raises(ValueError, match=r"^model beit_base_patch16_224: .*\(Beit\) is neither a ViT"):
        ls.load("timm", arch="beit_base_patch16_224", pretrained=False,
                model_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})
    with pytest.raises(ValueError, match=r"^model beit_base_patch16_224: beit_base_patch16_224 \(Beit\) fails on a "
                                         r"32 px image \(AssertionError: Input height \(32\) doesn't match"):
        ls.load("timm", arch="beit_base_patch16_224", pretrained=False, img_size=32,
                model_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})
    with pytest.raises(ValueError, match=r"^device='tpu': not a torch device; expected 'cpu', 'cuda'"):
        ls.load("tiny_cnn", device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device='cuda': no CUDA device is visible on this machine; use "
                                         r"device='cpu'"):
        ls.load("tiny_cnn", device="cuda")


# ---- 17: one-line messages ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_numpy_and_torch_integers_are_taken_for_layers_and_targets():
    bb = ls.load("tiny_cnn", num_classes=4)
    image = [picture()]
    for layers in (np.array([1, 2]), [np.int64(1), torch.tensor(2)], (np.int32(1), 2)):
        assert ls.maps(bb, image, layers=layers, method="features").layers == [1, 2]
    last = ls.maps(bb, image, layers=np.int64(-1), method="features")
    assert last.layers == [4] and last[np.int64(-1)].shape == last[4].shape
    reference = ls.maps(bb, image, layers=[2], method="gradcam", target=2)
    for target in (np.int64(2), [np.int64(2)], np.array([2]), torch.tensor(2)):
        np.testing.assert_array_equal(ls.maps(bb, image, layers=[2], method="gradcam", target=target)[2], reference[2])
    assert reference.overlay(np.int64(0), np.int64(2), k=np.int64(0)).size == (64, 64)


def test_inputs_the_api_cannot_take_are_one_line_errors():
    import torchvision

    bb = ls.load("tiny_cnn", num_classes=4)
    image = [picture()]
    m = ls.maps(bb, image, method="features")
    cases = [
        (lambda: ls.maps(bb, image, layers=1.0, method="features"),
         r"^layers=1.0: expected an int \(negative from the end\), a module"),
        (lambda: ls.maps(bb, image, layers=[1.5], method="features"), r"^layers=1.5: expected an int"),
        (lambda: ls.maps(bb, torch.zeros(0, 3, 64, 64), method="features"), r"^images: an empty batch"),
        (lambda: ls.maps(bb, torch.zeros(1, 3, 64, 64, dtype=torch.uint8), method="features"),
         r"^images: a tensor is taken as the model's preprocessed \(normalised, float\) input, got torch.uint8; pass"),
        (lambda: ls.maps(bb, torch.zeros(1, 3, 64, 64, dtype=torch.bool), method="features"), r"got torch.bool"),
        (lambda: ls.maps(bb, torch.zeros(1, 3, 64, 64, dtype=torch.complex64), method="features"),
         r"got torch.complex64"),
        (lambda: ls.maps(bb, image, method="features", batch_size=0), r"^batch_size=0: expected an int >= 1"),
        (lambda: m.upsample(0), r"^upsample: size=0: expected a side in pixels >= 1, or \(h, w\)"),
        (lambda: m.upsample((8, -1)), r"^upsample: size=\(8, -1\)"),
        (lambda: m.overlay(0, 1, k="nope"), r"^overlay: k='nope' is not a map of these maps; their names: l2, "
                                            r"mean_abs, pca"),
        (lambda: m.overlay(0, 1, k=7), r"^overlay: k=7: expected a map index in -3..2"),
        (lambda: m.overlay(3, 1), r"^overlay: i=3: expected an image index in 0..0"),
        (lambda: ls.maps(bb, image, method="gradcam", target=lambda out: out[:, 1].detach()),
         r"^target: the callable's score does not depend on the model's output through autograd"),
        (lambda: ls.wrap(torchvision.models.resnet18(), layers=["layer4"], std=[0, 0, 0]),
         r"^std=\[0, 0, 0\]: expected 3 positive numbers \(R, G, B\)"),
        (lambda: ls.wrap(torchvision.models.resnet18(), layers=["layer4"], img_size=3.7),
         r"^img_size=3.7: expected a positive int \(pixels\)"),
        (lambda: ls.load("tiny_cnn", img_size=3.7), r"^model.img_size=3.7: expected a positive int"),
        (lambda: ls.load("tiny_cnn", std=[1, 0, 1]), r"^model.std=\[1, 0, 1\]: expected 3 positive numbers"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    with torch.inference_mode(), pytest.raises(ValueError, match=r"^method=gradcam needs gradients, which "
                                                                r"torch.inference_mode\(\) forbids"):
        ls.maps(bb, image, method="gradcam")
    with torch.no_grad():  # what the message offers instead works
        assert ls.maps(bb, image, method="gradcam").names == ["gradcam"]


def test_a_transformers_output_object_in_a_target_callable_says_to_use_its_logits():
    import transformers

    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                                    patch_size=8, image_size=64, num_labels=5)
    bb = ls.wrap(transformers.ViTForImageClassification(config).eval())
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"^target: the callable failed on the model's output, an object of type "
                                         r"ImageClassifierOutput, not a tensor \(TypeError: .*\); its class logits are "
                                         r"out.logits \(target=lambda out: out.logits\[:, k\]\)"):
        ls.maps(bb, x, method="gradcam", target=lambda out: out[:, 3])
    np.testing.assert_array_equal(ls.maps(bb, x, method="gradcam", target=lambda out: out.logits[:, 3])[1],
                                  ls.maps(bb, x, method="gradcam", target=3)[1])
