"""Grad-CAM family and attention relevance against hand-written references; faithfulness and pointing."""
from __future__ import annotations

import gc
import json
import math
import warnings

import pytest
import torch

from layerscope.backbones import TimmCNN, TimmViT, forward_hooks
from layerscope.methods.cam import AttnGrad, EigenCAM, GradCAM, GradCAMPlusPlus
from layerscope.metrics.faithfulness import deletion_insertion
from layerscope.metrics.tolerant_pointing import pointing_game_tolerance

from .conftest import eager_reference, run_main, tiny_hf_vit

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tiny_cnn(num_classes=10) -> TimmCNN:
    torch.manual_seed(0)
    return TimmCNN("c", "resnet18", img_size=64, mean=MEAN, std=STD, pretrained=False, num_classes=num_classes)


def tiny_vit(arch="vit_tiny_patch16_224", num_classes=10, img_size=64, **kwargs) -> TimmViT:
    torch.manual_seed(0)
    kw = dict(depth=2, embed_dim=48, num_heads=3, patch_size=8)
    kw.update(kwargs)
    return TimmViT("t", arch, img_size=img_size, mean=MEAN, std=STD, pretrained=False, num_classes=num_classes,
                   model_kwargs=kw)


def raw_grads(model, modules, xn, score_fn):
    """Outputs of ``modules`` and the gradients of score_fn(model output) w.r.t. them, plainly."""
    outs = []
    hooks = [(m, lambda _m, _i, o: outs.append(o[0] if isinstance(o, tuple) else o)) for m in modules]
    with forward_hooks(hooks):
        y = model(xn)
    grads = torch.autograd.grad(score_fn(y).sum(), outs)
    return [o.detach() for o in outs], grads


def reference_gradcam(act, grad):
    """Grad-CAM as in the paper: gradients averaged over space, weighted sum of activations, ReLU."""
    out = torch.zeros(act.shape[0], act.shape[2], act.shape[3])
    for b in range(act.shape[0]):
        for c in range(act.shape[1]):
            out[b] += grad[b, c].mean() * act[b, c]
    return out.clamp(min=0)


def reference_gradcam_pp(act, grad):
    """Grad-CAM++ (exponential closed form), channel by channel."""
    out = torch.zeros(act.shape[0], act.shape[2], act.shape[3])
    for b in range(act.shape[0]):
        for c in range(act.shape[1]):
            g = grad[b, c]
            denom = 2 * g ** 2 + act[b, c].sum() * g ** 3 + 1e-6
            alpha = torch.where(g != 0, g ** 2 / denom, torch.zeros_like(g))
            out[b] += (alpha * g.clamp(min=0)).sum() * act[b, c]
    return out.clamp(min=0)


def predicted_logit(y):
    return y.gather(1, y.argmax(-1, keepdim=True))[:, 0]


@pytest.mark.slow
@pytest.mark.parametrize("method_cls,reference",
                         [(GradCAM, reference_gradcam), (GradCAMPlusPlus, reference_gradcam_pp)])
def test_gradcam_on_a_cnn_equals_the_hand_written_reference(method_cls, reference):
    bb = tiny_cnn()
    x = torch.rand(2, 3, 64, 64)
    method = method_cls(bb)
    captured, logits = bb.extract_grad(x, list(range(bb.num_layers)), method)
    ours = method.maps(captured)
    for layer, module in enumerate(bb._modules_by_stage):  # one independent backward per layer
        (act,), (grad,) = raw_grads(bb.model, [module], bb.normalize(x), predicted_logit)
        assert ours[layer].shape == (2, 1, *act.shape[-2:])
        torch.testing.assert_close(ours[layer][:, 0], reference(act, grad), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, bb.model(bb.normalize(x)).detach(), atol=1e-5, rtol=1e-5)


def test_gradcam_target_class_and_embedding_target_without_a_classifier():
    x = torch.rand(2, 3, 64, 64)
    bb = tiny_cnn()
    method = GradCAM(bb, target_class=3)
    ours = method.maps(bb.extract_grad(x, [3], method)[0])[3]
    (act,), (grad,) = raw_grads(bb.model, [bb._modules_by_stage[3]], bb.normalize(x), lambda y: y[:, 3])
    torch.testing.assert_close(ours[:, 0], reference_gradcam(act, grad), atol=1e-5, rtol=1e-4)
    headless = tiny_cnn(num_classes=0)  # the target is the norm of the pooled features
    method = GradCAM(headless)
    ours, logits = headless.extract_grad(x, [2], method)
    assert logits is None
    m = headless.model
    (act,), (grad,) = raw_grads(m, [headless._modules_by_stage[2]], headless.normalize(x), lambda y: y.norm(dim=-1))
    torch.testing.assert_close(method.maps(ours)[2][:, 0], reference_gradcam(act, grad), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=r"method.target_class=3: model c has no classifier"):
        GradCAM(headless, target_class=3)
    with pytest.raises(ValueError, match=r"method.target_class=10 is out of range: model c has 10 classes"):
        GradCAM(bb, target_class=10)
    with pytest.raises(ValueError, match=r"method.embedding_target=cosine: expected norm for model c \(cnn\)"):
        GradCAM(bb, embedding_target="cosine")


