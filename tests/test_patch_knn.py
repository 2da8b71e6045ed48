"""patch_knn's options against references written from the papers (PatchCore, AnomalyDINO), and anomalib where it imports."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.decomposition import PCA

from layerscope.bench.fewshot_cost import KNN_CASES, KNN_QUICK, knn_table
from layerscope.cli import bench
from layerscope.methods import knn_conventions as knn
from layerscope.methods.patch_knn import PatchKNN

from .conftest import CONF, compose


class FeatureBackbone:
    """The least a map method needs of a backbone: it captures features, at ``img_size``."""

    kind, captures, num_layers = "cnn", ("features",), 5

    def __init__(self, img_size: int = 32):
        self.img_size = img_size

    def check_capture(self, capture, method=None):
        assert capture in self.captures


def fitted(features_refs: dict[int, torch.Tensor], img_size: int = 32, layers=None, **options) -> PatchKNN:
    """A PatchKNN fitted on the given reference features (layer -> (R, C, h, w)), one batch, for ``layers``
    (default: every layer given)."""
    m = PatchKNN(FeatureBackbone(img_size), **options)
    m.fit([torch.zeros(1)], layers if layers is not None else list(features_refs), lambda x: (features_refs, None))
    return m


def brute_knn(queries: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Mean Euclidean distance to the k nearest rows, from the full float64 distance matrix."""
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, :k].mean(1)


def brute_greedy(z: np.ndarray, start: int, m: int) -> list[int]:
    """Greedy k-center from its definition: repeatedly the point farthest from every chosen centre."""
    d = np.sqrt(((z[:, None, :].astype(np.float64) - z[None].astype(np.float64)) ** 2).sum(-1))
    chosen = [start]
    while len(chosen) < m:
        chosen.append(int(np.argmax(d[:, chosen].min(1))))
    return chosen


# ---- coreset ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [8, 200])  # without, and with, the random projection (PROJECTION_DIM = 128)
@pytest.mark.parametrize("seed", [0, 3])
def test_greedy_coreset_equals_brute_force_k_center(dim, seed):
    x = torch.randn(60, dim, generator=torch.Generator().manual_seed(seed + dim))
    g = torch.Generator().manual_seed(seed)  # the documented draw: the start, then the (D, 128) Gaussian matrix
    start = int(torch.randint(60, (1,), generator=g))
    z = x.numpy() if dim <= 128 else (x @ (torch.randn(dim, 128, generator=g) / np.sqrt(128))).numpy()
    got = knn.greedy_coreset(x, 12, seed)
    assert got.tolist() == brute_greedy(z, start, 12)
    assert len(set(got.tolist())) == 12
    assert knn.greedy_coreset(x, 12, seed).tolist() == got.tolist()  # seeded


def test_greedy_coreset_covers_better_than_random():
    """The k-center objective: the largest distance of any point to its centre."""
    x = torch.cat([torch.randn(200, 4), torch.randn(5, 4) + 20])  # a far-away cluster a random pick may miss
    def radius(idx):
        return torch.cdist(x, x[idx]).min(1).values.max().item()
    greedy = knn.greedy_coreset(x, 10, 0)
    assert radius(greedy) < min(radius(torch.randperm(205, generator=torch.Generator().manual_seed(s))[:10])
                                for s in range(5))


def test_coreset_ratio_keeps_the_floor_of_the_fraction():
    refs = {0: torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(1))}
    for coreset in ("random", "greedy"):
        assert len(fitted(refs, coreset=coreset, coreset_ratio=0.1).banks[0]) == 5  # int(50 * 0.1)
    assert len(fitted(refs, coreset_ratio=0.1, bank_size=3).banks[0]) == 3
    assert len(fitted(refs, bank_size=None).banks[0]) == 50


# ---- search ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_search_equals_brute_force_in_any_chunking(k):
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(97, 16, generator=g) * 30, torch.randn(150, 16, generator=g) * 30 + 5
    ref = brute_knn(q.numpy(), bank.numpy(), k)
    for chunk in (1, 10, 4096):
        got = knn.knn_distance(q, knn.Bank(bank, "euclidean"), k, chunk).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)


