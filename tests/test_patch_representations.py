"""Representations that can see a defect: ``patches`` (a layer's cells on one common grid, rows = image x
cell) and ``defect`` / ``background`` (the mean of the cells inside / outside the mask), saved from the same
pass, against brute forces and against the pooled kinds they must reduce to."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layerscope.comparison import Model, representation_rows
from layerscope.metrics.probe import probe
from layerscope.results.cells import adaptive_pool, cell_ids, common_grid, image_of, mask_pooled


def brute_pool(x: np.ndarray, out: tuple[int, int]) -> np.ndarray:
    """torch's adaptive_avg_pool2d windows written out: rows [floor(i h / o), ceil((i + 1) h / o))."""
    h, w = x.shape[:2]
    res = np.empty((*out, x.shape[-1]))
    for i in range(out[0]):
        for j in range(out[1]):
            r0, r1 = int(np.floor(i * h / out[0])), int(np.ceil((i + 1) * h / out[0]))
            c0, c1 = int(np.floor(j * w / out[1])), int(np.ceil((j + 1) * w / out[1]))
            res[i, j] = x[r0:r1, c0:c1].reshape(-1, x.shape[-1]).mean(0)
    return res


def test_adaptive_pool_equals_torch_s_windows():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 5, 3)).astype(np.float32)
    for out in [(7, 5), (3, 2), (1, 1), (4, 4)]:
        got = adaptive_pool(x, out)
        want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), out).permute(0, 2, 3, 1)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-6)
        np.testing.assert_allclose(got[1], brute_pool(x[1], out), atol=1e-6)
    with pytest.raises(ValueError, match="grid 8x5: expected at most the cells' own 7x5"):
        adaptive_pool(x, (8, 5))


def test_mask_pooled_is_the_mean_of_the_map_over_the_mask_s_pixels():
    rng = np.random.default_rng(1)
    cells = rng.normal(size=(4, 4, 3))
    mask = np.zeros((32, 32), bool)
    mask[3:13, 20:31] = True
    up = cells.repeat(8, 0).repeat(8, 1)  # each cell's features on its 8 x 8 pixels
    defect, background = mask_pooled(cells, mask)
    np.testing.assert_allclose(defect, up[mask].mean(0), rtol=1e-6)
    np.testing.assert_allclose(background, up[~mask].mean(0), rtol=1e-6)
    none, everything = mask_pooled(cells, np.zeros((32, 32), bool))  # a good image: no defect, all background
    assert np.isnan(none).all()
    np.testing.assert_allclose(everything, cells.reshape(-1, 3).mean(0), rtol=1e-6)
    assert all(np.isnan(v).all() for v in mask_pooled(cells, None))  # no mask: neither exists


def test_row_ids_name_their_image():
    assert cell_ids(["a#b", "c"], (1, 2)) == ["a#b#0,0", "a#b#0,1", "c#0,0", "c#0,1"]
    assert [image_of(r) for r in cell_ids(["a#b", "c"], (1, 2))] == ["a#b", "a#b", "c", "c"]
    assert image_of("plain") == "plain" and image_of("x#note") == "x#note"
    assert common_grid([(8, 8), (4, 4), (2, 2)]) == (2, 2) and common_grid([(8, 8), (4, 4)], 3) == (3, 3)
    with pytest.raises(ValueError, match="--grid 5: the coarsest compared layer has 4x4 cells; expected at most 4"):
        common_grid([(8, 8), (4, 4)], 5)


def _models(identical: bool, seed: int = 0):
    """Two models of 24 images: ``patches`` arrays (n, h, w, D) at different grids per layer, and the pooled
    ``mean`` (n, D) of the same features. With ``identical``, every cell of an image holds its pooled vector."""
    rng = np.random.default_rng(seed)
    ids = [f"img{i}" for i in range(24)]
    out_cells, out_pooled = [], []
    for name, grids in (("vit", [(4, 4), (4, 4)]), ("cnn", [(8, 8), (2, 2)])):
        cells, pooled = {}, {}
        for layer, (h, w) in enumerate(grids):
            mean = rng.normal(size=(24, 6)).astype(np.float32)
            noise = np.zeros((24, h, w, 6)) if identical else rng.normal(size=(24, h, w, 6))
            cells[layer] = (mean[:, None, None, :] + noise).astype(np.float32)
            pooled[layer] = cells[layer].mean((1, 2))
        out_cells.append(Model(name, [Path(name)], list(ids), cells))
        out_pooled.append(Model(name, [Path(name)], list(ids), pooled))
    return out_cells, out_pooled