@pytest.mark.parametrize("num_classes", [10, 0])
def test_vit_gradcam_is_on_the_patch_grid_with_registers_dropped(num_classes):
    bb = tiny_vit("vit_small_patch14_reg4_dinov2", num_classes=num_classes, img_size=56, patch_size=14)
    assert bb.num_prefix == 5 and bb.grid == (4, 4)
    x = torch.rand(2, 3, 56, 56)
    for cls in (GradCAM, GradCAMPlusPlus):
        method = cls(bb)
        maps = method.maps(bb.extract_grad(x, [0, 1], method)[0])
        assert {k: tuple(v.shape) for k, v in maps.items()} == {0: (2, 1, 4, 4), 1: (2, 1, 4, 4)}
    # against the raw model: block output tokens, prefix (CLS + 4 registers) dropped, plain Grad-CAM
    score = predicted_logit if num_classes else lambda y: y.norm(dim=-1)  # no head: the CLS embedding's norm
    method = GradCAM(bb)
    maps = method.maps(bb.extract_grad(x, [0], method)[0])
    (tokens,), (grad,) = raw_grads(bb.model, [bb.model.blocks[0]], bb.normalize(x), score)
    grid = lambda t: t[:, 5:].transpose(1, 2).reshape(2, -1, 4, 4)  # noqa: E731
    torch.testing.assert_close(maps[0][:, 0], reference_gradcam(grid(tokens), grid(grad)), atol=1e-5, rtol=1e-4)
    assert maps[0].abs().sum() > 0


def test_vit_cosine_embedding_target_equals_the_raw_computation():
    bb = tiny_vit(num_classes=0)
    x = torch.rand(2, 3, 64, 64)
    method = GradCAM(bb, embedding_target="cosine")
    maps = method.maps(bb.extract_grad(x, [1], method)[0])
    outs = []
    with forward_hooks([(bb.model.blocks[1], lambda _m, _i, o: outs.append(o))]):
        tokens = bb.model.forward_features(bb.normalize(x))
    score = torch.nn.functional.cosine_similarity(tokens[:, 0], tokens[:, 1:].mean(1), dim=-1)
    (grad,) = torch.autograd.grad(score.sum(), outs)
    grid = lambda t: t[:, 1:].transpose(1, 2).reshape(2, -1, 8, 8)  # noqa: E731
    torch.testing.assert_close(maps[1][:, 0], reference_gradcam(grid(outs[0].detach()), grid(grad)), atol=1e-5,
                               rtol=1e-4)


def reference_attn_grad(attentions, grads, prefix):
    """Chefer et al. 2021 written plainly on full matrices: R = I; R += mean_h((g * A)^+) R per layer."""
    n = attentions[0].shape[-1]
    r = torch.eye(n).expand(attentions[0].shape[0], n, n)
    rows = []
    for a, g in zip(attentions, grads):
        cam = (g * a).clamp(min=0).mean(1)
        r = r + cam @ r
        rows.append(r[:, 0, prefix:])
    return rows