def test_float64_recheck_resolves_what_fp32_cancellation_reorders():
    """Large, nearly equal norms: ||q||^2 + ||b||^2 - 2 q.b in fp32 loses the 1e-3 gaps between neighbours."""
    base = torch.full((1, 8), 1024.0)
    bank = base + torch.tensor([[3.0], [1.0], [2.0], [5.0]]) / 1024 * torch.eye(8)[0]  # exact in fp32
    approx = (base.pow(2).sum() + bank.pow(2).sum(1) - 2 * bank @ base[0]).clamp_min(0).sqrt()
    assert not torch.allclose(approx, torch.tensor([3.0, 1.0, 2.0, 5.0]) / 1024, rtol=0.1)  # fp32 alone: lost
    got = knn.knn_distance(base, knn.Bank(bank, "euclidean"), 2).item()
    assert got == pytest.approx(1.5 / 1024, rel=1e-9)


def test_cosine_equals_euclidean_on_l2_normalised_features():
    g = torch.Generator().manual_seed(2)
    q, bank = torch.randn(80, 12, generator=g), torch.randn(120, 12, generator=g)
    qn, bn = q / q.norm(dim=1, keepdim=True), bank / bank.norm(dim=1, keepdim=True)
    cos, cos_idx = knn.knn_search(q, knn.Bank(bank, "cosine"), 6)
    eu, eu_idx = knn.knn_search(qn, knn.Bank(bn, "euclidean"), 6)
    assert torch.equal(cos_idx, eu_idx)  # every query's neighbours, in the same rank order
    np.testing.assert_allclose(cos.numpy(), eu.numpy() ** 2 / 2, atol=1e-6)  # unit vectors: 1 - cos = ||a - b||^2 / 2
    one = knn.knn_distance(q, knn.Bank(bank, "cosine"), 1).numpy()
    assert (np.argsort(one, kind="stable") == np.argsort(eu[:, 0].numpy(), kind="stable")).all()  # map ranks, k = 1


def test_cosine_distance_is_one_minus_cosine_similarity():
    q, bank = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0], [-3.0, 0.0]])
    assert knn.knn_distance(q, knn.Bank(bank, "cosine"), 2).item() == pytest.approx((1.0 + 2.0) / 2)


# ---- aggregation, smoothing, masking, rotations -----------------------------------------------------


@pytest.mark.parametrize("p", [3, 5])
def test_aggregate_equals_a_hand_written_average_with_zero_padding(p):
    t = torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(p))
    a = t.numpy()
    ref = np.zeros_like(a)
    r = p // 2
    for i in range(6):
        for j in range(7):
            total = np.zeros(a.shape[:2])
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    if 0 <= i + di < 6 and 0 <= j + dj < 7:  # outside the map: zeros, still counted below
                        total += a[:, :, i + di, j + dj]
            ref[:, :, i, j] = total / (p * p)
    np.testing.assert_allclose(knn.local_average(t, p).numpy(), ref, atol=1e-6)
    assert knn.local_average(t, 1) is t


