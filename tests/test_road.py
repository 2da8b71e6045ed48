"""ROAD (noisy linear imputation, MoRF/LeRF), AOPC, and the Gini / complexity columns.

- the imputation against hand-solved 3x3 cases (one pixel, a corner, two coupled pixels);
- ROAD against pytorch-grad-cam's ``ROADMostRelevantFirst`` / ``ROADLeastRelevantFirst`` (``pip install
  grad-cam``, with OpenCV; skipped where absent) on the same model, image and map, its noise set to 0;
- AOPC against its definition (Samek et al. 2017) from the MoRF curve;
- Gini and complexity against brute force from their formulas.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from layerscope.metrics.road import linear_impute, noisy_linear_impute, removed_counts, road
from layerscope.metrics.sparseness import complexity, gini


def _impute(values: list[list[float]], removed: list[tuple[int, int]]) -> torch.Tensor:
    x = torch.tensor(values, dtype=torch.float64).view(1, 1, 3, 3)
    mask = torch.zeros(1, 3, 3, dtype=torch.bool)
    for i, j in removed:
        mask[0, i, j] = True
    return linear_impute(x, mask)[0, 0]


def test_imputation_hand_computed_3x3():
    # centre: (side 1/6 * 0 + diagonal 1/12 * 12) / (4/6 + 4/12) = 1
    assert _impute([[0, 0, 0], [0, 99, 0], [0, 0, 12]], [(1, 1)])[1, 1].item() == pytest.approx(1.0, abs=1e-9)
    # corner (0, 0): neighbours 6 (side), 12 (side), 0 (diagonal): (1 + 2) / (5/12) = 7.2
    out = _impute([[99, 6, 0], [12, 0, 0], [0, 0, 0]], [(0, 0)])
    assert out[0, 0].item() == pytest.approx(7.2, abs=1e-9)
    # (0, 0) and (0, 1) together: 5a = 2b + 24 and 8b = 2a + 48 (times 12), so a = b = 8
    out = _impute([[99, -99, 6], [12, 0, 24], [0, 0, 0]], [(0, 0), (0, 1)])
    assert out[0, 0].item() == pytest.approx(8.0, abs=1e-8) and out[0, 1].item() == pytest.approx(8.0, abs=1e-8)
    kept = torch.tensor([[0, 0, 6], [12, 0, 24], [0, 0, 0]], dtype=torch.float64)
    assert torch.equal(out[kept != 0], kept[kept != 0])  # kept pixels unchanged


def test_imputation_noise_only_on_removed_pixels_and_refusals():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 12, 12, generator=g)
    removed = torch.rand(2, 12, 12, generator=g) < 0.5
    clean = linear_impute(x, removed)
    noisy = noisy_linear_impute(x, removed, 0.01, torch.Generator().manual_seed(1))
    diff = (noisy - clean).permute(1, 0, 2, 3)
    assert torch.equal(diff[:, ~removed], torch.zeros_like(diff[:, ~removed]))
    assert 0.007 < diff[:, removed].std().item() < 0.013
    with pytest.raises(ValueError, match="every pixel removed"):
        linear_impute(x, torch.ones(2, 12, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="fractions in"):
        road(lambda z: z.mean((2, 3)), x, torch.rand(2, 1, 3, 3), torch.zeros(2, dtype=torch.long), fractions=[1.0])


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, stride=2),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(8, 5)).eval()


def test_road_summaries_follow_their_definitions():
    model = _model()
    g = torch.Generator().manual_seed(2)
    x, maps, target = torch.rand(2, 3, 12, 12, generator=g), torch.rand(2, 2, 4, 4, generator=g), torch.tensor([1, 3])
    curve = road(model, x, maps, target, batch_size=7, curves=True)  # (B, K, 2, F)
    out = road(model, x, maps, target, batch_size=5)
    p_x = model(x).softmax(-1)[torch.arange(2), target]
    assert torch.allclose(out[..., 0], curve[:, :, 0].mean(-1), atol=1e-6)
    assert torch.allclose(out[..., 1], curve[:, :, 1].mean(-1), atol=1e-6)
    aopc = torch.stack([(p_x[b] - torch.cat([p_x[b].view(1), curve[b, k, 0]])).mean() for b in range(2)
                        for k in range(2)]).view(2, 2)  # Samek et al.: mean over k = 0..L of f(x) - f(x_k)
    assert torch.allclose(out[..., 2], aopc, atol=1e-6)
    # a map without ties has one order: tie_orders changes nothing
    assert torch.allclose(road(model, x, maps, target, tie_orders=0), out, atol=1e-6)


def test_removed_counts_are_the_papers_fractions():
    assert removed_counts(100, [0.1, 0.5, 0.9]).tolist() == [10, 50, 90]
    assert removed_counts(256, [0.1]).tolist() == [26]
    assert removed_counts(4, [0.1, 0.9]).tolist() == [0, 3]  # one cell always kept


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ROADMostRelevantFirst", "ROADLeastRelevantFirst"])
def test_road_equals_pytorch_grad_cam(name):
    road_module = pytest.importorskip("pytorch_grad_cam.metrics.road",
                                      reason="pytorch-grad-cam with OpenCV (pip install grad-cam) is not installed")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _model()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 80, 80, generator=g)  # grad-cam perturbs the model's (normalised) input
    maps = torch.rand(2, 1, 10, 10, generator=g)  # no ties: both order the cells alike
    target = torch.tensor([0, 4])
    mode = 0 if "Most" in name else 1
    fractions = [0.1, 0.5, 0.9]
    ours = road(model, x, maps, target, fractions, softmax=False, noise=0.0, curves=True)[:, 0, mode]  # (B, F)
    with torch.no_grad():
        before = model(x)[torch.arange(2), target]
    cams = torch.nn.functional.interpolate(maps, size=(80, 80), mode="nearest")[:, 0].numpy()
    for f, q in enumerate(fractions):
        # grad-cam's percentile p removes the cells at or above (MoRF; below, LeRF) the p-th percentile: on a
        # 10 x 10 grid, 100 - p cells, our fraction q = 1 - p / 100
        metric = getattr(road_module, name)(percentile=round(100 * (1 - q)))
        metric.perturbation.imputer.noise = 0.0
        theirs = metric(x, cams, [ClassifierOutputTarget(int(c)) for c in target], model)  # after - before
        torch.testing.assert_close(ours[:, f] - before, torch.from_numpy(theirs).float(), atol=2e-5, rtol=0)


def _gini_brute(a: list[float]) -> float:
    a = [abs(v) for v in a]
    n, mean = len(a), sum(a) / len(a)
    return sum(abs(u - v) for u, v in itertools.product(a, a)) / (2 * n * n * mean)  # mean absolute difference


def test_gini_and_complexity_against_their_formulas():
    g = torch.Generator().manual_seed(4)
    maps = torch.randn(3, 4, 5, generator=g)
    maps[1] = maps[1].abs()
    for m, value in zip(maps, gini(maps)):
        assert value.item() == pytest.approx(_gini_brute(m.flatten().tolist()), abs=1e-6)
    for m, value in zip(maps, complexity(maps)):
        p = [abs(v) / m.abs().sum().item() for v in m.flatten().tolist()]
        assert value.item() == pytest.approx(-sum(q * math.log(q) for q in p if q > 0), abs=1e-5)
    one_hot = torch.zeros(1, 4, 4)
    one_hot[0, 2, 1] = 3.0
    assert gini(one_hot).item() == pytest.approx(15 / 16) and complexity(one_hot).item() == 0.0
    flat = torch.full((1, 4, 4), 0.5)
    assert gini(flat).item() == pytest.approx(0.0, abs=1e-7)
    assert complexity(flat).item() == pytest.approx(math.log(16))
    assert gini(torch.zeros(1, 2, 2)).isnan().all() and complexity(torch.zeros(1, 2, 2)).isnan().all()


def test_sparseness_columns_in_both_scorers_only_when_asked():
    from layerscope.config.schema import MetricsOptions
    from layerscope.scoring import ScoreOptions, Target, image_rows
    from layerscope.scoring import batch_image_rows

    g = torch.Generator().manual_seed(6)
    maps = {0: torch.rand(2, 3, 4, 4, generator=g), 1: torch.rand(2, 3, 2, 2, generator=g)}
    maps[0][1, 2] = 0.0  # no mass: NaN
    names = {0: ["a", "b", "c"], 1: ["a", "b", "c"]}
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[3:9, 4:12] = True
    targets = [Target(mask), None]
    metas = [{"image": "x"}, {"image": "y"}]
    off = ScoreOptions.of(0.6, "keep_mass", "nearest", MetricsOptions())
    on = ScoreOptions.of(0.6, "keep_mass", "nearest", MetricsOptions(sparseness=True))
    plain = batch_image_rows(metas, maps, names, targets, off)
    assert all("gini" not in row and "complexity" not in row for rows in plain for row in rows)
    batched = batch_image_rows(metas, maps, names, targets, on)
    for b in range(2):
        single = image_rows(metas[b], {layer: m[b] for layer, m in maps.items()}, names, targets[b], on)
        assert len(single) == len(batched[b])
        for s, r in zip(single, batched[b]):
            for column in ("gini", "complexity"):
                assert (math.isnan(s[column]) and math.isnan(r[column])) or s[column] == r[column]
        stripped = [{k: v for k, v in row.items() if k not in ("gini", "complexity")} for row in batched[b]]
        assert str(stripped) == str(plain[b])  # the other columns as without the option (NaN-safe comparison)
    expect = gini(maps[0][0]).tolist()
    assert [row["gini"] for row in batched[0] if row["layer"] == 0 and row["head"] != "best"] == \
        pytest.approx(expect)
    assert math.isnan(next(r["gini"] for r in batched[1] if r["layer"] == 0 and r["head"] == "c"))


def test_sanity_options_are_checked_with_one_line():
    from types import SimpleNamespace

    from layerscope.config.schema import MetricsOptions
    from layerscope.sanity import check_sanity

    cls = SimpleNamespace(num_classes=10, name="m")
    method = SimpleNamespace(needs_references=False, name="gradcam")
    check_sanity(MetricsOptions(road=True, randomisation="cascading"), cls, method)
    with pytest.raises(ValueError, match=r"metrics.randomisation=full: expected one of none, cascading, independent"):
        check_sanity(MetricsOptions(randomisation="full"), cls, method)
    with pytest.raises(ValueError, match="metrics.road needs a model with a classifier; model m has none"):
        check_sanity(MetricsOptions(road=True), SimpleNamespace(num_classes=0, name="m"), method)
    with pytest.raises(ValueError, match=r"metrics.road_noise=-1: expected a standard deviation >= 0"):
        check_sanity(MetricsOptions(road_noise=-1.0), cls, method)
    with pytest.raises(ValueError, match="does not apply to method=patch_knn"):
        check_sanity(MetricsOptions(randomisation="independent"), cls,
                     SimpleNamespace(needs_references=True, name="patch_knn"))


@pytest.mark.slow
def test_run_writes_the_columns_and_rescore_recomputes_the_cheap_ones(tmp_path):
    import csv

    from layerscope import study
    from layerscope.rescoring import rescore_dir

    from .conftest import compose

    cfg = compose("model=tiny_cnn", "model.num_classes=5", "model.img_size=32", "data.textures=[brick]",
                  "data.defects=[spot]", "progress=false", "cache.enabled=false", "dataset_metrics=false",
                  "figures.grid=false", "method=gradcam", "layer=[1,2]", "metrics.road=true", "metrics.sparseness=true",
                  "metrics.randomisation=independent")
    study.run(cfg, tmp_path / "run")
    with open(tmp_path / "run" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row in rows:
        for column in ("gini", "complexity", "road_morf", "road_lerf", "aopc", "mprt_spearman", "random_logit_ssim"):
            assert row[column] != "", column
        assert -1 <= float(row["mprt_spearman"]) <= 1 and 0 <= float(row["road_morf"]) <= 1
    rescored = rescore_dir(tmp_path / "run", ["metrics.sparseness=true"], "rescored.csv", progress=False)
    with open(rescored) as f:
        again = list(csv.DictReader(f))
    assert [r["gini"] for r in again] == [r["gini"] for r in rows]
    assert all(r["road_morf"] == "" for r in again)  # needs the model: not rescored
