"""The map axis of each map method: are the K maps of a layer its attention heads, or other maps?

The page (``layerscope-view``), the figures and the W&B logger read it from saved results, which name
only the method, without importing torch: so they ask ``layerscope.methods.registry``, which reads each
method's family from its YAML. A method whose maps are named after its heads (``0``, ``1``, ..., plus
``mean``) is of a family with ``map_axis=heads``; every other method's maps are ``maps`` (feature
reductions, CAMs, rollout's one head-fused map, patch k-NN), as are a method the configs do not know.
"""
from __future__ import annotations

from ..methods.registry import HEADS, MAPS, info

__all__ = ["HEADS", "MAPS", "axis_word", "map_axis", "map_label"]


def map_axis(method: object) -> str:
    """``heads`` when ``method``'s maps are its attention heads (its registry entry says so), else ``maps``."""
    found = info(method)
    return HEADS if found is not None and found.map_axis == HEADS else MAPS


def axis_word(method: object) -> str:
    """What one of ``method``'s maps is called in a label: ``head`` or ``map``."""
    return "head" if map_axis(method) == HEADS else "map"


def map_label(method: object, name: object) -> str:
    """How one map reads in a label: ``head 3``, ``head mean`` for heads; the map's own name (``l2``) else."""
    return f"head {name}" if map_axis(method) == HEADS else str(name)