def test_aggregate_is_applied_to_references_and_queries():
    g = torch.Generator().manual_seed(4)
    refs, test = torch.randn(2, 5, 6, 6, generator=g), torch.randn(1, 5, 6, 6, generator=g)
    m = fitted({1: refs}, aggregate=3, bank_size=None)
    flat = lambda t: t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1]).numpy()  # noqa: E731
    ref = brute_knn(flat(knn.local_average(test, 3)), flat(knn.local_average(refs, 3)), 1)
    np.testing.assert_allclose(m.maps({1: test})[1].flatten().numpy(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_smooth_equals_scipy_gaussian_filter_of_the_nearest_upsampled_map(sigma):
    maps = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    up = np.repeat(np.repeat(maps.numpy(), 10, axis=2), 10, axis=3).astype(np.float64)  # nearest, 4 -> 40
    # torch's "reflect" padding mirrors about the edge pixel: scipy's mode "mirror"; radius int(4 sigma + 0.5)
    ref = ndimage.gaussian_filter(up, sigma=(0, 0, sigma, sigma), mode="mirror", truncate=4.0)
    np.testing.assert_allclose(knn.smooth(maps, 40, sigma).numpy(), ref, atol=1e-6)
    with pytest.raises(ValueError, match=r"^method.smooth_sigma=4: the Gaussian's half-width 16 px reaches"):
        knn.smooth(maps, 16, 4.0)


def reference_mask(t: np.ndarray, threshold: float) -> np.ndarray:
    """AnomalyDINO's mask from sklearn's PCA and scipy's morphology: (C, h, w) -> (h, w) bool."""
    c, h, w = t.shape
    pc = PCA(n_components=1, svd_solver="full").fit_transform(t.reshape(c, -1).T.astype(np.float64))[:, 0]
    mask = (pc > threshold).reshape(h, w)
    crop = mask[int(h * 0.2):int(h * 0.8), int(w * 0.2):int(w * 0.8)]
    if crop.sum() <= crop.size * 0.35:
        mask = (-pc > threshold).reshape(h, w)
    s = np.ones((3, 3), bool)
    mask = ndimage.binary_dilation(mask, s, border_value=0)
    mask = ndimage.binary_dilation(mask, s, border_value=0)  # closing = dilation, then erosion
    return ndimage.binary_erosion(mask, s, border_value=1)  # outside the map never erodes (OpenCV's default)


def object_features(seed: int, h: int = 10, w: int = 10) -> torch.Tensor:
    """(2, 16, h, w): a disc of one feature direction on a background of another, plus noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    disc = ((yy - h / 2 + 0.5) ** 2 + (xx - w / 2 + 0.5) ** 2 < (h / 3) ** 2).float()
    fg, bg = torch.randn(16, generator=g) * 10, torch.randn(16, generator=g) * 10
    t = disc * fg.view(16, 1, 1) + (1 - disc) * bg.view(16, 1, 1)
    return torch.stack([t + torch.randn(16, h, w, generator=g), t.flip(-1) + torch.randn(16, h, w, generator=g)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_background_mask_equals_pca_and_morphology_by_hand(seed):
    t = object_features(seed)
    got = knn.background_mask(t, 10.0)
    for i in range(2):
        assert (got[i].numpy() == reference_mask(t[i].numpy(), 10.0)).all()
    assert got[:, 5, 5].all() and not got[:, 0, 0].any()  # the disc is the foreground, the corners are not


def test_masked_background_gets_no_score_and_stays_out_of_the_bank():
    refs, test = object_features(0), object_features(5)[:1]
    m = fitted({0: refs}, mask_background=True, bank_size=None)
    keep = knn.background_mask(refs, 10.0)
    assert len(m.banks[0]) == int(keep.sum())
    out = m.maps({0: test})[0][0, 0]
    assert (out[~knn.background_mask(test, 10.0)[0]] == 0).all()
    with pytest.raises(ValueError, match=r"^method=patch_knn: method.mask_background left no foreground patch"):
        fitted({0: refs}, mask_background=True, mask_threshold=1e6)


def test_rotations_are_eight_views_and_the_right_angles_are_exact():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    views = knn.rotations(x)
    assert views.shape == (16, 3, 8, 8)
    assert torch.equal(views[0], x[0]) and torch.equal(views[8], x[1])
    assert torch.equal(views[2], torch.rot90(x[0], 1, dims=(-2, -1)))  # 90 degrees, counter-clockwise
    yy, xx = torch.meshgrid(torch.arange(9.0), torch.arange(9.0), indexing="ij")
    ramp = (xx - 4).expand(1, 3, 9, 9)  # bilinear interpolation of a linear image is exact
    turned = knn.rotations(ramp, angles=(45,))[0, 0]
    by_hand = (xx - 4) * np.cos(np.pi / 4) - (yy - 4) * np.sin(np.pi / 4)  # same sense as rot90
    assert (turned - by_hand)[2:7, 2:7].abs().max() < 1e-5  # inside: no border reflection reached
    twice = knn.rotations(knn.rotations(ramp, angles=(45,)), angles=(45,))[0]
    assert (twice - torch.rot90(ramp[0], 1, dims=(-2, -1)))[:, 3:6, 3:6].abs().max() < 1e-5


def test_rotated_references_triple_the_fit_batches_into_eight_views():
    seen = []
    m = PatchKNN(FeatureBackbone(), augment_references="rotations", bank_size=None)
    m.fit([torch.rand(2, 3, 8, 8)], [0], lambda x: (seen.append(x.shape[0]) or {0: torch.rand(x.shape[0], 4, 2, 2)}, None))
    assert seen == [2] * 8 and len(m.banks[0]) == 16 * 4


# ---- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, message", [
    ({"metric": "manhattan"}, r"^method.metric=manhattan: expected euclidean or cosine$"),
    ({"aggregate": 2}, r"^method.aggregate=2: expected 1 \(off\), 3 or 5$"),
    ({"coreset": "kmeans"}, r"^method.coreset=kmeans: expected random or greedy$"),
    ({"coreset_ratio": 0}, r"^method.coreset_ratio=0: expected a fraction in \(0, 1\]"),
    ({"smooth_sigma": -1}, r"^method.smooth_sigma=-1: expected sigma in pixels >= 0"),
    ({"augment_references": "flips"}, r"^method.augment_references=flips: expected none or rotations$"),
    ({"smooth_sigma": "wide"}, r"^method.smooth_sigma=wide: expected sigma in pixels >= 0 \(0 = off\)$"),
    ({"coreset_ratio": "all"}, r"^method.coreset_ratio=all: expected a fraction in \(0, 1\]"),
    ({"k": 0}, r"^method.k=0: expected an int >= 1$"),
])
def test_bad_options_are_one_line_naming_the_option(option, message):
    with pytest.raises(ValueError, match=message):
        PatchKNN(FeatureBackbone(), **option)


@pytest.mark.parametrize("preset, expected", [
    ("anomalydino", {"metric": "cosine", "k": 1, "aggregate": 1, "smooth_sigma": 4, "bank_size": None}),
    ("patchcore", {"metric": "euclidean", "k": 1, "aggregate": 3, "coreset": "greedy", "coreset_ratio": 0.1,
                   "smooth_sigma": 4}),
])
def test_presets_compose_over_patch_knn(preset, expected):
    cfg = compose(f"method={preset}", "model=tiny_cnn")
    assert cfg.method._target_ == "layerscope.methods.patch_knn.PatchKNN"
    assert {key: cfg.method[key] for key in expected} == expected


# ---- the presets against a reimplementation from the papers, and anomalib where it imports ---------------


def paper_anomalydino(refs: np.ndarray, test: np.ndarray, size: int, sigma: float = 4.0) -> np.ndarray:
    """AnomalyDINO (Damm et al. 2025) without masking: per patch 1 - max cosine similarity to the reference
    patches, upsampled (nearest) to the image and Gaussian-smoothed. refs (R, C, h, w), test (B, C, h, w)."""
    def rows(a):
        r = a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1]).astype(np.float64)
        return r / np.linalg.norm(r, axis=1, keepdims=True)
    d = (1 - rows(test) @ rows(refs).T).min(1).reshape(test.shape[0], 1, *test.shape[2:])
    f = size // test.shape[2]
    up = np.repeat(np.repeat(d, f, axis=2), f, axis=3)
    return ndimage.gaussian_filter(up, sigma=(0, 0, sigma, sigma), mode="mirror", truncate=4.0)


def paper_patchcore(refs: np.ndarray, test: np.ndarray, size: int, sigma: float = 4.0) -> np.ndarray:
    """PatchCore (Roth et al. 2022) with the whole bank: 3 x 3 local averages (zero padding), the Euclidean
    distance to the nearest reference patch, upsampled (nearest) and Gaussian-smoothed."""
    def avg(a):
        padded = np.pad(a.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
        h, w = a.shape[2:]
        return sum(padded[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
    rows = lambda a: avg(a).transpose(0, 2, 3, 1).reshape(-1, a.shape[1])  # noqa: E731
    d = brute_knn(rows(test), rows(refs), 1).reshape(test.shape[0], 1, *test.shape[2:])
    f = size // test.shape[2]
    up = np.repeat(np.repeat(d, f, axis=2), f, axis=3)
    return ndimage.gaussian_filter(up, sigma=(0, 0, sigma, sigma), mode="mirror", truncate=4.0)


def preset(name: str, **extra) -> dict:
    cfg = compose(f"method={name}", "model=tiny_cnn")
    options = {k: v for k, v in cfg.method.items() if k not in ("_target_",)}
    return {**options, **extra}


@pytest.mark.parametrize("name, paper", [("anomalydino", paper_anomalydino), ("patchcore", paper_patchcore)])
def test_presets_equal_the_papers_reimplemented(name, paper):
    g = torch.Generator().manual_seed(7)
    refs, test = torch.randn(3, 24, 8, 8, generator=g), torch.randn(2, 24, 8, 8, generator=g) * 1.3
    options = preset(name, coreset_ratio=None)  # the whole bank: the coreset is tested on its own above
    got = fitted({2: refs}, img_size=64, **options).maps({2: test})[2]
    assert got.shape == (2, 1, 64, 64)
    np.testing.assert_allclose(got.numpy(), paper(refs.numpy(), test.numpy(), 64), rtol=1e-5, atol=1e-5)


class StubExtractor:
    """Stands in for anomalib's TimmFeatureExtractor: hands out the features queued for each forward pass,
    so that anomalib and layerscope compute their maps from the same features."""

    queue: list = []
    patch_size = 14

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, x):
        return StubExtractor.queue.pop(0)

    def eval(self):
        return self


@pytest.mark.parametrize("masking", [False, True])
def test_anomalydino_preset_equals_anomalib(monkeypatch, masking):
    """anomalib 2.7's AnomalyDINOModel (masking on and off) against method=anomalydino, to 1e-4."""
    torch_model = pytest.importorskip("anomalib.models.image.anomaly_dino.torch_model")
    monkeypatch.setattr(torch_model, "TimmFeatureExtractor", StubExtractor)
    refs, test = object_features(0, 16, 16), object_features(3, 16, 16)
    if masking:
        assert 0.2 < knn.background_mask(test).float().mean() < 0.8  # some patches are background
    nlc = lambda t: {"blocks.11": t.flatten(2).transpose(1, 2)}  # noqa: E731
    model = torch_model.AnomalyDINOModel(masking=masking)
    StubExtractor.queue = [nlc(refs), nlc(test)]
    model.train()
    model(torch.zeros(2, 3, 16 * 14, 16 * 14))
    model.fit()
    model.eval()
    theirs = model(torch.zeros(2, 3, 16 * 14, 16 * 14)).anomaly_map
    ours = fitted({11: refs}, img_size=16 * 14, **preset("anomalydino", mask_background=masking)).maps({11: test})[11]
    np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), atol=1e-4)


