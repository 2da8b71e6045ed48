"""From a ``Sample`` to the tensors a backbone eats, at one square size."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .base import Sample


def _resize_bool(mask: np.ndarray, size: int) -> torch.Tensor:
    m = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    return torch.from_numpy(np.asarray(m) > 127)


def to_input(sample: Sample, size: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Resize image and mask to ``size`` x ``size``.

    The whole image is resized (no crop) so the mask stays aligned with every pixel;
    bicubic for the image, nearest for the mask.

    Returns:
        image: float RGB in [0, 1], (3, size, size).
        mask: bool, (size, size), or None.
        valid: bool, (size, size), False where the sample ignores pixels, or None.
    """
    image = np.asarray(Image.fromarray(sample.image).resize((size, size), Image.BICUBIC))
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0
    mask = _resize_bool(sample.mask, size) if sample.mask is not None else None
    valid = ~_resize_bool(sample.ignore, size) if sample.ignore is not None else None
    return x, mask, valid
