"""Localisation metrics against independent references and hand-built cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.measure import label
from sklearn.metrics import jaccard_score, roc_auc_score

from layerscope.methods import upsample
from layerscope.metrics.localization import (aupro, aupro_counts, cells_from_mask, iou_counts, iou_oracle_counts,
                                             mass_in_mask_counts, pointing_game_counts, top_score)
from layerscope.metrics.rank_groups import auroc_counts


def aupro_reference(score: np.ndarray, mask: np.ndarray, limit: float) -> float:
    """Straight from the MVTec AD definition: every threshold, PRO over regions, FPR over negatives."""
    labels = label(mask, connectivity=2)
    regions = [labels == i for i in range(1, labels.max() + 1)]
    negative = ~mask
    fprs, pros = [0.0], [0.0]
    for t in np.unique(score)[::-1]:
        pred = score >= t
        fprs.append((pred & negative).sum() / negative.sum())
        pros.append(np.mean([(pred & r).sum() / r.sum() for r in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= limit
    x, y = list(fprs[keep]), list(pros[keep])
    if x[-1] < limit and (fprs > limit).any():
        j = int(np.argmax(fprs > limit))
        x.append(limit)
        y.append(float(np.interp(limit, fprs[j - 1:j + 1], pros[j - 1:j + 1])))
    return float(np.trapezoid(y, x) / limit)


def random_case(seed: int, shape=(24, 24), ties=False):
    rng = np.random.default_rng(seed)
    score = rng.random(shape)
    if ties:
        score = np.round(score, 1)
    mask = np.zeros(shape, bool)
    mask[3:7, 4:12] = True  # two regions of different size
    mask[15:22, 16:19] = True
    mask[rng.random(shape) > 0.97] = True  # and some single pixels
    return score, mask


@pytest.mark.parametrize("seed,ties,limit", [(0, False, 0.3), (1, True, 0.3), (2, False, 1.0), (3, True, 0.05)])
def test_aupro_matches_reference(seed, ties, limit):
    score, mask = random_case(seed, ties=ties)
    ours = aupro(torch.from_numpy(score)[None], torch.from_numpy(mask), limit)[0].item()
    assert ours == pytest.approx(aupro_reference(score, mask, limit), abs=1e-6)


def test_aupro_hand_cases():
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[2:4, 2:4] = True
    perfect = mask.double()
    assert aupro(perfect[None], mask)[0].item() == pytest.approx(1.0)
    inverted = 1 - perfect  # every negative pixel first: PRO stays 0 until FPR = 1
    assert aupro(inverted[None], mask)[0].item() == pytest.approx(0.0)
    assert math.isnan(aupro(perfect[None], torch.zeros(10, 10, dtype=torch.bool))[0].item())


@pytest.mark.parametrize("grid,size", [((6, 6), (24, 24)), ((5, 7), (23, 31))])
def test_grid_counts_equal_pixel_metrics_after_nearest_upsampling(grid, size):
    g = torch.Generator().manual_seed(0)
    maps = torch.round(torch.rand(3, *grid, generator=g) * 10) / 10
    _, mask = random_case(4, shape=size)
    mask = torch.from_numpy(mask)
    up = upsample(maps, size, "nearest")
    grid_cells, pixel_cells = cells_from_mask(mask, grid), cells_from_mask(mask, size)
    for fn in (aupro_counts, mass_in_mask_counts, iou_oracle_counts):
        torch.testing.assert_close(fn(maps.flatten(-2), grid_cells), fn(up.flatten(-2), pixel_cells), atol=1e-6, rtol=0)
    kept = maps.flatten(-2) > 0.5
    torch.testing.assert_close(iou_counts(kept, grid_cells), iou_counts(up.flatten(-2) > 0.5, pixel_cells))


def test_iou_counts_matches_sklearn_and_ignores_pixels():
    score, mask = random_case(5)
    pred = score > 0.6
    cells = cells_from_mask(torch.from_numpy(mask), mask.shape)
    ours = iou_counts(torch.from_numpy(pred).flatten()[None], cells)[0].item()
    assert ours == pytest.approx(jaccard_score(mask.ravel(), pred.ravel()))
    valid = np.ones_like(mask)
    valid[:, :5] = False  # an ignore band leaves those pixels out of both sets
    cells = cells_from_mask(torch.from_numpy(mask), mask.shape, torch.from_numpy(valid))
    ours = iou_counts(torch.from_numpy(pred).flatten()[None], cells)[0].item()
    assert ours == pytest.approx(jaccard_score(mask[valid], pred[valid]))
    auc = auroc_counts(torch.from_numpy(score).flatten()[None], cells.pos, cells.neg)[0].item()
    assert auc == pytest.approx(roc_auc_score(mask[valid], score[valid]))


def test_iou_oracle_is_the_best_threshold():
    score, mask = random_case(6, ties=True)
    cells = cells_from_mask(torch.from_numpy(mask), mask.shape)
    best = max(jaccard_score(mask.ravel(), (score >= t).ravel()) for t in np.unique(score))
    assert iou_oracle_counts(torch.from_numpy(score).flatten()[None], cells)[0].item() == pytest.approx(best)


def test_mass_pointing_and_top_score_hand_cases():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = True
    cells = cells_from_mask(mask, (4, 4))
    m = torch.ones(1, 16)
    m[0, 0] = 5  # 5 of 20 units on the mask pixel
    assert mass_in_mask_counts(m, cells)[0].item() == pytest.approx(0.25)
    assert pointing_game_counts(m, cells)[0].item() == 1.0
    m[0, 0], m[0, 5] = 0, 9
    assert pointing_game_counts(m, cells)[0].item() == 0.0
    assert top_score(torch.arange(10.0)[None], 0.2)[0].item() == pytest.approx(8.5)
    assert top_score(torch.arange(10.0)[None], 0.01)[0].item() == 9.0