def test_patchcore_preset_equals_anomalib(monkeypatch):
    """anomalib 2.7's PatchcoreModel with its whole bank (its coreset draws unseeded randomness) against
    method=patchcore with coreset_ratio=null, to 1e-4."""
    torch_model = pytest.importorskip("anomalib.models.image.patchcore.torch_model")
    monkeypatch.setattr(torch_model, "TimmFeatureExtractor", StubExtractor)
    g = torch.Generator().manual_seed(11)
    refs, test = torch.randn(3, 32, 8, 8, generator=g), torch.randn(2, 32, 8, 8, generator=g) * 1.5
    model = torch_model.PatchcoreModel(layers=["layer2"], backbone="resnet18", pre_trained=False)
    StubExtractor.queue = [{"layer2": refs}, {"layer2": test}]
    model.train()
    model(torch.zeros(3, 3, 64, 64))
    model.memory_bank = torch.vstack(model.embedding_store)
    model.eval()
    theirs = model(torch.zeros(2, 3, 64, 64)).anomaly_map
    ours = fitted({2: refs}, img_size=64, **preset("patchcore", coreset_ratio=None)).maps({2: test})[2]
    np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), atol=1e-4)


# ---- the benchmark (never an assertion on speed) --------------------------------------------------------


def test_bench_cases_name_the_presets_and_bundled_models():
    for preset, model, layers in [*KNN_CASES, *KNN_QUICK]:
        assert (CONF / "method" / f"{preset}.yaml").is_file() and (CONF / "model" / f"{model}.yaml").is_file()
        assert layers and all(isinstance(layer, int) for layer in layers)


