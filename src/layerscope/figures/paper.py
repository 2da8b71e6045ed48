"""Publication figures from a finished run or multirun folder, from saved results only.

    layerscope-figures RUN_OR_MULTIRUN_DIR [--out DIR] [--metric iou auroc] [--formats png pdf]

Reads every ``results.csv`` below the folder and the ``maps/<image>.npz`` beside each; never builds
or runs a model (nothing here imports ``layerscope.backbones`` or torch). One function per figure
kind (maps in ``figures.map_pictures``, scores in ``figures.score_plots``, what they read in
``figures.figure_inputs``); each returns the paths it wrote and logs why when it has nothing to draw:

- ``layer_head_grids``: per (model, method), a few images: layers (rows) x maps (columns), the
  input and its mask outline in the first column.
- ``metric_vs_layer``: a metric against layer (or relative depth, 0 = first layer, 1 = last), one
  line per (model, method), mean over images with a 95% confidence band.
- ``layer_head``: the at-a-glance answer: a layer x head heatmap of a metric per (model, method),
  mean over images, the best cell marked.
- ``vit_vs_cnn``: the same images through a ViT and a CNN at comparable relative depths.
- ``threshold_curves``: IoU against the threshold (kept mass) at each model's best layer.
- ``best_map_overlays``: per defect type, the best (model, method, layer, head) map over examples.
- ``dataset_vs_layer``, ``choice_stability``: the dataset-level protocol and the held-out choice.
- ``fewshot_vs_layer``: a few-shot sweep's metric against layer, one line per shot count, mean over reference
  seeds with the 95% t-interval across seeds (``analysis.fewshot``); per-image metrics and pooled AUPRO.
- ``attention_distance``: mean attention distance per head against layer, one dot per head, models side
  by side (Dosovitskiy et al. 2020, Fig. 7); ``layerscope-compare`` draws it too (``figures.comparison_plots``).

Every figure is written as PNG (200 dpi) and PDF (TrueType text, editable), in one style
(``figures.style``), with seaborn's colour-blind palette. The saved results are read by
``analysis.saved.Study`` (series, identical jobs, the shared analysis), the page's reader too.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

from matplotlib.figure import Figure

from ..results import catalog
from ..analysis.saved import Study
from .figure_inputs import METRICS, figure_dir
from .map_pictures import best_map_overlays, layer_head_grids, vit_vs_cnn
from .score_plots import (attention_distance, choice_stability, dataset_vs_layer, fewshot_vs_layer, layer_head,
                          metric_vs_layer, threshold_curves)
from .style import AXES

log = logging.getLogger(__name__)

KINDS = ("layer_head_grids", "metric_vs_layer", "layer_head", "vit_vs_cnn", "threshold_curves",
         "best_map_overlays", "dataset_vs_layer", "choice_stability", "attention_distance", "fewshot_vs_layer")


def make_all(folder: Path | str, out: Path | str | None = None, formats: Sequence[str] = ("png", "pdf"),
             max_images: int = 4, metrics: Iterable[str] = METRICS,
             kinds: Iterable[str] = KINDS, depth: str = "layer") -> dict[str, list[Path]]:
    """Every figure kind for a run or multirun folder.

    Args:
        folder: a run folder (``results.csv`` + ``maps/``) or a folder above several.
        out: where figures go; default ``<folder>/figures_paper``.
        formats: file formats (suffixes matplotlib knows: png, pdf, svg, ...).
        max_images: images per (model, method) in the layer x head grids.
        metrics: metrics for ``metric_vs_layer`` and ``layer_head``.
        kinds: which figure kinds.
        depth: x-axis of ``metric_vs_layer``: ``layer`` or ``relative`` (0 = first layer, 1 = last).

    Returns:
        kind -> paths written (empty when the kind was skipped; the reason is logged).

    Raises:
        FileNotFoundError: no such folder, or no ``results.csv`` below it.
        ValueError: an unknown format, kind or metric, or an ``out`` that is a file.
    """
    formats = tuple(formats)
    supported = Figure().canvas.get_supported_filetypes()
    bad = [f for f in formats if f not in supported]
    if bad or not formats:
        raise ValueError(f"--formats {' '.join(bad) or '(none)'}: expected some of {', '.join(sorted(supported))}")
    kinds = tuple(kinds)
    if unknown := [k for k in kinds if k not in KINDS]:
        raise ValueError(f"--kinds {' '.join(unknown)}: expected some of {', '.join(KINDS)}")
    if depth not in AXES:
        raise ValueError(f"--depth {depth}: expected one of {', '.join(AXES)}")
    if out is not None and (Path(out).exists() or Path(out).is_symlink()) and not Path(out).is_dir():
        raise ValueError(f"--out {out}: is a file; expected a folder for the figures (nothing was written)")
    study = Study(folder)
    metrics = tuple(metrics)
    if unknown := [m for m in metrics if m not in study.df.columns or m not in catalog.MAP_METRICS]:
        raise ValueError(f"--metric {' '.join(unknown)}: expected some of {', '.join(catalog.MAP_METRICS)}")
    out = figure_dir(study, out)
    calls = {
        "layer_head_grids": lambda: layer_head_grids(study, out, formats, max_images),
        "metric_vs_layer": lambda: metric_vs_layer(study, out, formats, metrics, depth),
        "layer_head": lambda: layer_head(study, out, formats, metrics),
        "vit_vs_cnn": lambda: vit_vs_cnn(study, out, formats, min(max_images, 3)),
        "threshold_curves": lambda: threshold_curves(study, out, formats),
        "best_map_overlays": lambda: best_map_overlays(study, out, formats, min(max_images, 3)),
        "dataset_vs_layer": lambda: dataset_vs_layer(study, out, formats),
        "choice_stability": lambda: choice_stability(study, out, formats),
        "attention_distance": lambda: attention_distance(study.df, out, formats, depth),
        "fewshot_vs_layer": lambda: fewshot_vs_layer(study, out, formats, metrics),
    }
    return {kind: calls[kind]() for kind in kinds}
