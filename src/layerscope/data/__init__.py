"""Datasets: each item is a ``Sample`` (RGB image, optional bool mask, category)."""
from .base import Sample

__all__ = ["Sample"]