@pytest.mark.parametrize("argv, message", [
    (["--knn", "--pipeline"], r"--knn: goes alone"),
    (["--knn", "--shots", "0"], r"--shots 0: expected at least 1"),
])
def test_bench_knn_refuses_bad_flags_in_one_line(argv, message, capsys):
    assert bench.main(argv) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.slow
def test_bench_knn_quick_times_every_layer_against_the_backbone(capsys):
    rows = knn_table(KNN_QUICK, "cpu", rounds=1, shots=2, images=2)
    assert [(r["preset"], r["layer"]) for r in rows] == [(p, layer) for p, _, layers in KNN_QUICK for layer in layers]
    for r in rows:
        assert r["backbone_ms"] > 0 and r["map_ms_min"] <= r["map_ms"] <= r["map_ms_max"] and r["bank_rows"] > 0
        assert r["map_vs_backbone"] == pytest.approx(r["map_ms"] / r["backbone_ms"], rel=0.02)
    assert "vs backbone" in capsys.readouterr().out


# ---- fused candidates (PatchCore's layer2 + layer3) ----------------------------------------------------------


def bilinear_by_hand(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """(B, C, h0, w0) -> (B, C, h, w): pixel centres at (i + 0.5) * h0 / h - 0.5, clamped at the edges."""
    def taps(n_out, n_in):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo
    y0, y1, fy = taps(h, a.shape[2])
    x0, x1, fx = taps(w, a.shape[3])
    rows = a[:, :, y0] * (1 - fy)[:, None] + a[:, :, y1] * fy[:, None]
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx


def test_a_fused_candidates_map_is_the_knn_map_of_the_concatenated_resized_features():
    g = torch.Generator().manual_seed(5)
    refs = {2: torch.randn(3, 6, 8, 8, generator=g), 3: torch.randn(3, 10, 4, 4, generator=g)}
    test = {2: torch.randn(2, 6, 8, 8, generator=g), 3: torch.randn(2, 10, 4, 4, generator=g)}
    m = fitted(refs, layers=[2], fuse=[[3, 2]], bank_size=None)
    assert m.capture_layers([2]) == [2, 3] and m.extra_map_names(2) == ["2+3"] and m.extra_map_names(3) == []
    out = m.maps(test)
    assert set(out) == {2} and out[2].shape == (2, 2, 8, 8)  # layer 2's own knn map, then 2+3
    cat = lambda d: np.concatenate([d[2].numpy(), bilinear_by_hand(d[3].numpy(), 8, 8)], 1)  # noqa: E731
    rows = lambda a: a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])  # noqa: E731
    ref = brute_knn(rows(cat(test)), rows(cat(refs)), 1).reshape(2, 8, 8)
    np.testing.assert_allclose(out[2][:, 1].numpy(), ref, rtol=1e-5, atol=1e-5)
    own = brute_knn(rows(test[2].numpy()), rows(refs[2].numpy()), 1).reshape(2, 8, 8)
    np.testing.assert_allclose(out[2][:, 0].numpy(), own, rtol=1e-5, atol=1e-5)


