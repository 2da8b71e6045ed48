"""Representation similarity measures, one module per family, one registry (``registry.MEASURES``),
the resampling (paired bootstrap, permutation null) every measure shares, and the engine that compares
every layer of one model with every layer of another."""
from .base import INVARIANCES, Measure, Options
from .engine import compare, monotonicity
from .measure_registry import DEFAULT, MEASURES, invariance_table, resolve

__all__ = ["INVARIANCES", "MEASURES", "DEFAULT", "Measure", "Options", "compare", "monotonicity", "invariance_table",
           "resolve"]
