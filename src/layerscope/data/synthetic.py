"""Synthetic surface defects on real texture photographs.

This module provides a built-in, download-free dataset for scoring where the
attention maps of vision models point. Each sample is a crop of one of the
texture photographs bundled with scikit-image (``skimage.data``) with one
synthetic surface defect painted onto it, together with the exact binary mask
of that defect.

The defects and how they are painted: ``data.defects``.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
from collections.abc import Sequence

import numpy as np
from skimage import data as skdata
from skimage import transform

from layerscope.data.base import DatasetBase, Sample
from layerscope.data.defects import DEFECTS, REFERENCE_SIZE, defect_target, is_real, make_defect

__all__ = ["TEXTURES", "SyntheticDefects"]

TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel", "moon")


# --------------------------------------------------------------------------
# Textures
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _load_texture(name: str) -> np.ndarray:
    """Loads a bundled scikit-image texture as a read-only grey float image.

    Args:
        name: One of :data:`TEXTURES`.

    Returns:
        Float32 array (H, W) with values in [0, 1]. The array is cached and
        shared, so it is marked read-only.
    """
    image = np.asarray(getattr(skdata, name)())
    if image.ndim == 3:  # not the case for the bundled textures; be safe
        image = image[..., :3].mean(axis=-1)
    if np.issubdtype(image.dtype, np.integer):
        image = image.astype(np.float32) / float(np.iinfo(image.dtype).max)
    image = np.clip(image.astype(np.float32), 0.0, 1.0)
    image.setflags(write=False)
    return image


def _texture_patch(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Returns a size x size grey patch of a texture in [0, 1].

    A crop at a random offset is taken when the texture is larger than
    ``size``; the texture is resized (anti-aliased) when it is smaller.

    Args:
        name: Texture name.
        size: Output side length in pixels.
        rng: Generator that draws the crop offset.

    Returns:
        Float32 array (size, size).
    """
    texture = _load_texture(name)
    height, width = texture.shape
    if height < size or width < size:
        side = min(height, width)
        texture = texture[:side, :side]
        return transform.resize(
            texture, (size, size), order=1, anti_aliasing=True, preserve_range=True
        ).astype(np.float32)
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    return np.array(texture[top : top + size, left : left + size], dtype=np.float32)


# --------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    """Whether ``value`` is an integer (bools excluded)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_names(value: str | Sequence[str], valid: tuple[str, ...], what: str) -> tuple[str, ...]:
    """Validates a selection of names against ``valid``."""
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names:
        raise ValueError(f"{what}s must not be empty; valid {what}s: {', '.join(valid)}")
    for name in names:
        if name not in valid:
            raise ValueError(f"unknown {what} {name!r}; valid {what}s: {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what}s must not repeat, got {names!r}")
    return names


