"""Property-based checks (hypothesis) of the threshold and the metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from layerscope.methods import keep_mass
from layerscope.metrics.distribution import normalized_entropy
from layerscope.metrics.localization import aupro
from layerscope.metrics.rank_groups import auroc
from layerscope.metrics.segmentation import iou

FAST = settings(max_examples=60, deadline=None)
scores = arrays(np.float64, st.tuples(st.integers(2, 8), st.integers(2, 8)),
                elements=st.floats(0, 1, allow_nan=False, width=32))


@pytest.mark.slow
@FAST
@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(0.001, 10)),
       st.floats(0, 1), st.floats(0, 1))
def test_keep_mass_is_monotonic_and_keeps_at_least_the_mass(values, m1, m2):
    attn = torch.from_numpy(values)
    low, high = sorted((m1, m2))
    kept_low, kept_high = keep_mass(attn, low), keep_mass(attn, high)
    assert not (kept_low & ~kept_high).any()  # more mass keeps a superset
    share = float(attn[kept_high].sum() / attn.sum())
    assert share >= high - 1e-6


@FAST
@given(st.data())
def test_iou_is_symmetric_and_bounded(data):
    shape = data.draw(st.tuples(st.integers(1, 8), st.integers(1, 8)))
    a = torch.from_numpy(data.draw(arrays(np.bool_, shape)))
    b = torch.from_numpy(data.draw(arrays(np.bool_, shape)))
    ab, ba = iou(a, b).item(), iou(b, a).item()
    if not (a.any() or b.any()):
        assert math.isnan(ab) and math.isnan(ba)
    else:
        assert ab == ba and 0 <= ab <= 1
        assert (ab == 1) == bool(torch.equal(a, b))


@FAST
@given(scores)
def test_entropy_is_bounded_and_maximal_for_uniform_maps(s):
    m = torch.from_numpy(s)
    h = normalized_entropy(m).item()
    uniform = normalized_entropy(torch.ones_like(m)).item()
    assert uniform == 1.0 or abs(uniform - 1) < 1e-9
    if m.sum() > 0:
        assert -1e-9 <= h <= uniform + 1e-9


@st.composite
def scores_and_mask(draw):
    """A score map and a mask of the same random shape."""
    shape = draw(st.tuples(st.integers(2, 8), st.integers(2, 8)))
    s = draw(arrays(np.float64, shape, elements=st.floats(0, 1, width=32)))
    return torch.from_numpy(s), torch.from_numpy(draw(arrays(np.bool_, shape)))


@FAST
@given(scores_and_mask())
def test_auroc_is_bounded_and_flips_with_the_scores(case):
    s, t = case
    a = auroc(s, t).item()
    if t.all() or not t.any():
        assert math.isnan(a)
        return
    assert 0 <= a <= 1
    assert auroc(-s, t).item() == pytest.approx(1 - a, abs=1e-6)


@FAST
@given(scores_and_mask())
def test_aupro_is_bounded_and_perfect_for_the_mask_itself(case):
    s, t = case
    value = aupro(s[None], t, 0.3)[0].item()
    if t.all() or not t.any():
        assert math.isnan(value)
        return
    assert -1e-9 <= value <= 1 + 1e-9
    assert aupro(t.double()[None], t, 0.3)[0].item() == pytest.approx(1.0)
