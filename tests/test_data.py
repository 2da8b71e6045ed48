"""Photos and user folders."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from layerscope.data.folder import Folder
from layerscope.data.samples import PHOTOS, Samples
from layerscope.data.base import Sample
from layerscope.data.transforms import to_input


def test_samples_are_rgb_photos_without_masks():
    ds = Samples()
    assert [ds[i].id for i in range(len(ds))] == list(PHOTOS)
    for i in range(len(ds)):
        s = ds[i]
        assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3 and s.mask is None
    with pytest.raises(ValueError, match="data.photos"):
        Samples(["dog"])


def test_folder_pairs_masks_by_name(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((20, 30, 3), 100, np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.full((20, 30), 7, np.uint8), mode="L").save(tmp_path / "img" / "b.jpg")
    m = np.zeros((20, 30), np.uint8)
    m[5:10, 5:10] = 255
    Image.fromarray(m).save(tmp_path / "masks" / "a_mask.png")
    ds = Folder(str(tmp_path / "img"), str(tmp_path / "masks"))
    assert len(ds) == 2
    a, b = ds[0], ds[1]
    assert a.id == "a" and a.mask.sum() == 25 and a.image.shape == (20, 30, 3)
    assert b.id == "b" and b.mask is None and b.image.shape == (20, 30, 3)  # grey converted to RGB
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "masks" / "b.png")
    with pytest.raises(ValueError, match=r"b.png: mask is 10x10, image b.jpg is 30x20"):
        ds[1]


def test_folder_errors_name_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.root="):
        Folder(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no images"):
        Folder(str(tmp_path))


def test_to_input_keeps_mask_aligned():
    image = np.zeros((40, 80, 3), np.uint8)
    mask = np.zeros((40, 80), bool)
    mask[:, 40:] = True
    image[:, 40:] = 255
    x, m, _ = to_input(Sample("s", image, mask), 32)
    assert x.shape == (3, 32, 32) and m.shape == (32, 32)
    assert m[:, 16:].all() and not m[:, :16].any()
    assert x[:, :, 20:].min() > 0.9 and x[:, :, :12].max() < 0.1
