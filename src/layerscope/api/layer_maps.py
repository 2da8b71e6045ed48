"""``Maps``: every requested layer's maps of a batch of images, as ``layerscope.maps`` returns them."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch

from ..backbones import Backbone
from .inputs import as_int

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from ..methods.base import MapMethod


class Maps:
    """Every requested layer's maps of a batch of images, as ``layerscope.maps`` returns them: a collection of
    layers.

    ``len(m)`` is the number of layers and ``for layer in m`` gives their indices (``m.items()``: with their
    arrays); ``m[layer]`` (an index, negative from the end, or a module name) is that layer's (B, K, h, w)
    float32 array, B images by K maps; ``m.image(i)`` is one image's maps (a ``Maps`` of B = 1);
    ``m.to_dataframe()`` is one row per map cell.

    Attributes:
        layers: layer indices, in order.
        layer_names: the module name of each layer.
        names: the K map names of every layer (heads then ``"mean"``, or ``"l2"``, ``"gradcam"``, ...).
        images: (B, S, S, 3) uint8, the model's input before normalisation.
        ids: one id per image (file stems for paths).
        sizes: each image's (H, W) as given (before resizing to S): the frame its mask is in.
        logits: (B, C) float32, or None without a classifier.
        method: the method's name; model: the backbone's name.
        num_images: B.
    """

    def __init__(self, arrays: dict[int, np.ndarray], names: list[str], backbone: Backbone, method: MapMethod,
                 rgb: torch.Tensor, ids: list[str], logits: np.ndarray | None,
                 sizes: list[tuple[int, int]] | None = None) -> None:
        self._arrays = arrays
        self.layers: list[int] = list(arrays)
        all_names = backbone.layer_names()
        self.layer_names = [all_names[layer] for layer in self.layers]
        self.names = list(names)
        self.backbone, self._method, self._rgb = backbone, method, rgb
        self.method, self.model = method.name, backbone.name
        self.images = (rgb.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        self.ids, self.logits = list(ids), logits
        side = self.images.shape[1]
        self.sizes: list[tuple[int, int]] = ([(int(h), int(w)) for h, w in sizes] if sizes is not None
                                             else [(side, side)] * len(self.ids))

    @property
    def num_images(self) -> int:
        """B, the number of images."""
        return len(self.ids)

    def __len__(self) -> int:
        """The number of layers."""
        return len(self.layers)

    def __iter__(self) -> Iterator[int]:
        """The layer indices, in order."""
        return iter(self.layers)

    def __contains__(self, layer: object) -> bool:
        try:
            self[layer]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def items(self) -> Iterator[tuple[int, np.ndarray]]:
        """(layer index, its (B, K, h, w) array) per layer, in order."""
        return ((layer, self._arrays[layer]) for layer in self.layers)

    def __getitem__(self, layer: int | str) -> np.ndarray:
        layer = as_int(layer)
        if isinstance(layer, str) and layer in self.layer_names:
            layer = self.layers[self.layer_names.index(layer)]
        elif isinstance(layer, int) and layer < 0:
            layer %= self.backbone.num_layers  # negative from the end of the model, as in maps(layers=...)
        if layer not in self._arrays:
            raise KeyError(f"layer {layer!r} is not among these maps' layers {self.layers} ({self.layer_names})")
        return self._arrays[layer]

    def __repr__(self) -> str:
        shapes = {layer: tuple(a.shape[-2:]) for layer, a in self._arrays.items()}
        return (f"Maps({self.model}, {self.method}, {len(self)} layers, {self.num_images} images, names {self.names}, "
                f"layer grids {shapes})")

    @property
    def predictions(self) -> list[str | None]:
        """Each image's top-1 label (None without a classifier or without label names)."""
        labels = self.backbone.labels
        if self.logits is None or not labels:
            return [None] * self.num_images
        return [labels[int(c)] for c in self.logits.argmax(-1)]

    def image(self, i: int) -> Maps:
        """Image ``i``'s maps (negative from the end): a ``Maps`` of one image, its arrays (1, K, h, w).

        Raises:
            ValueError: ``i`` is not an image index (one line).
        """
        i = self._image_index(i, "image")
        out = copy.copy(self)
        out._arrays = {layer: a[i:i + 1] for layer, a in self._arrays.items()}
        out._rgb, out.images = self._rgb[i:i + 1], self.images[i:i + 1]
        out.ids, out.sizes = self.ids[i:i + 1], self.sizes[i:i + 1]
        out.logits = None if self.logits is None else self.logits[i:i + 1]
        return out

    def _image_index(self, i: Any, what: str) -> int:
        """``i`` as an image index in 0..B-1 (negative from the end), or a one-line ValueError naming ``what``."""
        i = as_int(i)
        n = self.num_images
        if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
            raise ValueError(f"{what}: i={i!r}: expected an image index in 0..{n - 1}")
        return i % n

    def to_dataframe(self) -> pd.DataFrame:
        """Every map cell as a row: ``image`` (its id), ``layer``, ``layer_name``, ``map`` (its name), ``y``,
        ``x`` (the cell on the layer's grid) and ``value``; images, layers, maps and cells in order."""
        import pandas as pd

        parts = []
        for layer, name, a in zip(self.layers, self.layer_names, self._arrays.values()):
            b, k, h, w = a.shape
            image, m, y, x = np.meshgrid(np.arange(b), np.arange(k), np.arange(h), np.arange(w), indexing="ij")
            parts.append(pd.DataFrame({"image": np.asarray(self.ids, dtype=object)[image.ravel()], "layer": layer,
                                       "layer_name": name, "map": np.asarray(self.names, dtype=object)[m.ravel()],
                                       "y": y.ravel(), "x": x.ravel(), "value": a.ravel()}))
        return pd.concat(parts, ignore_index=True)

    def upsample(self, size: int | tuple[int, int] | None = None, mode: str = "bilinear") -> Maps:
        """The same maps resized to ``size`` (default: the input's side), ``bilinear`` or ``nearest``.

        Returns:
            A new ``Maps`` whose arrays are (B, K, H, W).
        """
        from ..methods.upsample import upsample

        side = as_int(size) if size is not None else self.images.shape[1]
        hw = (side, side) if isinstance(side, int) else tuple(as_int(v) for v in side) \
            if isinstance(side, (tuple, list)) else ()
        if len(hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in hw):
            raise ValueError(f"upsample: size={size!r}: expected a side in pixels >= 1, or (h, w)")
        out = copy.copy(self)
        out._arrays = {layer: upsample(torch.from_numpy(a), hw, mode).numpy() for layer, a in self._arrays.items()}
        return out

    def overlay(self, i: int, layer: int | str, k: int | str = -1, alpha: float = 0.5) -> Image.Image:
        """Image ``i`` with map ``k`` of ``layer`` on top (inferno colours, min-max scaled, bilinear).

        Args:
            i: image index.
            layer: layer index or module name.
            k: map index or name (default the last: the head mean of attention maps).
            alpha: opacity of the map.

        Returns:
            A PIL RGB image of the input's size.
        """
        from PIL import Image

        from ..figures.grid import colormap
        from ..methods.upsample import upsample

        i, k = self._image_index(i, "overlay"), as_int(k)
        if isinstance(k, str):
            if k not in self.names:
                raise ValueError(f"overlay: k={k!r} is not a map of these maps; their names: {', '.join(self.names)}")
            k = self.names.index(k)
        elif isinstance(k, bool) or not isinstance(k, int) or not -len(self.names) <= k < len(self.names):
            raise ValueError(f"overlay: k={k!r}: expected a map index in {-len(self.names)}..{len(self.names) - 1} "
                             f"or a name ({', '.join(self.names)})")
        image = self.images[i]
        m = upsample(torch.from_numpy(self[layer][i, k]), image.shape[:2], "bilinear").numpy()
        low, high = float(m.min()), float(m.max())
        scaled = (m - low) / (high - low) if high > low else np.zeros_like(m)
        colours = colormap()[np.clip((scaled * 256).astype(np.int64), 0, 255)]
        return Image.fromarray((image * (1 - alpha) + colours * alpha).round().astype(np.uint8))
