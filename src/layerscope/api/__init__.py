"""layerscope from Python: load or wrap a model, get every layer's maps, score them against masks.

The same internals as a run (configs, backbones, map methods, the row builder ``scoring.image_rows``),
so the API and ``layerscope ...`` give identical maps and rows for the same model, images and options;
every default not given is a run's (``config.schema.StudyConfig``). ``models`` holds ``load`` and ``wrap``,
``compute`` ``maps``, ``layer_maps`` ``Maps``, ``scores`` ``score``, ``inputs`` what they accept.

Example:
    >>> import layerscope as ls
    >>> bb = ls.load("tiny_vit")                                  # conf/model/tiny_vit.yaml, random init
    >>> import numpy as np
    >>> m = ls.maps(bb, [np.zeros((48, 64, 3), np.uint8)], layers=[-1])  # auto: a ViT's heads
    >>> len(m), m.names, m[1].shape                                # 1 layer; 2 heads and their mean, 8x8 patches
    (1, ['0', '1', 'mean'], (1, 3, 8, 8))
"""
from __future__ import annotations

from .compute import Target, maps
from .inputs import Images, ImageLike, Layers, Masks
from .layer_maps import Maps
from .models import load, wrap
from .scores import score

__all__ = ["ImageLike", "Images", "Layers", "Maps", "Masks", "Target", "load", "maps", "score", "wrap"]