@pytest.mark.parametrize("kind", ["timm", "timm_registers", "timm_headless", "hf"])
def test_attn_grad_equals_a_direct_computation_on_a_two_block_vit(kind):
    x = torch.rand(2, 3, 64 if kind != "timm_registers" else 56, 64 if kind != "timm_registers" else 56)
    if kind == "hf":
        bb = tiny_hf_vit(layers=2)
        out = eager_reference(bb, x)
        attentions = list(out.attentions)
        grads = torch.autograd.grad(predicted_logit(out.logits).sum(), attentions)
    else:
        if kind == "timm_registers":
            bb = tiny_vit("vit_small_patch14_reg4_dinov2", img_size=56, patch_size=14)
        else:
            bb = tiny_vit(num_classes=0 if kind == "timm_headless" else 10)
        attentions = []
        hooks = []
        for blk in bb.model.blocks:  # the eager path: the probabilities are a tensor in the graph
            blk.attn.fused_attn = False
            hooks.append((blk.attn.attn_drop, lambda _m, _i, o: attentions.append(o)))
        with forward_hooks(hooks):
            y = bb.model(bb.normalize(x))
        for blk in bb.model.blocks:
            blk.attn.fused_attn = True
        score = y.norm(dim=-1) if kind == "timm_headless" else predicted_logit(y)
        grads = torch.autograd.grad(score.sum(), attentions)
    expected = reference_attn_grad([a.detach() for a in attentions], grads, bb.num_prefix)
    method = AttnGrad(bb, chunk=7)  # query chunks that do not divide N
    captured, _ = bb.extract_grad(x, method.capture_layers([1]), method)
    ours = method.maps(captured)
    h, w = bb.grid
    for layer in range(2):
        assert ours[layer].shape == (2, 1, h, w)
        torch.testing.assert_close(ours[layer][:, 0].flatten(1), expected[layer], atol=1e-5, rtol=1e-4)


def test_attn_grad_needs_a_vit():
    with pytest.raises(ValueError, match=r"method=attn_grad does not apply to model c \(cnn\): it needs attention"):
        AttnGrad(tiny_cnn())


def test_eigencam_is_the_first_singular_direction_of_the_activations():
    bb = tiny_cnn()
    x = torch.rand(2, 3, 64, 64)
    method = EigenCAM(bb)
    assert not method.needs_grad
    captured, _ = bb.extract(x, [2], method.capture)
    ours = method.maps(captured)[2]
    act = captured[2]
    for b in range(2):
        a = act[b].flatten(1).T.double()  # (hw, C), not centred
        u, s, _ = torch.linalg.svd(a, full_matrices=False)
        proj = u[:, 0] * s[0]
        proj = proj if proj.sum() > 0 else -proj
        torch.testing.assert_close(ours[b, 0].flatten().double(), proj.clamp(min=0), atol=1e-4, rtol=1e-4)


def _tensors() -> tuple[int, int]:
    """(live tensors, live tensors holding an autograd graph) as the garbage collector sees them."""
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some module objects warns of deprecated attributes
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    return len(tensors), sum(t.grad_fn is not None for t in tensors)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cnn_gradcam", "vit_attn_grad", "vit_gradcam_pp"])
def test_hooks_graph_and_gradients_are_released_over_20_batches(kind):
    bb = tiny_cnn() if kind.startswith("cnn") else tiny_vit()
    method = {"cnn_gradcam": GradCAM, "vit_attn_grad": AttnGrad, "vit_gradcam_pp": GradCAMPlusPlus}[kind](bb)
    layers = method.capture_layers(list(range(bb.num_layers)))
    x = torch.rand(2, 3, 64, 64)

    def one_batch():
        captured, logits = bb.extract_grad(x, layers, method)
        method.maps(captured)

    grad_mode = torch.is_grad_enabled()
    with torch.no_grad():  # the gradient path works under the caller's no_grad too
        one_batch()
    before, graphs = _tensors()
    assert graphs == 0  # no tensor keeps a graph alive
    for _ in range(20):
        one_batch()
    after, graphs = _tensors()
    assert after <= before and graphs == 0, f"{after - before} tensors more after 20 batches, {graphs} with a graph"
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in bb.modules())
    assert all(p.grad is None for p in bb.parameters())  # autograd.grad: no .grad accumulates
    assert torch.is_grad_enabled() == grad_mode


# ---------------------------------------------------------------- deletion / insertion


def reference_deletion_insertion(forward, x, cell_map, cells, steps, base):
    """One image, one map, written plainly: a loop over steps and cells."""
    h, w = cell_map.shape
    n = h * w
    ph, pw = x.shape[-2] // h, x.shape[-1] // w
    order = sorted(range(n), key=lambda j: (-float(cell_map.flatten()[j]), j))
    aucs = []
    for mode in ("deletion", "insertion"):
        ys, xs = [], []
        for i in range(steps + 1):
            k = round(i * n / steps)
            img = x.clone() if mode == "deletion" else base.clone()
            for j in order[:k]:
                r, c = divmod(j, w)
                src = base if mode == "deletion" else x
                img[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = src[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw]
            ys.append(float(forward(img[None])[0, 1]))
            xs.append(k / n)
        aucs.append(sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(steps)))
    return aucs


