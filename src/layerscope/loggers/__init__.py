"""Experiment trackers: ``logger=none`` (default) or ``logger=wandb``."""
from .base import Logger

__all__ = ["Logger"]
