"""``Maps`` has one axis, the layers (``len``, iteration, ``m[layer]``); ``.image(i)`` is one image's maps and
``.to_dataframe()`` one row per map cell; ``ls.maps`` and ``ls.score`` default to a run's options."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import layerscope as ls


@pytest.fixture(scope="module")
def cnn_maps():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 52, 3), dtype=np.uint8) for _ in range(3)]
    return ls.maps(ls.load("tiny_cnn", img_size=32), images, layers=[1, -1], method="features")


def test_len_and_iteration_are_over_layers(cnn_maps):
    m = cnn_maps
    assert len(m) == 2 and list(m) == m.layers == [1, 4] and m.num_images == 3
    assert [layer for layer, _ in m.items()] == m.layers
    assert all(a is m[layer] for layer, a in m.items())
    assert 1 in m and m.layer_names[0] in m and 0 not in m and "nope" not in m
    assert m[-1] is m[4] is m[m.layer_names[1]]
    with pytest.raises(KeyError, match=r"layer 0 is not among these maps' layers \[1, 4\]"):
        m[0]


def test_image_is_one_images_maps(cnn_maps):
    m = cnn_maps
    one = m.image(1)
    assert len(one) == len(m) and one.num_images == 1 and one.ids == [m.ids[1]] and one.sizes == [m.sizes[1]]
    for layer in m:
        np.testing.assert_array_equal(one[layer], m[layer][1:2])
    np.testing.assert_array_equal(one.images[0], m.images[1])
    np.testing.assert_array_equal(m.image(-1)[4], m[4][2:3])
    assert m.num_images == 3  # the original is untouched
    with pytest.raises(ValueError, match=r"^image: i=3: expected an image index in 0\.\.2$"):
        m.image(3)


def test_to_dataframe_has_one_row_per_map_cell(cnn_maps):
    m = cnn_maps
    df = m.to_dataframe()
    assert list(df.columns) == ["image", "layer", "layer_name", "map", "y", "x", "value"]
    assert len(df) == sum(a.size for _, a in m.items())
    rng = np.random.default_rng(1)
    for _ in range(20):  # any cell, found by its labels, holds the array's value
        layer = int(rng.choice(m.layers))
        a = m[layer]
        b, k, y, x = (int(rng.integers(n)) for n in a.shape)
        row = df[(df["image"] == m.ids[b]) & (df["layer"] == layer) & (df["map"] == m.names[k]) & (df["y"] == y)
                 & (df["x"] == x)]
        assert len(row) == 1 and row["value"].iloc[0] == a[b, k, y, x]
        assert row["layer_name"].iloc[0] == m.layer_names[m.layers.index(layer)]


def test_the_default_method_is_the_runs_auto():
    image = [np.zeros((32, 32, 3), np.uint8)]
    assert ls.maps(ls.load("tiny_cnn", img_size=32), image, layers=[-1]).names == ["l2", "mean_abs", "pca"]
    vit = ls.load("tiny_vit")
    assert ls.maps(vit, image, layers=[-1]).names == [*map(str, range(vit.num_heads)), "mean"]


def test_score_without_a_threshold_uses_the_runs(cnn_maps):
    from layerscope.config.schema import StudyConfig

    m = cnn_maps.image(0)
    mask = np.zeros(m.sizes[0], bool)
    mask[5:20, 10:30] = True
    default = ls.score(m, [mask])
    (threshold,) = StudyConfig().threshold
    pd.testing.assert_frame_equal(default, ls.score(m, [mask], threshold=threshold))
    assert set(default["threshold"].dropna()) == {threshold}
