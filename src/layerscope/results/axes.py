"""The map axis of each map method: are the K maps of a layer its attention heads, or other maps?

One home for the fact that the page (``layerscope-view``), the figures and the W&B logger read from saved
results, which name only the method: so it lives here, torch-free, rather than on the method classes of
``methods/methods.py`` (importing those loads torch, and the figures never do). A method that adds maps
named after its heads (``0``, ``1``, ..., plus ``mean``) adds its name to ``HEAD_METHODS``; every other
method's maps are ``maps`` (feature reductions, CAMs, rollout's one head-fused map, patch k-NN).
"""
from __future__ import annotations

HEADS = "heads"
MAPS = "maps"
HEAD_METHODS = frozenset({"cls_attention"})  # methods/methods.py: ClsAttention, one map per head + their mean


def map_axis(method: object) -> str:
    """``heads`` when ``method``'s maps are its attention heads (``HEAD_METHODS``), else ``maps``."""
    return HEADS if str(method) in HEAD_METHODS else MAPS


def axis_word(method: object) -> str:
    """What one of ``method``'s maps is called in a label: ``head`` or ``map``."""
    return "head" if map_axis(method) == HEADS else "map"


def map_label(method: object, name: object) -> str:
    """How one map reads in a label: ``head 3``, ``head mean`` for heads; the map's own name (``l2``) else."""
    return f"head {name}" if map_axis(method) == HEADS else str(name)
