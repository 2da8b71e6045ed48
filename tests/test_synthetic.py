"""Tests for the synthetic defect dataset (layerscope/data/synthetic.py) and its defects (layerscope/data/defects.py)."""

from __future__ import annotations

import numpy as np
import pytest

from layerscope.data.defects import DEFECTS, make_defect
from layerscope.data.synthetic import TEXTURES, SyntheticDefects


@pytest.fixture(scope="module")
def samples():
    """All samples of the default dataset."""
    ds = SyntheticDefects()
    return [ds[i] for i in range(len(ds))]


@pytest.fixture(scope="module")
def clean_samples():
    """The same samples without defects (contrast 0)."""
    ds = SyntheticDefects(contrast=0.0)
    return [ds[i] for i in range(len(ds))]


def test_length_and_ids(samples):
    assert len(SyntheticDefects()) == len(TEXTURES) * len(DEFECTS) == len(samples)
    expected = [f"{t}_{d}_0" for t in TEXTURES for d in DEFECTS]
    assert [s.id for s in samples] == expected
    assert [s.category for s in samples] == [d for _ in TEXTURES for d in DEFECTS]
    assert [s.source for s in samples] == [t for t in TEXTURES for _ in DEFECTS]


def test_ordering_textures_outer_defects_middle_repeats_inner():
    ds = SyntheticDefects(textures=("moon", "brick"), defects=("stain", "spot"), per_combination=3, size=32)
    assert len(ds) == 12
    ids = [ds[i].id for i in range(len(ds))]
    expected = [f"{t}_{d}_{r}" for t in ("moon", "brick") for d in ("stain", "spot") for r in range(3)]
    assert ids == expected
    assert ds[-1].id == "brick_spot_2"
    with pytest.raises(IndexError, match=r"index 12 out of range for 12 samples \(valid -12\.\.11\)"):
        ds[12]
    with pytest.raises(IndexError, match="index -13 out of range"):
        ds[-13]


def test_image_and_mask_format(samples):
    for s in samples:
        assert s.image.dtype == np.uint8
        assert s.image.shape == (256, 256, 3)
        assert np.array_equal(s.image[..., 0], s.image[..., 1])
        assert np.array_equal(s.image[..., 0], s.image[..., 2])
        assert s.mask.dtype == bool
        assert s.mask.shape == s.image.shape[:2]
        assert s.mask.any(), s.id
        assert s.mask.mean() < 0.25, s.id


def test_deterministic(samples):
    again = SyntheticDefects()
    for i, s in enumerate(samples):
        other = again[i]
        assert other.id == s.id
        assert np.array_equal(other.image, s.image)
        assert np.array_equal(other.mask, s.mask)


def test_index_independent_of_call_order(samples):
    ds = SyntheticDefects()
    for i in reversed(range(len(ds))):
        s = ds[i]
        assert np.array_equal(s.image, samples[i].image)
        assert np.array_equal(s.mask, samples[i].mask)
    assert np.array_equal(ds[7].mask, ds[7].mask)


def test_seed_changes_samples(samples):
    other = SyntheticDefects(seed=1)
    assert not all(np.array_equal(other[i].mask, s.mask) for i, s in enumerate(samples))


def test_defect_changes_pixels_mostly_inside_mask(samples, clean_samples):
    for s, clean in zip(samples, clean_samples):
        assert np.array_equal(s.mask, clean.mask)
        diff = np.abs(s.image.astype(np.float64) - clean.image.astype(np.float64))[..., 0]
        inside = diff[s.mask].mean()
        outside = diff[~s.mask].mean()
        assert inside > 3.0 * outside, (s.id, inside, outside)
        assert inside > 3.0, (s.id, inside)  # visible: several grey levels


def test_contrast_scales_change(clean_samples):
    weak = SyntheticDefects(contrast=0.1)
    strong = SyntheticDefects(contrast=0.9)
    for i, clean in enumerate(clean_samples):
        base = clean.image.astype(np.float64)
        m = clean.mask
        d_weak = np.abs(weak[i].image - base)[m].mean()
        d_strong = np.abs(strong[i].image - base)[m].mean()
        assert d_strong > d_weak, clean.id


