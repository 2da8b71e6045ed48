"""Metrics against hand-computed cases and scikit-learn."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score, roc_auc_score

from layerscope.metrics.distribution import normalized_entropy
from layerscope.metrics.rank_groups import auroc
from layerscope.metrics.segmentation import iou


def test_iou_hand_case():
    pred = torch.zeros(4, 4, dtype=torch.bool)
    target = torch.zeros(4, 4, dtype=torch.bool)
    pred[:2, :2] = True  # 4 px
    target[1:3, 1:3] = True  # 4 px, overlap 1
    assert iou(pred, target).item() == pytest.approx(1 / 7)
    assert iou(target, target).item() == 1.0
    assert math.isnan(iou(torch.zeros(2, 2, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.bool)).item())


def test_iou_matches_sklearn_and_batches():
    rng = np.random.default_rng(0)
    preds = rng.random((5, 16, 16)) > 0.6
    target = rng.random((16, 16)) > 0.7
    ours = iou(torch.from_numpy(preds), torch.from_numpy(target))
    for k in range(5):
        assert ours[k].item() == pytest.approx(jaccard_score(target.ravel(), preds[k].ravel()), abs=1e-6)
    with pytest.raises(ValueError, match="mask sizes differ"):
        iou(torch.from_numpy(preds), torch.zeros(8, 8, dtype=torch.bool))


def test_entropy_uniform_delta_and_two_cells():
    assert normalized_entropy(torch.ones(4, 4)).item() == pytest.approx(1.0)
    delta = torch.zeros(4, 4)
    delta[2, 3] = 5
    assert normalized_entropy(delta).item() == pytest.approx(0.0, abs=1e-9)
    half = torch.zeros(4, 4)
    half[0, :2] = 1  # two equal cells of 16: log 2 / log 16 = 0.25
    assert normalized_entropy(half).item() == pytest.approx(0.25)
    assert math.isnan(normalized_entropy(torch.zeros(3, 3)).item())
    assert normalized_entropy(torch.rand(2, 6, 5, 5)).shape == (2, 6)


def test_auroc_hand_case_with_ties():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4])
    target = torch.tensor([False, False, True, True, True])
    # pairs (positive, negative): 0.35 beats 0.1 only (1), 0.8 beats both (2), 0.4 beats 0.1 and ties 0.4 (1.5)
    assert auroc(scores, target).item() == pytest.approx(4.5 / 6)
    assert math.isnan(auroc(scores, torch.ones(5, dtype=torch.bool)).item())


def test_auroc_matches_sklearn_on_random_maps():
    rng = np.random.default_rng(1)
    scores = np.round(rng.random((4, 12, 12)), 2)  # rounding makes ties
    target = rng.random((12, 12)) > 0.8
    ours = auroc(torch.from_numpy(scores), torch.from_numpy(target))
    for k in range(4):
        assert ours[k].item() == pytest.approx(roc_auc_score(target.ravel(), scores[k].ravel()), abs=1e-6)


@pytest.mark.parametrize("grid,size", [((4, 4), (16, 16)), ((5, 7), (23, 30)), ((8, 8), (8, 8))])
def test_auroc_on_grid_with_cell_counts_equals_pixel_auroc_after_nearest_upsampling(grid, size):
    from layerscope.methods import upsample
    from layerscope.metrics.localization import cells_from_mask
    from layerscope.metrics.rank_groups import auroc_counts

    g = torch.Generator().manual_seed(3)
    maps = torch.round(torch.rand(3, *grid, generator=g) * 10) / 10  # with ties
    target = torch.rand(size, generator=g) > 0.7
    pixel = auroc(upsample(maps, size, "nearest"), target)
    cells = cells_from_mask(target, grid)
    grid_level = auroc_counts(maps.flatten(-2), cells.pos, cells.neg)
    torch.testing.assert_close(grid_level, pixel, atol=1e-6, rtol=0)