def test_fused_patchcore_equals_anomalib_layer2_plus_layer3(monkeypatch):
    """anomalib's PatchcoreModel with layers layer2 + layer3 against method=patchcore with method.fuse=[[2,3]]."""
    torch_model = pytest.importorskip("anomalib.models.image.patchcore.torch_model")
    monkeypatch.setattr(torch_model, "TimmFeatureExtractor", StubExtractor)
    g = torch.Generator().manual_seed(12)
    refs = {2: torch.randn(3, 8, 8, 8, generator=g), 3: torch.randn(3, 12, 4, 4, generator=g)}
    test = {2: torch.randn(2, 8, 8, 8, generator=g) * 1.4, 3: torch.randn(2, 12, 4, 4, generator=g) * 1.4}
    model = torch_model.PatchcoreModel(layers=["layer2", "layer3"], backbone="resnet18", pre_trained=False)
    StubExtractor.queue = [{"layer2": refs[2], "layer3": refs[3]}, {"layer2": test[2], "layer3": test[3]}]
    model.train()
    model(torch.zeros(3, 3, 64, 64))
    model.memory_bank = torch.vstack(model.embedding_store)
    model.eval()
    theirs = model(torch.zeros(2, 3, 64, 64)).anomaly_map
    m = fitted(refs, img_size=64, layers=[2], **preset("patchcore", coreset_ratio=None, fuse=[[2, 3]]))
    np.testing.assert_allclose(m.maps(test)[2][:, 1:].numpy(), theirs.detach().numpy(), atol=1e-4)