def test_defect_away_from_border(samples):
    margin = max(2, int(0.04 * 256))
    for s in samples:
        rows, cols = np.nonzero(s.mask)
        assert rows.min() >= margin and cols.min() >= margin, s.id
        assert rows.max() < 256 - margin and cols.max() < 256 - margin, s.id


def test_scale_increases_mask_area():
    small = SyntheticDefects(per_combination=2, size=128, scale=1.0)
    large = SyntheticDefects(per_combination=2, size=128, scale=2.0)
    for kind in DEFECTS:
        idx = [i for i in range(len(small)) if small[i].category == kind]
        area_small = np.mean([small[i].mask.mean() for i in idx])
        area_large = np.mean([large[i].mask.mean() for i in idx])
        assert area_large > 1.3 * area_small, kind


@pytest.mark.parametrize("kind", DEFECTS)
def test_make_defect_contract(kind):
    rng = np.random.default_rng(3)
    alpha, mask = make_defect(kind, (96, 128), rng)
    assert alpha.dtype == np.float32 and alpha.shape == (96, 128)
    assert mask.dtype == bool and mask.shape == (96, 128)
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0
    assert np.array_equal(mask, alpha > 0.5)
    assert mask.any() and mask.mean() < 0.25
    again, _ = make_defect(kind, (96, 128), np.random.default_rng(3))
    assert np.array_equal(alpha, again)


@pytest.mark.parametrize("kind", DEFECTS)
@pytest.mark.parametrize("scale", [0.05, 50.0])
def test_make_defect_extreme_scales(kind, scale):
    for seed in range(3):
        alpha, mask = make_defect(kind, (64, 64), np.random.default_rng(seed), scale)
        assert mask.any()
        assert mask.mean() < 0.25
        assert not alpha[:2].any() and not alpha[-2:].any()
        assert not alpha[:, :2].any() and not alpha[:, -2:].any()


def test_typical_area_ordering(samples):
    area = {k: np.mean([s.mask.mean() for s in samples if s.category == k]) for k in DEFECTS}
    assert area["stain"] > max(area["scratch"], area["crack"], area["spot"])
    assert area["spot"] < area["stain"] / 5


def test_small_and_large_sizes():
    small = SyntheticDefects(size=32)
    for i in range(len(small)):
        s = small[i]
        assert s.image.shape == (32, 32, 3) and s.mask.any() and s.mask.mean() < 0.25
    large = SyntheticDefects(textures=("moon",), defects=("spot",), size=600)
    s = large[0]
    assert s.image.shape == (600, 600, 3) and s.mask.shape == (600, 600) and s.mask.any()


def test_subset_selection_single_string():
    ds = SyntheticDefects(textures="gravel", defects="crack", size=64)
    assert len(ds) == 1 and ds[0].id == "gravel_crack_0"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"textures": ("wood",)}, "texture"),
        ({"textures": ()}, "texture"),
        ({"textures": ("brick", "brick")}, "texture"),
        ({"defects": ("dent",)}, "defect"),
        ({"defects": ()}, "defect"),
        ({"size": 31}, "size"),
        ({"size": 64.0}, "size"),
        ({"per_combination": 0}, "per_combination"),
        ({"contrast": -0.1}, "contrast"),
        ({"contrast": 1.5}, "contrast"),
        ({"contrast": float("nan")}, "contrast"),
        ({"scale": 0.0}, "scale"),
        ({"scale": -1.0}, "scale"),
        ({"scale": float("inf")}, "scale"),
        ({"seed": -1}, "seed"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        SyntheticDefects(**kwargs)
    assert "\n" not in str(info.value)


def test_unknown_names_listed_in_error():
    with pytest.raises(ValueError, match="'wood'.*brick, grass, gravel, moon"):
        SyntheticDefects(textures=("wood",))
    with pytest.raises(ValueError, match="'dent'.*scratch, crack, spot, stain"):
        SyntheticDefects(defects=("dent",))


def test_make_defect_validation():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="'dent'.*scratch, crack, spot, stain"):
        make_defect("dent", (64, 64), rng)
    with pytest.raises(ValueError, match="scale"):
        make_defect("spot", (64, 64), rng, scale=0.0)
    with pytest.raises(ValueError, match="shape"):
        make_defect("spot", (8, 64), rng)