def test_patches_of_identical_cells_reduce_to_the_pooled_result():
    from layerscope.comparison import similarity_table

    cells, pooled = _models(identical=True)
    rows, _ = representation_rows(cells, "patches")  # common grid: the coarsest layer's, 2 x 2
    assert rows[1].ids[:5] == ["img0#0,0", "img0#0,1", "img0#1,0", "img0#1,1", "img1#0,0"]
    for m, p in zip(rows, pooled):
        for layer, a in m.arrays.items():
            assert a.shape == (24 * 4, 6)
            np.testing.assert_allclose(a, p.arrays[layer].repeat(4, 0), rtol=1e-5, atol=1e-5)  # the pooled vector
    # one cell per image: the comparison is the pooled comparison, row for row
    one, _ = representation_rows(cells, "patches", grid=1)
    a = similarity_table(one, "patches", n_perm=50, n_boot=50)
    b = similarity_table(pooled, "patches", n_perm=50, n_boot=50)
    for column in ("value", "ci_low", "ci_high", "null_mean", "p_value"):  # the same rows: the same draws
        np.testing.assert_allclose(a[column], b[column], atol=1e-6)
    # the probe on 4 identical cells per image (cells of an image left out together, 4 k neighbour cells = k
    # images, the null permuting whole images) is the pooled probe: accuracy and null
    labels = np.array(["crack", "spot", "stain"])[np.arange(24) % 3]
    x = rows[0].arrays[1]
    images = np.array([image_of(r) for r in rows[0].ids])
    got = probe(x, labels.repeat(4), k=20, groups=images, units=images, permutations=50, seed=3)
    want = probe(pooled[0].arrays[1], labels, k=5, permutations=50, seed=3)
    for key in ("accuracy", "chance", "null_q05", "null_q95", "p_value"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_patches_rows_max_cells_and_missing_defects():
    cells, pooled = _models(identical=False, seed=1)
    rows, warnings = representation_rows(cells, "patches", max_cells=30, seed=2)
    assert len(rows[0].ids) == len(rows[1].ids) == 30 and rows[0].ids == rows[1].ids  # the same cells for both
    again, _ = representation_rows(cells, "patches", max_cells=30, seed=2)
    assert again[0].ids == rows[0].ids and "30 of 96 cells kept" in warnings[0]
    pooled[0].arrays[0][[3, 5]] = np.nan  # two images without a defect
    kept, warnings = representation_rows(pooled, "defect")
    assert len(kept[0].ids) == 22 and "img3" not in kept[0].ids and len(kept[1].ids) == 24
    assert "2 of 24 images have no defect representation" in warnings[0]
    for m in pooled:
        for a in m.arrays.values():
            a[:] = np.nan
    with pytest.raises(ValueError, match="--kind background: model vit has no image with a background"):
        representation_rows(pooled, "background")


@pytest.mark.slow
def test_a_run_saves_cells_that_reduce_to_its_pooled_kinds_and_masked_means_of_them(tmp_path):
    from layerscope import study
    from layerscope.results import load_representations
    from layerscope.results.layout import map_file
    from layerscope.results.maps_io import load_maps

    from .conftest import compose

    small = ["data.textures=[brick]", "data.defects=[scratch,spot]", "data.per_combination=2", "data.size=64",
             "progress=false", "figures.grid=false", "dataset_metrics=false", "cache.enabled=false",
             "save_representations=true"]
    study.run(compose(*small, "model=tiny_vit"), tmp_path / "vit")
    study.run(compose(*small, "model=tiny_cnn", "representation_grid=4"), tmp_path / "cnn")
    ids, patches = load_representations(tmp_path / "vit", "patches")
    _, mean = load_representations(tmp_path / "vit", "mean")
    _, defect = load_representations(tmp_path / "vit", "defect")
    _, background = load_representations(tmp_path / "vit", "background")
    for layer, a in patches.items():
        assert a.shape == (4, 8, 8, 32)  # 64 px / patch 8: the block's own grid, under representation_grid=8
        np.testing.assert_allclose(a.mean((1, 2)), mean[layer], atol=1e-5)  # the cells' mean: the pooled kind
        for i, image in enumerate(ids):
            mask = load_maps(map_file(tmp_path / "vit", image))["mask"]
            share = mask.reshape(8, 8, 8, 8).mean((1, 3))  # each cell's share of mask pixels
            want = (share[..., None] * a[i]).sum((0, 1)) / share.sum()
            np.testing.assert_allclose(defect[layer][i], want, rtol=1e-4, atol=1e-5)
            want = ((1 - share)[..., None] * a[i]).sum((0, 1)) / (1 - share).sum()
            np.testing.assert_allclose(background[layer][i], want, rtol=1e-4, atol=1e-5)
    _, cnn = load_representations(tmp_path / "cnn", "patches")
    _, cnn_mean = load_representations(tmp_path / "cnn", "mean")
    for layer, a in cnn.items():
        assert a.shape[1] == a.shape[2] <= 4  # representation_grid=4 caps every stage
        if a.shape[1] == 4 or a.shape[1] == 2 or a.shape[1] == 1:  # 64 px stages divide evenly: equal windows
            np.testing.assert_allclose(a.mean((1, 2)), cnn_mean[layer], atol=1e-4)