def evidence_case():
    """Images 32x32 on a 4x4 grid; class 1's probability rises with the brightness of 3 evidence cells."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g) * 0.2
    evidence = torch.zeros(4, 4, dtype=torch.bool)
    evidence[1, 2] = evidence[2, 1] = evidence[3, 3] = True
    big = evidence.repeat_interleave(8, 0).repeat_interleave(8, 1)
    x[:, :, big] = 0.9 + 0.1 * torch.rand(3, 3, int(big.sum()), generator=g)

    def forward(z):
        s = (z * big).sum(dim=(1, 2, 3)) / (3 * big.sum())
        return torch.stack([torch.zeros_like(s), 12 * (s - 0.45)], dim=-1)  # logits

    return x, evidence, forward


@pytest.mark.slow
def test_deletion_insertion_equals_a_plain_loop_per_image_and_map():
    x, evidence, forward = evidence_case()
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 2, 4, 4, generator=g)
    maps[:, 1] = evidence.float() + 0.01 * maps[:, 1]
    target = torch.ones(3, dtype=torch.long)
    probs = lambda z: forward(z).softmax(-1)  # noqa: E731
    for baseline, steps in (("mean", 10), ("blur", 3), ("mean", 16)):
        ours = deletion_insertion(forward, x, maps, target, steps=steps, baseline=baseline, batch_size=5)
        assert ours.shape == (3, 2, 2)
        from layerscope.metrics.faithfulness import baseline_image

        base = baseline_image(x, baseline)
        for b in range(3):
            for k in range(2):
                ref = reference_deletion_insertion(probs, x[b], maps[b, k], 16, steps, base[b])
                torch.testing.assert_close(ours[b, k], torch.tensor(ref, dtype=torch.float32), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_deletion_auc_of_the_true_evidence_is_lower_than_random_maps():
    x, evidence, forward = evidence_case()
    truth = evidence.float().expand(3, 1, 4, 4)
    g = torch.Generator().manual_seed(2)
    random_maps = torch.rand(3, 8, 4, 4, generator=g)
    target = torch.ones(3, dtype=torch.long)
    for baseline in ("blur", "mean"):
        t = deletion_insertion(forward, x, truth, target, steps=16, baseline=baseline)
        r = deletion_insertion(forward, x, random_maps, target, steps=16, baseline=baseline)
        assert (t[..., 0] < r[..., 0].min(1, keepdim=True).values).all()  # deletion: lower than every random map
        assert (t[..., 1] > r[..., 1].max(1, keepdim=True).values).all()  # insertion: higher


@pytest.mark.slow
def test_faithfulness_options_and_helper():
    import dataclasses

    from layerscope.mapsource import faithfulness
    from layerscope.metrics.faithfulness import check_faithfulness
    from layerscope.config.schema import MetricsOptions

    metrics = MetricsOptions(faithfulness=True, faithfulness_steps=4, faithfulness_baseline="blur")
    with pytest.raises(ValueError, match=r"^metrics.faithfulness needs a model with a classifier"):
        check_faithfulness(metrics, tiny_vit(num_classes=0))
    bb = tiny_cnn()
    check_faithfulness(metrics, bb)
    for key, value, message in (("faithfulness_steps", 0, "metrics.faithfulness_steps=0"),
                                ("faithfulness_baseline", "noise", "metrics.faithfulness_baseline=noise")):
        with pytest.raises(ValueError, match=message):
            check_faithfulness(dataclasses.replace(metrics, **{key: value}), bb)
    x = torch.rand(2, 3, 64, 64)
    maps = {0: torch.rand(2, 3, 32, 32), 4: torch.rand(2, 1, 2, 2)}
    out = faithfulness(bb, x, maps, torch.tensor([1, 2]), steps=4)
    assert {k: tuple(v.shape) for k, v in out.items()} == {0: (2, 3, 2), 4: (2, 1, 2)}
    assert ((out[0] >= 0) & (out[0] <= 1)).all()
    with pytest.raises(ValueError, match=r"^metrics.faithfulness needs a model with a classifier"):
        faithfulness(tiny_vit(num_classes=0), x, maps, torch.tensor([1, 2]))


# ---------------------------------------------------------------- pointing game with a tolerance


def reference_pointing(up_map, mask, tol):
    """TorchRay's PointingGame.evaluate on the maximum of an already upsampled map."""
    idx = int(up_map.flatten().argmax())
    py, px = divmod(idx, up_map.shape[1])
    v, u = torch.meshgrid((torch.arange(mask.shape[0], dtype=torch.float32) - py) ** 2,
                          (torch.arange(mask.shape[1], dtype=torch.float32) - px) ** 2, indexing="ij")
    return float((mask & ((v + u) < tol ** 2)).any())


