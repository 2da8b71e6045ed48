"""One forward pass captures every layer; CLS rows equal the model's own attention."""
from __future__ import annotations

import pytest
import timm
import torch

from layerscope.backbones import TimmCNN, TimmViT, forward_hooks, select_indices

from .conftest import eager_reference, tiny_hf_vit

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def timm_vit(arch="vit_tiny_patch16_224", **kwargs):
    kw = dict(depth=3, embed_dim=48, num_heads=3, patch_size=8)
    kw.update(kwargs)
    return TimmViT("t", arch, img_size=kw.pop("img_size", 64), mean=MEAN, std=STD, pretrained=False, model_kwargs=kw)


def eager_timm(bb: TimmViT, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """Every layer's full attention (B, H, N, N) from timm's non-fused path: the softmax output the model uses."""
    full, hooks = {}, []
    for i, blk in enumerate(bb.model.blocks):
        blk.attn.fused_attn = False
        hooks.append((blk.attn.attn_drop, lambda m, inp, out, i=i: full.__setitem__(i, inp[0])))
    with forward_hooks(hooks), torch.no_grad():
        bb.model(bb.normalize(x))
    for blk in bb.model.blocks:
        blk.attn.fused_attn = True
    return full


@pytest.mark.parametrize("kwargs", [{}, {"arch": "vit_small_patch14_reg4_dinov2", "patch_size": 14, "img_size": 56}])
def test_timm_cls_attention_equals_eager_attention(kwargs):
    torch.manual_seed(0)
    bb = timm_vit(**kwargs)
    x = torch.rand(2, 3, bb.img_size, bb.img_size)
    captured, _ = bb.extract(x, list(range(bb.num_layers)), "cls_attention")
    full = {layer: a[:, :, 0] for layer, a in eager_timm(bb, x).items()}  # the CLS rows
    g = bb.img_size // bb.patch_size
    for layer in range(bb.num_layers):
        expected = full[layer][:, :, bb.num_prefix:].reshape(2, bb.num_heads, g, g)
        assert captured[layer].shape == (2, bb.num_heads, g, g)
        torch.testing.assert_close(captured[layer], expected, atol=1e-5, rtol=0)
    # registers are read from the model, never assumed
    assert bb.num_prefix == (5 if "reg4" in kwargs.get("arch", "") else 1)


def test_hf_vit_cls_attention_equals_output_attentions():
    bb = tiny_hf_vit()
    x = torch.rand(2, 3, 64, 64)
    captured, logits = bb.extract(x, [0, 1, 2], "cls_attention")
    with torch.no_grad():
        out = eager_reference(bb, x)
    assert len(out.attentions) == 3
    for layer, attn in enumerate(out.attentions):
        torch.testing.assert_close(captured[layer], attn[:, :, 0, 1:].reshape(2, 3, 8, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, out.logits, atol=1e-4, rtol=1e-4)


def test_vit_features_every_layer_shapes():
    bb = timm_vit()
    captured, logits = bb.extract(torch.rand(2, 3, 64, 64), [0, 1, 2], "features")
    assert logits is None
    assert {k: tuple(v.shape) for k, v in captured.items()} == {i: (2, 48, 8, 8) for i in range(3)}


def test_cnn_every_stage_shapes_and_strides():
    bb = TimmCNN("c", "resnet18", img_size=64, mean=MEAN, std=STD, pretrained=False, num_classes=0)
    assert bb.num_layers == 5
    captured, _ = bb.extract(torch.rand(2, 3, 64, 64), list(range(5)), "features")
    for layer, stride in enumerate(bb.strides):
        assert captured[layer].shape[0] == 2 and captured[layer].shape[-2:] == (64 // stride, 64 // stride)
    with pytest.raises(ValueError, match=r"method=cls_attention does not apply to model c \(cnn\): it needs attention \(a ViT\)"):
        bb.extract(torch.rand(1, 3, 64, 64), [0], "cls_attention")


def test_hooks_are_removed_after_extraction():
    bb = timm_vit()
    bb.extract(torch.rand(1, 3, 64, 64), [0, 1, 2], "cls_attention")
    assert all(not m._forward_hooks for m in bb.model.modules())


def test_select_indices():
    assert select_indices("all", 4, "layer") == [0, 1, 2, 3]
    assert select_indices(-1, 12, "layer") == [11]
    assert select_indices([0, -1, 0], 12, "layer") == [0, 11]
    with pytest.raises(ValueError, match=r"layer=12 is out of range: this model has 12 layers, valid -12..11"):
        select_indices(12, 12, "layer")
    with pytest.raises(ValueError, match=r"head=-7 is out of range"):
        select_indices([-7], 6, "head")
    with pytest.raises(ValueError, match="expected an int"):
        select_indices(["x"], 6, "head")


@pytest.mark.slow
def test_dino_configs_build_the_intended_timm_architecture():
    bb = TimmViT("d", "vit_small_patch8_224", img_size=480, mean=MEAN, std=STD, pretrained=False)
    assert (bb.num_layers, bb.num_heads, bb.patch_size, bb.grid) == (12, 6, 8, (60, 60))
    assert timm.models.get_pretrained_cfg("vit_small_patch8_224.dino").hf_hub_id
