"""Thresholds, reductions and upsampling on hand-built and random maps."""
from __future__ import annotations

import pytest
import torch

from layerscope.methods import keep_mass, reduce_features, threshold_maps, upsample
from layerscope.methods.reduce import l2, mean_abs, pca


def keep_mass_reference(attn: torch.Tensor, mass: float) -> torch.Tensor:
    """DINO's visualize_attention.py loop, written out plainly per row."""
    flat = attn.reshape(-1, attn.shape[-1])
    out = torch.zeros_like(flat, dtype=torch.bool)
    for r, row in enumerate(flat):
        val, idx = torch.sort(row)
        val = val / val.sum()
        cumval = torch.cumsum(val, dim=0)
        th = cumval > (1 - mass)
        idx2 = torch.argsort(idx)
        out[r] = th[idx2]
    return out.reshape(attn.shape)


@pytest.mark.parametrize("mass", [0.0, 0.3, 0.6, 0.9, 1.0])
def test_keep_mass_equals_reference(mass):
    g = torch.Generator().manual_seed(1)
    attn = torch.rand(3, 4, 50, generator=g) ** 3
    assert torch.equal(keep_mass(attn, mass), keep_mass_reference(attn, mass))


def test_keep_mass_hand_case():
    attn = torch.tensor([0.1, 0.5, 0.3, 0.1])
    # sorted 0.1 0.1 0.3 0.5 -> cumsum 0.1 0.2 0.5 1.0; > 0.4 keeps 0.3 and 0.5
    assert keep_mass(attn, 0.6).tolist() == [False, True, True, False]
    assert keep_mass(attn, 0.6).dtype == torch.bool
    with pytest.raises(ValueError, match=r"threshold=1.5"):
        keep_mass(attn, 1.5)


def test_keep_mass_keeps_at_least_the_mass():
    attn = torch.rand(100, 64)
    kept = keep_mass(attn, 0.6)
    share = (attn * kept).sum(-1) / attn.sum(-1)
    assert (share >= 0.6 - 1e-6).all()


def test_threshold_rules_on_maps():
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 1, 1] = 1.0
    maps[0, 1] = torch.arange(16.0).view(4, 4)
    m = threshold_maps(maps, 0.6, "keep_mass")
    assert m.shape == maps.shape and m[0, 0].sum() == 1 and m[0, 0, 1, 1]
    minmax = threshold_maps(maps, 0.5, "minmax")
    assert minmax[0, 1].sum() == 8  # v / 15 > 0.5 keeps v = 8..15
    assert not threshold_maps(torch.ones(1, 1, 3, 3), 0.5, "minmax").any()
    with pytest.raises(ValueError, match="threshold_rule='otsu'"):
        threshold_maps(maps, 0.5, "otsu")


def test_reductions_hand_case():
    feat = torch.tensor([[3.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    feat[0, 1] *= -1  # channels +3 and -3 at one position
    assert mean_abs(feat)[0, 0].tolist() == [[3.0, 0.0], [0.0, 0.0]]
    torch.testing.assert_close(l2(feat)[0, 0], torch.tensor([[18 ** 0.5, 0.0], [0.0, 0.0]]))
    p = pca(feat)[0, 0]
    assert p[0, 0] > 0 and p[0, 0] == p.max()  # sign follows the strong response
    torch.testing.assert_close(p.flatten()[1:], p.flatten()[1:2].expand(3))  # the three empty positions agree
    out = reduce_features(torch.rand(2, 8, 5, 5), ["l2", "pca", "mean_abs"])
    assert out.shape == (2, 3, 5, 5)
    with pytest.raises(ValueError, match="method.reductions"):
        reduce_features(torch.rand(2, 8, 5, 5), ["max"])


@pytest.mark.parametrize("shape", [(3, 6, 9, 8), (2, 40, 4, 3)])  # more positions than channels, and fewer
def test_pca_equals_the_svd_first_component(shape):
    torch.manual_seed(0)
    feat = torch.randn(shape).relu() + torch.randn(shape[0], shape[1], 1, 1)
    x = feat.double().flatten(2).transpose(1, 2)
    x = x - x.mean(1, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)  # the definition, in float64
    comp = (x @ v[:, 0, :, None]).squeeze(-1)
    norm = feat.double().norm(dim=1).flatten(1)
    sign = torch.sign(((comp - comp.mean(1, keepdim=True)) * (norm - norm.mean(1, keepdim=True))).sum(1))
    comp = comp * sign[:, None]
    torch.testing.assert_close(pca(feat).double().flatten(1), comp, rtol=0, atol=1e-6 * comp.abs().max().item())


def test_upsample_nearest_repeats_patches():
    maps = torch.arange(4.0).view(1, 2, 2)
    up = upsample(maps, (4, 4), "nearest")
    assert up[0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert upsample(maps > 1, (4, 4), "bilinear").dtype == torch.bool
    smooth = upsample(maps, (4, 4), "bilinear")
    assert smooth.min() >= 0 and smooth.max() <= 3 and smooth[0, 0, 1] > 0
