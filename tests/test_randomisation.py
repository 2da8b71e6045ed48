"""Model-parameter randomisation (MPRT) and Random Logit.

- weights restored bit for bit, the global random state untouched, only the chosen block reset; both seedings
  (one seed per module as Quantus, one stream) against torch's own draws;
- Spearman against ``scipy.stats.spearmanr``, SSIM against scikit-image's ``structural_similarity`` with
  Quantus' data range (independent implementations);
- MPRT's Spearman at full cascading randomisation against Quantus 0.6's ``MPRT`` (``return_last_correlation``;
  skipped where Quantus does not import);
- Random Logit: the drawn class and ``random_logit_ssim`` under both ``metrics.random_logit_rule`` values against
  Quantus 0.6's ``RandomLogit`` (``quantus`` with its defaults, ``image`` with Quantus set to per-map ``|m| / max``
  and a 2-D SSIM); the 1-D SSIM and the batch normalisation against scikit-image and numpy;
- a map that is a fixed function of the input (edge magnitude) gets similarity 1; Grad-CAM of the bundled
  EfficientNet-Lite0's last stage does not survive randomisation.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from layerscope.metrics.randomisation import (FLAG, batch_normalise, logit_similarity, other_classes, randomised,
                                              randomised_maps, resettable, similarities, spearman, ssim, ssim_flat)
from layerscope.sanity import check_sanity, method_maps, randomisation_columns, road_columns  # noqa: F401


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()


def test_weights_restored_bit_for_bit_and_random_state_untouched():
    model = _net()
    model[1].running_mean.add_(0.3)  # trained statistics: reset_parameters zeroes them
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with randomised(model, resettable(model), seed=3):
        inside = model.state_dict()
        assert not torch.equal(inside["0.weight"], before["0.weight"])
        assert not torch.equal(inside["1.running_mean"], before["1.running_mean"])
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    with pytest.raises(RuntimeError, match="inside"):  # restored even when the block fails
        with randomised(model, resettable(model)):
            raise RuntimeError("inside")
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_independent_resets_only_the_layers_block_and_is_seeded():
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = {}

    def compute(layers):
        seen[layers[0]] = {k: v.clone() for k, v in model.state_dict().items()}
        return {layers[0]: torch.zeros(1)}

    randomised_maps(model, compute, [3], "independent", blocks=lambda layer: model[layer], seed=1)
    changed = {k for k in before if not torch.equal(seen[3][k], before[k])}
    assert changed == {"3.0.weight", "3.0.bias"}
    with randomised(model, resettable(model[3]), seed=1):
        again = model.state_dict()["3.0.weight"].clone()
    assert torch.equal(again, seen[3]["3.0.weight"])  # the same seed, the same weights
    with pytest.raises(ValueError, match="metrics.randomisation=bogus"):
        randomised_maps(model, compute, [3], "bogus")


def test_seeding_per_module_repeats_weights_once_draws_each_module_its_own():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with randomised(model, resettable(model), seed=2, seeding="per_module"):  # Quantus 0.6
        assert torch.equal(model[0].weight, model[2].weight)
        torch.manual_seed(3)  # the same seed before the module: the same draw
        expect = nn.Linear(4, 4).weight
        assert torch.equal(model[2].weight, expect)
    with randomised(model, resettable(model), seed=2, seeding="once"):
        first, last = model[0].weight.clone(), model[2].weight.clone()
        assert not torch.equal(first, last)
        torch.manual_seed(3)  # one stream: the output-side module draws first, then the next
        a, b = nn.Linear(4, 4), nn.Linear(4, 4)
        assert torch.equal(last, a.weight) and torch.equal(first, b.weight)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    with pytest.raises(ValueError, match="metrics.randomisation_seeding=twice: expected one of per_module, once"):
        with randomised(model, resettable(model), seeding="twice"):
            pass
    with pytest.raises(ValueError, match="metrics.randomisation_seeding=twice"):
        check_sanity(SimpleNamespace(road=False, road_noise=0.0, randomisation="cascading",
                                     randomisation_seeding="twice"), SimpleNamespace(num_classes=4, name="m"),
                     SimpleNamespace(needs_references=False, name="gradcam"))


def test_spearman_and_ssim_against_scipy_and_skimage():
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(5)
    a = torch.rand(3, 9, 8, generator=g)
    b = a + 0.3 * torch.rand(3, 9, 8, generator=g)
    a[0, :4] = 0.25  # ties
    b[2] = (b[2] * 4).round()
    for i in range(3):
        assert spearman(a[i], b[i]).item() == pytest.approx(spearmanr(a[i].flatten(), b[i].flatten())[0], abs=1e-12)
        x, y = a[i].double().numpy(), b[i].double().numpy()
        both = np.concatenate([x, y])
        ref = structural_similarity(x, y, data_range=float(both.max() - both.min()))
        assert ssim(a[i], b[i]).item() == pytest.approx(ref, abs=1e-10)
        small = structural_similarity(x[:5, :5], y[:5, :5], win_size=5,
                                      data_range=float(max(x[:5, :5].max(), y[:5, :5].max())
                                                       - min(x[:5, :5].min(), y[:5, :5].min())))
        assert ssim(a[i, :5, :5], b[i, :5, :5]).item() == pytest.approx(small, abs=1e-10)  # window fitted to 5 x 5
    assert spearman(torch.ones(2, 2), a[0, :2, :2]).isnan()
    assert ssim(a[0, :2, :4], b[0, :2, :4]).isnan()  # no 3 x 3 window fits


def test_other_classes_never_the_target():
    target = torch.tensor([0, 3, 3, 1] * 50)
    state = np.random.get_state()
    other = other_classes(target, 4, seed=2)
    assert not bool((other == target).any()) and set(other.tolist()) <= {0, 1, 2, 3}
    assert set(other[target == 3].tolist()) == {0, 1, 2}
    assert torch.equal(other, other_classes(target, 4, seed=2))
    assert np.array_equal(np.random.get_state()[1], state[1])  # numpy's global state untouched
    # Quantus' draw written out: np.random.seed, then randint indexes the non-target classes in order
    np.random.seed(7)
    index = np.random.randint(0, 9, 5)
    np.random.set_state(state)
    y = np.array([0, 9, 4, 4, 2])
    expect = [[c for c in range(10) if c != t][i] for t, i in zip(y, index)]
    assert other_classes(torch.from_numpy(y), 10, seed=7).tolist() == expect


def test_flat_ssim_and_batch_normalisation_against_skimage_and_numpy():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 3, 5, 6, generator=g)
    b = a + 0.5 * torch.randn(2, 3, 5, 6, generator=g)
    for i in range(2):
        for k in range(3):
            x, y = a[i, k].double().numpy().ravel(), b[i, k].double().numpy().ravel()
            both = np.concatenate([x, y])
            ref = structural_similarity(x, y, data_range=float(both.max() - both.min()))  # 1-D, window 7
            assert ssim_flat(a[i, k], b[i, k]).item() == pytest.approx(ref, abs=1e-10)
    assert ssim_flat(a[0, 0, :1, :2], b[0, 0, :1, :2]).isnan()  # 2 cells: no window
    top = np.abs(a.double().numpy()).max(axis=(0, 2, 3), keepdims=True)  # per map index, over the batch
    np.testing.assert_allclose(batch_normalise(a).numpy(), a.double().numpy() / top, rtol=0, atol=1e-15)
    assert torch.equal(batch_normalise(torch.zeros(2, 1, 3, 3)), torch.zeros(2, 1, 3, 3, dtype=torch.float64))
    # image: each map on its own; quantus: the value moves with the other maps of the batch
    lone = logit_similarity(a[:1], b[:1], "image")
    assert torch.allclose(lone, logit_similarity(a, b, "image")[:1], atol=1e-12)
    with pytest.raises(ValueError, match="metrics.random_logit_rule=flat: expected one of image, quantus"):
        logit_similarity(a, b, "flat")


def test_random_logit_rule_is_checked_with_one_line():
    from layerscope.config.schema import MetricsOptions

    cls = SimpleNamespace(num_classes=10, name="m")
    method = SimpleNamespace(needs_references=False, name="gradcam")
    check_sanity(MetricsOptions(randomisation="cascading", random_logit_rule="quantus"), cls, method)
    with pytest.raises(ValueError, match="metrics.random_logit_rule=skimage: expected one of image, quantus"):
        check_sanity(MetricsOptions(randomisation="cascading", random_logit_rule="skimage"), cls, method)


def _edges(x: torch.Tensor) -> torch.Tensor:
    """Sobel edge magnitude of the grey image, pooled to an 8 x 8 grid: a map that ignores the model."""
    grey = x.mean(1, keepdim=True)
    k = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    gx, gy = nn.functional.conv2d(grey, k, padding=1), nn.functional.conv2d(grey, k.transpose(2, 3), padding=1)
    return nn.functional.adaptive_avg_pool2d((gx ** 2 + gy ** 2).sqrt(), 8)


def test_a_fixed_function_of_the_input_survives_randomisation():
    model = _net()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    trained = {0: _edges(x)}
    randomised_map = randomised_maps(model, lambda layers: {0: _edges(x)}, [0], "cascading")
    rho, s = similarities(trained[0], randomised_map[0])
    assert torch.allclose(rho, torch.ones(2, 1, dtype=torch.float64)) and torch.allclose(s, torch.ones(2, 1,
                                                                                          dtype=torch.float64))
    assert bool((rho >= FLAG).all())  # flagged: does not depend on the learned weights


@pytest.mark.slow
def test_gradcam_of_a_trained_classifier_fails_to_survive():
    import layerscope as ls
    from layerscope.data.samples import load_photo

    bb = ls.load("efficientnet_lite0_bundled")
    m = ls.maps(bb, [load_photo("cat")], layers=[-1], method="gradcam")
    method = m._method
    x = m._rgb
    layer = m.layers[0]
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    trained = {layer: torch.from_numpy(m[layer])}
    cols = randomisation_columns(bb, method, x, trained, lambda maps: maps, "cascading",
                                 target=torch.from_numpy(m.logits).argmax(-1), seed=0)
    assert all(torch.equal(bb.state_dict()[k], before[k]) for k in before)
    rho = cols[layer]["mprt_spearman"]
    assert rho.shape == (1, 1) and float(rho.mean()) < FLAG
    assert cols[layer]["random_logit_ssim"].shape == (1, 1)


@pytest.mark.slow
def test_mprt_spearman_equals_quantus():
    quantus = pytest.importorskip("quantus", reason="quantus 0.6 (with OpenCV) is not installed")
    model = _net()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = np.array([0, 2, 3])

    def saliency(model, inputs, targets, **kwargs):  # |d logit / d x| summed over channels: (B, 1, H, W)
        t = torch.as_tensor(inputs, dtype=torch.float32).detach().clone().requires_grad_(True)
        out = model(t)
        grad, = torch.autograd.grad(out[torch.arange(len(t)), torch.as_tensor(targets).long()].sum(), t)
        return grad.abs().sum(1, keepdim=True).numpy()

    trained = saliency(model, x, y)
    metric = quantus.MPRT(layer_order="top_down", return_last_correlation=True, seed=42, disable_warnings=True,
                          display_progressbar=False)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=y, a_batch=trained, explain_func=saliency,
                    device="cpu")
    with randomised(model, resettable(model), seed=42):
        ours_map = saliency(model, x, y)
    rho, _ = similarities(torch.from_numpy(trained)[:, 0], torch.from_numpy(ours_map)[:, 0])
    np.testing.assert_allclose(rho.numpy(), np.asarray(theirs, dtype=np.float64), atol=1e-6)


def test_surviving_maps_are_flagged_for_the_report_and_page():
    import pandas as pd

    from layerscope.metrics import randomisation
    from layerscope.analysis import weights_check

    assert weights_check.FLAG == randomisation.FLAG
    rows = pd.DataFrame({"model": "m", "method": "gradcam", "layer": [0, 0, 0, 0, 1, 1, 1],
                         "head": ["0", "0", "0", "best", "0", "0", "0"], "image": ["a", "a", "b", "a", "a", "b", "c"],
                         "threshold": [0.5, 0.6, 0.5, 0.5, 0.5, 0.5, 0.5],
                         "mprt_spearman": [0.9, 0.9, 0.3, 1.0, 0.2, 0.1, None],
                         "mprt_ssim": [0.8, 0.8, 0.4, 1.0, 0.1, 0.0, None]})
    table = weights_check.weight_independent(rows)
    # layer 0: images a (0.9, once despite two thresholds) and b (0.3): mean 0.6 >= 0.5; layer 1: 0.15
    assert table[["layer", "head", "n_images"]].values.tolist() == [[0, "0", 2]]
    assert table["mprt_spearman"].iloc[0] == pytest.approx(0.6)
    from scipy.stats import t

    half = t.ppf(0.975, 1) * np.std([0.9, 0.3], ddof=1) / np.sqrt(2)  # Student-t over the 2 images
    assert table[["ci_low", "ci_high"]].values[0] == pytest.approx([0.6 - half, 0.6 + half])
    line = f"layer 0 head 0: MPRT Spearman 0.60 [{0.6 - half:.2f}, {0.6 + half:.2f}]"
    assert line in weights_check.flags_markdown(table) and line in weights_check.flags_section(rows)
    one = weights_check.weight_independent(rows[rows["image"] == "a"])
    assert one["ci_low"].isna().all() and "[no interval: 1 image]" in weights_check.flags_markdown(one)
    assert weights_check.NOTE in weights_check.flags_section(rows)
    assert "No map survives" in weights_check.flags_section(rows[rows["layer"] == 1])
    assert weights_check.flags_section(rows.drop(columns=["mprt_spearman"])) == ""


def _signed_saliency(model, inputs, targets, **kwargs):
    """d logit / d x summed over channels, signed: (B, 1, H, W) (Quantus' ``explain_func`` signature)."""
    t = torch.as_tensor(inputs, dtype=torch.float32).detach().clone().requires_grad_(True)
    out = model(t)
    grad, = torch.autograd.grad(out[torch.arange(len(t)), torch.as_tensor(targets).long()].sum(), t)
    return grad.sum(1, keepdim=True).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["quantus", "image"])
