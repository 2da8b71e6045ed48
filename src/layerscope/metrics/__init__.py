"""Metrics: pure functions on tensors, shapes in their docstrings.

The package itself imports nothing (no torch), so the metric facts (``facts``, ``per_image``) load without a
model: import the functions from their modules (``metrics.localization``, ``metrics.rank_groups``, ...).
"""
