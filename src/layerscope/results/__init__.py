"""Run folders and what they hold: results tables, saved maps, pooled representations, the metric catalog."""
from .representations import load_representations

__all__ = ["load_representations"]
