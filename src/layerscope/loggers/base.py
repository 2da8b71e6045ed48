"""The logger interface a study calls; the base class logs nothing (``logger=none``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


class Logger:
    """No-op logger; subclasses send a study to an experiment tracker."""

    max_images = 0

    def start(self, config: Mapping[str, Any], out_dir: Path, model: str, method: str, dataset: str = "") -> None:
        """Called once the model and method are known, before the first image.

        Args:
            config: the run's resolved config, as plain containers (recorded, not read for options).
            dataset: the data config's name (``synthetic``), "" when there is none.
        """

    def wants_maps(self) -> bool:
        """Whether ``log_maps`` would still use another image (lets the study skip preparing it)."""
        return False

    def log_maps(self, image_id: str, category: str, image: np.ndarray, mask: np.ndarray | None,
                 maps: Mapping[int, np.ndarray], names: Mapping[int, Sequence[str]],
                 kept: Mapping[int, np.ndarray]) -> None:
        """One image's maps (layer -> (K, h, w)) and thresholded masks (layer -> (K, S, S))."""

    def log_results(self, results_csv: Path) -> None:
        """The finished results table."""

    def log_dataset(self, table) -> None:
        """The dataset-level metrics (``dataset_metrics.csv`` rows, a DataFrame)."""

    def wants_comparison(self) -> bool:
        """Whether ``log_comparison`` would log anything (lets a run skip computing it)."""
        return False

    def log_comparison(self, similarity, probe) -> None:
        """Layer x layer similarity (``similarity.csv`` rows, a DataFrame: every measure with its interval and
        null) and the k-NN probe per layer
        (``probe.csv`` rows, a DataFrame, or None), as ``layerscope.comparison`` computes them."""

    def finish(self, ok: bool) -> None:
        """Always called, also after an error (``ok=False``)."""