def test_random_logit_equals_quantus(rule):
    quantus = pytest.importorskip("quantus", reason="quantus 0.6 (with OpenCV) is not installed")
    from quantus.functions.similarity_func import ssim as quantus_ssim

    model = _net()
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    y = np.array([0, 2, 3, 3, 1])
    drawn = []

    def explain(model, inputs, targets, **kwargs):
        drawn.append(np.asarray(targets).copy())
        return _signed_saliency(model, inputs, targets)

    trained = _signed_saliency(model, x, y)
    if rule == "quantus":  # Quantus' defaults: signed maps over the batch's max |m|, SSIM of the flattened maps
        metric = quantus.RandomLogit(num_classes=4, seed=42, disable_warnings=True)
    else:  # each map |m| / max |m| and SSIM of the 16 x 16 maps
        def ssim_2d(a, b, batched=True, **kwargs):
            return [quantus_ssim(aa.reshape(16, 16), bb.reshape(16, 16)) for aa, bb in zip(a, b)]

        metric = quantus.RandomLogit(num_classes=4, seed=42, abs=True, similarity_func=ssim_2d, disable_warnings=True,
                                     normalise_func_kwargs={"normalise_axes": (1, 2, 3)})
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=y, a_batch=trained, explain_func=explain, device="cpu")
    other = other_classes(torch.from_numpy(y), 4, seed=42)
    assert len(drawn) == 1 and other.tolist() == drawn[0].tolist()  # the same classes drawn
    ours = logit_similarity(torch.from_numpy(trained), torch.from_numpy(_signed_saliency(model, x, other.numpy())),
                            rule)
    assert ours.shape == (5, 1)
    np.testing.assert_allclose(ours[:, 0].numpy(), np.asarray(theirs, dtype=np.float64), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_vit_gradient_methods_under_both_modes():
    """attn_grad and Grad-CAM of a ViT: finite similarities in both modes, weights restored; Grad-CAM of the last
    block is all zero (its patch tokens do not reach the CLS output), so its rank correlation is undefined (NaN),
    never a flag."""
    import layerscope as ls
    from layerscope.data.samples import load_photo

    bb = ls.load("tiny_vit")
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    last = bb.num_layers - 1
    for method in ("attn_grad", "gradcam"):
        m = ls.maps(bb, [load_photo("cat"), load_photo("coffee")], layers=[0, last], method=method)
        trained = {layer: torch.from_numpy(m[layer]) for layer in m.layers}
        for mode in ("cascading", "independent"):
            cols = randomisation_columns(bb, m._method, m._rgb, trained, lambda maps: maps, mode, seed=0)
            assert all(torch.equal(bb.state_dict()[k], before[k]) for k in before), (method, mode)
            for layer in (0, last):
                rho = cols[layer]["mprt_spearman"]
                assert rho.shape == (2, 1)
                if method == "gradcam" and layer == last:
                    assert trained[layer].abs().max() == 0 and bool(rho.isnan().all())
                else:
                    assert bool(rho.isfinite().all()) and bool((rho.abs() <= 1).all()), (method, mode, layer)