class SyntheticDefects(DatasetBase):
    """Synthetic defects on bundled texture photos, with exact masks.

    Item ``i`` is a texture crop with one defect, deterministic in
    ``(seed, i)`` and the constructor arguments and independent of the order
    in which items are requested. Items run over textures (outer), defect
    kinds (middle) and repeats (inner). See the module docstring for the
    defect kinds and the painting rule.

    Args:
        textures: Texture names, a subset of :data:`TEXTURES`.
        defects: Defect kinds, a subset of :data:`DEFECTS`.
        per_combination: Samples per (texture, defect) pair, >= 1.
        size: Side of the square images in pixels, >= 32. Textures
            (512 x 512) are cropped at a random offset when ``size < 512``
            and resized when ``size > 512``.
        scale: Defect size multiplier, > 0.
        contrast: Defect strength in [0, 1]; 0 gives the clean texture.
        seed: Base random seed.
        good_per_texture: Defect-free test images per texture (category
            ``"good"``, empty mask), after the defective ones; they make
            image-level AUROC measurable.

    Raises:
        ValueError: On an unknown texture or defect, or an option outside
            its range.
    """

    def __init__(
        self,
        textures: Sequence[str] = TEXTURES,
        defects: Sequence[str] = DEFECTS,
        per_combination: int = 1,
        size: int = 256,
        scale: float = 1.0,
        contrast: float = 0.5,
        seed: int = 0,
        good_per_texture: int = 0,
    ) -> None:
        self.textures = _as_names(textures, TEXTURES, "texture")
        self.defects = _as_names(defects, DEFECTS, "defect")
        if not _is_int(per_combination) or per_combination < 1:
            raise ValueError(f"per_combination must be an integer >= 1, got {per_combination!r}")
        if not _is_int(size) or size < 32:
            raise ValueError(f"size must be an integer >= 32, got {size!r}")
        if not is_real(scale) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        if not is_real(contrast) or not 0.0 <= contrast <= 1.0:
            raise ValueError(f"contrast must be in [0, 1], got {contrast!r}")
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if not _is_int(good_per_texture) or good_per_texture < 0:
            raise ValueError(f"good_per_texture must be an integer >= 0, got {good_per_texture!r}")
        self.good_per_texture = int(good_per_texture)
        self.per_combination = int(per_combination)
        self.size = int(size)
        self.scale = float(scale)
        self.contrast = float(contrast)
        self.seed = int(seed)

    def __len__(self) -> int:
        """Returns the number of samples."""
        return len(self.textures) * (len(self.defects) * self.per_combination + self.good_per_texture)

    def _good(self, j: int, stream: int, name: str, category: str) -> Sample:
        texture = self.textures[j % len(self.textures)]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, stream, j]))
        grey = np.round(_texture_patch(texture, self.size, rng) * 255.0).astype(np.uint8)
        return Sample(id=f"{texture}_{name}_{j // len(self.textures)}", image=np.repeat(grey[:, :, None], 3, axis=2),
                      mask=np.zeros((self.size, self.size), bool), category=category, source=texture)

    has_references = True

    def references(self, n: int | None, seed: int = 0) -> list[Sample]:
        """``n`` defect-free crops of every texture (the few-shot protocol's category), texture-major.

        Crop ``r`` of a texture is drawn from ``(data.seed, 2, seed, texture, r)``: a stream apart from every
        test item's, so no reference is a test image; for one ``seed`` the first ``n`` crops are those of any
        larger ``n``, and a texture's crops do not depend on which other textures the dataset holds.

        Args:
            n: crops per texture; None: as many as the test set holds images per texture.
            seed: the study's seed (which crops).
        """
        per = len(self) // len(self.textures) if n is None else int(n)
        out = []
        for texture in self.textures:
            for r in range(per):
                entropy = [self.seed, 2, int(seed), TEXTURES.index(texture), r]
                rng = np.random.default_rng(np.random.SeedSequence(entropy))
                grey = np.round(_texture_patch(texture, self.size, rng) * 255.0).astype(np.uint8)
                out.append(Sample(id=f"{texture}_train_{r}", image=np.repeat(grey[:, :, None], 3, axis=2),
                                  mask=np.zeros((self.size, self.size), bool), category="good", source=texture))
        return out

    def __getitem__(self, i: int) -> Sample:
        """Generates sample ``i``.

        Args:
            i: Index in ``[-len(self), len(self))``.

        Returns:
            Sample with ``id`` like ``"brick_scratch_0"``, ``image`` uint8
            (size, size, 3) RGB, ``mask`` bool (size, size),
            ``category`` the defect kind and ``source`` the texture name.

        Raises:
            IndexError: If ``i`` is out of range.
        """
        asked = i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {asked} out of range for {n} samples (valid -{n}..{n - 1})")
        n_defective = len(self.textures) * len(self.defects) * self.per_combination
        if i >= n_defective:  # good items: texture-major like the defective ones
            j = i - n_defective
            t, r = divmod(j, self.good_per_texture)
            return self._good(r * len(self.textures) + t, 1, "good", "good")
        per_texture = len(self.defects) * self.per_combination
        texture = self.textures[i // per_texture]
        defect = self.defects[(i // self.per_combination) % len(self.defects)]
        repeat = i % self.per_combination

        crop_seq, defect_seq = np.random.SeedSequence([self.seed, i]).spawn(2)
        image = _texture_patch(texture, self.size, np.random.default_rng(crop_seq))
        defect_rng = np.random.default_rng(defect_seq)
        alpha, mask = make_defect(defect, image.shape, defect_rng, self.scale)
        s = self.size / REFERENCE_SIZE * self.scale
        target = defect_target(defect, image, defect_rng, s)
        weight = alpha * self.contrast
        out = image * (1.0 - weight) + target * weight
        grey = np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)
        return Sample(
            id=f"{texture}_{defect}_{repeat}",
            image=np.repeat(grey[:, :, None], 3, axis=2),
            mask=mask,
            category=defect,
            source=texture,
        )
