"""What the API accepts as images and layers, read as a run reads them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..backbones import Backbone, select_indices

ImageLike = Union[str, Path, Image.Image, np.ndarray]
"""One image: a path, a PIL image, or an (H, W), (H, W, 3) or (H, W, 4) array (uint8, uint16, floats in [0, 1])."""
Images = Union[ImageLike, Sequence[ImageLike], torch.Tensor]
"""Images: one, a sequence of them, a (B, H, W, 3) array, or a float tensor (B, 3, S, S) taken as the model's input."""
Layers = Union[int, str, Sequence[Union[int, str]], np.ndarray, torch.Tensor]
"""Layers: ``"all"``, an int (negative from the end), a module name, or a sequence of them."""
MaskLike = Union[str, Path, Image.Image, np.ndarray, None]
"""One mask, in its image's frame and size: a path, a PIL image, an (H, W) array, or None (no mask)."""
Masks = Union[MaskLike, Sequence[MaskLike]]
"""One mask per image (None where there is none)."""

def resolve_layers(backbone: Backbone, layers: Layers | None) -> list[int]:
    """``"all"``, an int or module name, or a list of them -> sorted layer indices."""
    if isinstance(layers, str) and layers == "all" or layers is None:
        return list(range(backbone.num_layers))
    if isinstance(layers, (np.ndarray, torch.Tensor)):
        layers = layers.tolist()  # a 0-d array gives its number, a 1-d one a list
    items = list(layers) if isinstance(layers, (list, tuple, range)) else [layers]
    names = backbone.layer_names()
    out = []
    for item in items:
        item = as_int(item)
        if isinstance(item, str):
            if item not in names:
                shown = ", ".join(names[:6]) + (f", ... ({len(names)} layers)" if len(names) > 6 else "")
                raise ValueError(f"layers={item!r}: not a layer of model {backbone.name}; its layers are {shown} "
                                 "(or ints, negative from the end; wrap(model, layers=[...]) takes any module)")
            out.append(names.index(item))
        elif isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"layers={item!r}: expected an int (negative from the end), a module name, 'all', or a "
                             "list of them")
        else:
            out.append(item)
    return select_indices(out, backbone.num_layers, "layer")


def as_int(value: Any) -> Any:
    """A NumPy or 0-d torch integer as a Python int (layers, targets); anything else as it is."""
    if isinstance(value, np.integer) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point() \
            and not value.is_complex() and value.dtype != torch.bool:
        return int(value)
    return value


def _as_rgb(item: Any, i: int) -> tuple[np.ndarray, str]:
    """One image as (H, W, 3) uint8 and its id (the file stem for a path, else its index)."""
    from ..data.images import array_to_rgb, pil_to_rgb, read_image

    if isinstance(item, (str, Path)):
        rgb, image_id = read_image(Path(item)), Path(item).stem
    elif isinstance(item, Image.Image):
        rgb, image_id = pil_to_rgb(item), str(i)  # the files' rule: 16-bit scaled, not clipped
    elif isinstance(item, (np.ndarray, torch.Tensor, list, tuple)):
        arr = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        rgb, image_id = array_to_rgb(arr, f"images[{i}]"), str(i)
    else:
        raise ValueError(f"images[{i}]: expected a path, a PIL image or an (H, W, 3) array, got {type(item).__name__}")
    if not rgb.shape[0] or not rgb.shape[1]:
        raise ValueError(f"images[{i}]: an empty image ({rgb.shape[1]}x{rgb.shape[0]} pixels)")
    return rgb, image_id


def read_images(backbone: Backbone, images: Any) -> tuple[torch.Tensor, torch.Tensor, list[str], list[tuple[int, int]]]:
    """(RGB in [0, 1] (B, 3, S, S), the model's normalised input, ids, each image's (H, W) as given) from any
    accepted images."""
    from ..data.base import Sample
    from ..data.transforms import to_input

    size = backbone.img_size
    if isinstance(images, torch.Tensor):  # already the model's input
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"images: a tensor is taken as the model's preprocessed input and must be (B, 3, {size}, "
                             f"{size}), got {tuple(images.shape)}; pass images (paths, PIL, uint8 arrays) to have "
                             "them resized and normalised")
        if not images.is_floating_point():
            raise ValueError(f"images: a tensor is taken as the model's preprocessed (normalised, float) input, got "
                             f"{images.dtype}; pass uint8 images as (H, W, 3) NumPy arrays or PIL images to have them "
                             "resized and normalised")
        if not len(images):
            raise ValueError("images: an empty batch (a tensor of 0 images)")
        xn = images.detach().float().cpu()
        if not torch.isfinite(xn).all():
            raise ValueError("images: the tensor has NaN/inf values")
        rgb = (xn * backbone.std.float().cpu() + backbone.mean.float().cpu()).clamp(0, 1)
        return rgb, xn, [str(i) for i in range(len(xn))], [(size, size)] * len(xn)
    if isinstance(images, (str, Path, np.ndarray)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
        images = [images]
    elif not isinstance(images, (list, tuple, np.ndarray)):
        images = [images] if isinstance(images, Image.Image) else list(images)
    if not len(images):
        raise ValueError("images: none given")
    xs, ids, sizes = [], [], []
    for i, item in enumerate(images):
        rgb, image_id = _as_rgb(item, i)
        xs.append(to_input(Sample(id=image_id, image=rgb), size)[0])  # the run's resize: whole image, bicubic
        ids.append(image_id)
        sizes.append(tuple(rgb.shape[:2]))
    rgb = torch.stack(xs)
    return rgb, (rgb - backbone.mean.float().cpu()) / backbone.std.float().cpu(), ids, sizes
