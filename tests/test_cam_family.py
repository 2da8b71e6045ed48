"""HiResCAM, XGrad-CAM, LayerCAM, float64 Grad-CAM++ and centred Eigen-CAM against plain per-channel
implementations; faithfulness averaged over tie orders against a plain loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from layerscope.methods.cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM, eigencam
from layerscope.metrics.faithfulness import baseline_image, deletion_insertion

from .test_cam import evidence_case, predicted_logit, raw_grads, reference_deletion_insertion, tiny_cnn, tiny_vit


def per_channel(act: torch.Tensor, grad: torch.Tensor, term) -> torch.Tensor:
    """relu(sum_c term(a_c, g_c)) written channel by channel, in float64: (B, C, h, w) -> (B, h, w)."""
    act, grad = act.double(), grad.double()
    out = torch.zeros(act.shape[0], *act.shape[2:], dtype=torch.float64)
    for b in range(act.shape[0]):
        for c in range(act.shape[1]):
            out[b] += term(act[b, c], grad[b, c])
    return out.clamp(min=0)


REFERENCES = {
    HiResCAM: lambda a, g: g * a,  # Draelos & Carin 2020: the gradient kept per position
    XGradCAM: lambda a, g: (g * a).sum() / (a.sum() + 1e-7) * a,  # Fu et al. 2020
    LayerCAM: lambda a, g: g.clamp(min=0) * a,  # Jiang et al. 2021
    GradCAMPlusPlus: lambda a, g: (torch.where(g != 0, g ** 2 / (2 * g ** 2 + a.sum() * g ** 3 + 1e-6), 0 * g)
                                   * g.clamp(min=0)).sum() * a,
}


@pytest.mark.slow
@pytest.mark.parametrize("method_cls", list(REFERENCES), ids=lambda c: c.__name__)
def test_cam_variants_on_a_cnn_equal_plain_per_channel_implementations(method_cls):
    bb = tiny_cnn()
    x = torch.rand(2, 3, 64, 64)
    method = method_cls(bb)
    ours = method.maps(bb.extract_grad(x, list(range(bb.num_layers)), method)[0])
    for layer, module in enumerate(bb._modules_by_stage):
        (act,), (grad,) = raw_grads(bb.model, [module], bb.normalize(x), predicted_logit)
        expected = per_channel(act, grad, REFERENCES[method_cls])
        assert ours[layer].shape == (2, 1, *act.shape[-2:]) and ours[layer].dtype == torch.float32
        torch.testing.assert_close(ours[layer][:, 0].double(), expected, atol=1e-5, rtol=1e-4)
    assert sum(float(m.abs().sum()) for m in ours.values()) > 0


def test_cam_variants_on_vit_patch_tokens_and_from_one_backward_pass():
    bb = tiny_vit(num_classes=10)
    x = torch.rand(2, 3, 64, 64)
    captured, _ = bb.extract_grad(x, [0, 1], GradCAM(bb))  # one forward, one backward
    (tokens,), (grad,) = raw_grads(bb.model, [bb.model.blocks[0]], bb.normalize(x), predicted_logit)
    grid = lambda t: t[:, 1:].transpose(1, 2).reshape(2, -1, 8, 8)  # noqa: E731
    for method_cls, term in REFERENCES.items():
        from_shared = method_cls(bb).maps(captured)  # every CAM from the same captured gradients
        own = method_cls(bb)
        alone = own.maps(bb.extract_grad(x, [0, 1], own)[0])
        for layer in (0, 1):
            torch.testing.assert_close(from_shared[layer], alone[layer], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(from_shared[0][:, 0].double(), per_channel(grid(tokens), grid(grad), term),
                                   atol=1e-5, rtol=1e-4)


def test_gradcam_pp_weights_are_float64_where_the_denominator_vanishes():
    """Negative channel sums (token features, stages without a final ReLU) make 2 g^2 + S g^3 + eps cancel:
    built here to 1e-11, where float32 weights are wrong by several times the map; ours match float64."""
    torch.manual_seed(0)
    grad = torch.rand(1, 2, 4, 4) * 1e-3
    grad[0, :, 0, 0] = 0.01
    g = float(grad[0, 0, 0, 0].double())
    s_needed = (-1e-6 + 1e-11 - 2 * g ** 2) / g ** 3  # channel sum that leaves a denominator of 1e-11
    act = torch.randn(1, 2, 4, 4) * 20
    act[0, 0, 3, 3] = 0
    act[0, 0, 3, 3] = float(s_needed - act[0, 0].double().sum())

    def closed_form(dtype):
        a, gr = act.to(dtype), grad.to(dtype)
        denom = 2 * gr ** 2 + a.sum(dim=(2, 3), keepdim=True) * gr ** 3 + 1e-6
        weights = (torch.where(gr != 0, gr ** 2 / denom, 0 * gr) * gr.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
        return (weights * a).sum(1).clamp(min=0), denom.abs().min()

    expected, denom = closed_form(torch.float64)
    assert float(denom) < 1e-10
    torch.testing.assert_close(expected, per_channel(act, grad, REFERENCES[GradCAMPlusPlus]), rtol=1e-9, atol=0)
    scale = float(expected.abs().max())
    assert float((GradCAMPlusPlus.cam(act, grad)[:, 0].double() - expected).abs().max()) < 1e-6 * scale
    single, _ = closed_form(torch.float32)
    assert float((single.double() - expected).abs().max()) > 0.1 * scale  # what float32 weights would give


@pytest.mark.slow
def test_centred_eigencam_is_the_svd_of_the_centred_activations_per_image():
    bb = tiny_cnn()
    x = torch.rand(3, 3, 64, 64)
    method = EigenCAM(bb, centred=True)
    captured, _ = bb.extract(x, [2, 3], method.capture)
    ours = method.maps(captured)
    for layer in (2, 3):
        for b in range(3):
            a = captured[layer][b].flatten(1).T.double().numpy()  # (hw, C)
            centred = a - a.mean(0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            v = vt[0] if (a @ vt[0]).sum() > 0 else -vt[0]  # sign: the activations project positively
            expected = np.maximum(centred @ v, 0)
            np.testing.assert_allclose(ours[layer][b, 0].flatten().numpy(), expected, atol=1e-4, rtol=1e-4)
    plain = eigencam(captured[2])
    assert not torch.allclose(plain, ours[2])  # centring changes the map
    with pytest.raises(ValueError, match=r"method.centred='yes': expected true or false"):
        EigenCAM(bb, centred="yes")


# ---------------------------------------------------------------- faithfulness: tie orders


def plain_tied_auc(forward, x, cell_map, steps, base, orders, seed):
    """Mean deletion/insertion AUC over random orders among equal cells, each order written as a sort key."""
    n = cell_map.numel()
    aucs = []
    for t in range(1, orders + 1):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + t - 1)).tolist()
        position = {cell: p for p, cell in enumerate(perm)}  # ties go in the permutation's order
        ranked = sorted(range(n), key=lambda j: (-float(cell_map.flatten()[j]), position[j]))
        # a map whose cells are ordered this way with distinct values: the plain loop of test_cam
        distinct = torch.empty(n)
        distinct[ranked] = torch.arange(n, 0, -1, dtype=torch.float32)
        aucs.append(reference_deletion_insertion(forward, x, distinct.view_as(cell_map), None, steps, base))
    return np.mean(aucs, axis=0)


@pytest.mark.slow
def test_faithfulness_with_ties_is_the_mean_over_seeded_orders_and_costs_nothing_without_ties():
    x, evidence, forward = evidence_case()
    probs = lambda z: forward(z).softmax(-1)  # noqa: E731
    tied = torch.zeros(3, 2, 4, 4)
    tied[:, 0] = evidence.float()  # 3 cells at 1, 13 tied at 0
    tied[:, 1, 0, :2] = 2.0  # 2 cells, then 14 tied at 0
    target = torch.ones(3, dtype=torch.long)
    base = baseline_image(x, "mean")
    for orders, seed in ((4, 0), (3, 7)):
        ours = deletion_insertion(forward, x, tied, target, steps=8, baseline="mean", tie_orders=orders, seed=seed)
        for b in range(3):
            for k in range(2):
                expected = plain_tied_auc(probs, x[b], tied[b, k], 8, base[b], orders, seed)
                np.testing.assert_allclose(ours[b, k].numpy(), expected, atol=1e-5)
    raster = deletion_insertion(forward, x, tied, target, steps=8, baseline="mean", tie_orders=0)
    ref = reference_deletion_insertion(probs, x[0], tied[0, 1], 16, 8, base[0])  # ties in raster order
    np.testing.assert_allclose(raster[0, 1].numpy(), ref, atol=1e-5)

    calls = []

    def counting(z):
        calls.append(len(z))
        return forward(z)

    distinct = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    one = deletion_insertion(counting, x, distinct, target, steps=8, baseline="mean", tie_orders=1)
    n_one = sum(calls)
    calls.clear()
    four = deletion_insertion(counting, x, distinct, target, steps=8, baseline="mean", tie_orders=4)
    assert sum(calls) == n_one == 2 * 3 + 2 * 3 * 2 * 7  # no ties: one curve per map, whatever tie_orders
    torch.testing.assert_close(one, four)
    with pytest.raises(ValueError, match=r"metrics.faithfulness_tie_orders=-1"):
        deletion_insertion(forward, x, tied, target, tie_orders=-1)