def test_pointing_game_tolerance_equals_torchray_on_random_cases():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        scores = torch.rand(2, 3, 16, generator=g)
        mask = torch.zeros(32, 32, dtype=torch.bool)
        r, c = torch.randint(0, 28, (2,), generator=g).tolist()
        mask[r:r + 4, c:c + 3] = True
        tol = [15, 5, 2.5][trial % 3]
        ours = pointing_game_tolerance(scores, mask, (4, 4), tol)
        assert ours.shape == (2, 3)
        up = torch.nn.functional.interpolate(scores.reshape(-1, 1, 4, 4), size=(32, 32), mode="bilinear",
                                             align_corners=False).reshape(2, 3, 32, 32)
        for i in range(2):
            for j in range(3):
                assert ours[i, j] == reference_pointing(up[i, j], mask, tol)


def test_pointing_game_tolerance_by_hand():
    scores = torch.zeros(1, 64)  # 8x8 grid on 64x64 pixels: the maximum of cell (0, 0) is pixel (0, 0)
    scores[0, 0] = 1.0
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[0, 15] = True  # 15 px to the right: strictly below 15 is needed (TorchRay)
    assert pointing_game_tolerance(scores, mask, (8, 8), 15).item() == 0.0
    assert pointing_game_tolerance(scores, mask, (8, 8), 15.5).item() == 1.0
    mask[0, 15], mask[9, 12] = False, True  # distance 15 exactly along a diagonal: still a miss
    assert pointing_game_tolerance(scores, mask, (8, 8), 15).item() == 0.0
    mask[9, 11] = True  # sqrt(81 + 121) = 14.2
    assert pointing_game_tolerance(scores, mask, (8, 8), 15).item() == 1.0
    assert pointing_game_tolerance(scores, mask, (8, 8), 0).item() == 0.0  # 0: the point itself
    mask[0, 0] = True
    assert pointing_game_tolerance(scores, mask, (8, 8), 0).item() == 1.0
    assert math.isnan(pointing_game_tolerance(scores, torch.zeros(64, 64, dtype=torch.bool), (8, 8)).item())
    with pytest.raises(ValueError, match=r"metrics.pointing_tolerance=-1"):
        pointing_game_tolerance(scores, mask, (8, 8), -1)


# ---------------------------------------------------------------- the study: configs, cache


@pytest.mark.slow
def test_gradient_maps_run_in_a_study_and_are_cached(tmp_path):
    from layerscope.results.cache import config_key

    small = ["model=tiny_vit", "method=attn_grad", "data.textures=[brick]", "data.defects=[scratch]",
             "data.size=64", "progress=false", f"cache.dir={tmp_path / 'cache'}"]
    summaries = []
    for name in ("first", "second"):
        proc = run_main([*small, f"hydra.run.dir={tmp_path / name}"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summaries.append(json.loads((tmp_path / name / "run_summary.json").read_text()))
    assert summaries[0]["backbone_calls"] == 1 and summaries[1]["backbone_calls"] == 0
    first = (tmp_path / "first" / "results.csv").read_text()
    assert first == (tmp_path / "second" / "results.csv").read_text() and ",attn_grad," in first
    model = {"name": "m"}
    assert config_key(model, {"_target_": "x", "target_class": None}, 0) != config_key(model, {"_target_": "x",
                                                                                               "target_class": 3}, 0)


@pytest.mark.slow
def test_faithfulness_and_tolerant_pointing_reach_the_results_rows(tmp_path):
    """A run with metrics.faithfulness=true on a CNN with a classifier fills both AUCs on every row
    (best rows with their head's), and pointing_tol on every masked row."""
    import pandas as pd

    from layerscope import study

    from .conftest import compose

    cfg = compose("model=tiny_cnn", "model.num_classes=10", "data.textures=[brick]", "data.defects=[spot]",
                  "data.size=64", "progress=false", "figures.grid=false", "metrics.faithfulness=true",
                  "metrics.faithfulness_steps=4", "layer=[1,2]", "cache.enabled=false")
    study.run(cfg, tmp_path / "run")
    df = pd.read_csv(tmp_path / "run" / "results.csv", dtype={"head": str})
    assert df["deletion_auc"].between(0, 1).all() and df["insertion_auc"].between(0, 1).all()
    assert df["pointing_tol"].isin([0.0, 1.0]).all()
    assert (df["pointing_tol"] >= df["pointing"]).all()  # a tolerance can only add hits