@pytest.mark.parametrize("fuse, message", [
    ([[2]], r"^method.fuse=\[\[2\]\]: expected lists of at least two distinct layers in \[-5, 5\)"),
    ([[2, 2]], r"^method.fuse=\[\[2, 2\]\]: expected lists of at least two distinct"),
    ([[2, 9]], r"^method.fuse=\[\[2, 9\]\]: expected"),
    ([3], r"^method.fuse=\[3\]: expected"),
])
def test_bad_fuse_is_one_line(fuse, message):
    with pytest.raises(ValueError, match=message):
        PatchKNN(FeatureBackbone(), fuse=fuse)


def test_fused_candidate_needs_its_lowest_layer_among_the_layers():
    m = PatchKNN(FeatureBackbone(), fuse=[[-1, 3]])  # negative from the end: 4
    assert m.fused == [(3, 4)] and m.extra_map_names(3) == ["3+4"]
    with pytest.raises(ValueError, match=r"^method.fuse: 3\+4 is reported at layer 3, which is not among layer=\[4\]; add it"):
        m.capture_layers([4])


@pytest.mark.slow
def test_fused_candidate_flows_through_results_and_the_dataset_protocol(tmp_path):
    import pandas as pd

    from layerscope.cli.report import main as report_main

    from .conftest import run_main

    out = tmp_path / "fused"
    proc = run_main(["model=tiny_cnn", "method=patchcore", "method.fuse=[[0,1]]", "method.coreset_ratio=0.5",
                     "progress=false", "figures.max_images=1", "data.textures=[brick]", "data.defects=[spot]",
                     "data.size=64", "layer=[0,1]", "method.n_references=2", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pd.read_csv(out / "results.csv", dtype={"head": str})
    assert set(zip(rows["layer"], rows["head"])) == {(0, "knn"), (0, "0+1"), (1, "knn")}
    pooled = pd.read_csv(out / "dataset_metrics.csv", dtype={"head": str})
    assert set(zip(pooled["layer"], pooled["head"])) == {(0, "knn"), (0, "0+1"), (1, "knn")}
    assert pooled["aupro"].between(0, 1).all()
    assert report_main([str(out), "--metric", "aupro"]) == 0
    assert "| 0+1 |" in (out / "report_dataset_aupro.md").read_text()


@pytest.mark.slow
def test_the_python_api_runs_patch_knn_options_and_refuses_fused_candidates():
    import layerscope as ls

    bb = ls.load("tiny_cnn")
    rng = np.random.default_rng(0)
    normal = [rng.integers(100, 110, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    odd = normal[0].copy()
    odd[8:24, 8:24] = 255
    m = ls.maps(bb, [odd], layers=[2], method="patch_knn", references=normal, metric="cosine", aggregate=3,
                coreset="greedy", coreset_ratio=0.5, smooth_sigma=2)
    assert m[2].shape == (1, 1, 64, 64) and m[2][0, 0, 12:20, 12:20].min() > m[2][0, 0, 48:, 48:].max()
    with pytest.raises(ValueError, match=r"^method=patch_knn with fused layers \(method.fuse\) runs in studies"):
        ls.maps(bb, [odd], layers=[2], method="patch_knn", references=normal, fuse=[[2, 3]])
