"""Scoring maps against masks: the metric columns of ``results.csv``, by one engine.

A run (a batch at a time), ``layerscope-rescore`` and ``ls.score`` (an image at a time: a batch of one) all
score through ``scorer.batch_image_rows``, so saved maps rescore to the same numbers. Each column is a
per-image metric in its own module under ``metrics/per_image/``.
"""
from ..runtime import one_thread
from .scorer import batch_image_rows, finite_maps, image_rows
from .score_options import ScoreOptions
from .rows import NONFINITE_NOTE
from .target import Target

__all__ = ["NONFINITE_NOTE", "ScoreOptions", "Target", "batch_image_rows", "finite_maps", "image_rows", "one_thread"]
