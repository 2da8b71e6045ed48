"""The metric table: every metric the project writes, with the facts every reader needs.

The scorer (``layerscope.scoring``), the report, the W&B logger, the dashboard, the figures and
the HTML view read these facts here, so a metric's direction, label or needs are written once.
This module imports nothing heavy (no torch): the figures and the report run without a model. A per-image
metric the scorer computes states its facts in its own module (``metrics/per_image/``), read here.

Two protocols (see the README):

- ``per_image``: one value per (image, map) in ``results.csv``; a ranking averages over images.
- ``dataset``: one value per (candidate map, category) over all images pooled, in
  ``dataset_metrics.csv`` (pixel AUROC and AUPRO as MVTec AD / anomalib compute them).

A candidate map is named by ``CANDIDATE`` (model, method, layer, head) in every table that ranks maps.
"""
from __future__ import annotations

import re

from ..metrics import per_image
from ..metrics.facts import Metric


# the per-image metrics the scorer computes have their facts beside their code (metrics/per_image/, one module
# each); these per-image columns are computed with the model
_WITH_MODEL = (
    Metric("deletion_auc", "deletion AUC", "deletion AUC (0–1, lower = more faithful)", higher_is_better=False,
           needs_mask=False, needs_model=True, order=100),
    Metric("insertion_auc", "insertion AUC", "insertion AUC (0–1)", needs_mask=False, needs_model=True, order=110),
    Metric("attention_distance", "attention distance", "mean attention distance (input pixels)", needs_mask=False,
           fmt=".1f", needs_model=True, order=120),  # cls_attention, each head's q and k; wider is not better
    # metrics.road: ROAD (Rong et al. 2022) with noisy linear imputation, and AOPC over its MoRF curve
    Metric("road_morf", "ROAD MoRF", "ROAD MoRF probability (0–1, lower = more faithful)", higher_is_better=False,
           needs_mask=False, needs_model=True, option="metrics.road", order=170),
    Metric("road_lerf", "ROAD LeRF", "ROAD LeRF probability (0–1)", needs_mask=False, needs_model=True,
           option="metrics.road", order=180),
    Metric("aopc", "AOPC", "AOPC, ROAD MoRF (higher = more faithful)", needs_mask=False, needs_model=True,
           option="metrics.road", order=190),
    # metrics.randomisation: similarity to the map under re-initialised weights (lower = depends on the weights)
    Metric("mprt_spearman", "MPRT Spearman", "Spearman, trained vs randomised map (lower = depends on weights)",
           higher_is_better=False, needs_mask=False, needs_model=True, option="metrics.randomisation", order=200),
    Metric("mprt_ssim", "MPRT SSIM", "SSIM, trained vs randomised map (lower = depends on weights)",
           higher_is_better=False, needs_mask=False, needs_model=True, option="metrics.randomisation", order=210),
    Metric("random_logit_ssim", "Random Logit SSIM", "SSIM, map vs another class's map (lower = class-specific)",
           higher_is_better=False, needs_mask=False, needs_model=True, option="metrics.randomisation", order=220),
)
_PER_IMAGE = tuple(sorted((*per_image.FACTS, *_WITH_MODEL), key=lambda m: m.order))  # results.csv's column order
_DATASET = (
    Metric("pixel_auroc", "pixel AUROC", "pooled pixel AUROC (0–1)", protocol="dataset", aliases=("auroc",), ci=True),
    Metric("aupro", "AUPRO", "pooled AUPRO (0–1)", protocol="dataset", ci=True),
    Metric("pixel_ap", "pixel AP", "pooled pixel average precision (0–1)", protocol="dataset", aliases=("ap",)),
    Metric("pixel_f1_max", "F1-max", "pixel F1 at the best shared threshold (0–1)", protocol="dataset",
           aliases=("f1", "f1_max")),
    Metric("image_auroc", "image AUROC", "image AUROC of the map maximum (0–1)", protocol="dataset",
           kind="image_score", score="score_max"),
    Metric("image_auroc_topk", "image AUROC (top-k)", "image AUROC of the top-cells mean (0–1)", protocol="dataset",
           kind="image_score", score="score_topk"),
)

PER_IMAGE: dict[str, Metric] = {m.name: m for m in _PER_IMAGE}
DATASET: dict[str, Metric] = {m.name: m for m in _DATASET}
MAP_METRICS = tuple(m.name for m in _PER_IMAGE if m.kind == "map")  # per-layer curves (W&B, figures)
DEFAULT_CURVES = ("iou", "auroc", "aupro", "entropy")  # metric-vs-layer plots drawn by default
# the dataset protocol's columns, in dataset_metrics.csv's order
POOLED = tuple(m.name for m in _DATASET if m.kind == "map")  # pooled pixel metrics: the held-out choice ranks by one
IMAGE_SCORES = {m.name: m.score for m in _DATASET if m.kind == "image_score"}  # image AUROC metric -> score column
DATASET_CI = tuple(m.name for m in _DATASET if m.ci)  # with bootstrap CI columns (the dataset-level curves)
DATASET_ALIASES = {alias: m.name for m in _DATASET for alias in m.aliases}
CANDIDATE = ("model", "method", "layer", "head")  # the columns naming a candidate map (pandas wants list(...))


def get(name: str, protocol: str = "per_image") -> Metric:
    """The metric ``name`` of ``protocol``.

    Raises:
        ValueError: unknown name, listing the known ones.
    """
    table = PER_IMAGE if protocol == "per_image" else DATASET
    if name not in table:
        raise ValueError(f"metric {name!r}: expected one of {', '.join(table)} ({protocol} protocol)")
    return table[name]


def dataset_metric(name: str) -> str:
    """A dataset-level metric name from what users type (``auroc`` is pooled pixel AUROC).

    Raises:
        ValueError: unknown name, listing the known ones.
    """
    name = DATASET_ALIASES.get(name, name)
    get(name, "dataset")
    return name


def lower_is_better(name: str) -> bool:
    """Whether ``name`` ranks lowest first (entropy); unknown names rank highest first."""
    metric = PER_IMAGE.get(name) or DATASET.get(name)
    return metric is not None and not metric.higher_is_better


def label(name: str) -> str:
    """Axis label of a metric (its name when unknown)."""
    metric = PER_IMAGE.get(name) or DATASET.get(name)
    return metric.label if metric else name


def title(name: str) -> str:
    """Short display name of a metric (its name when unknown)."""
    metric = PER_IMAGE.get(name) or DATASET.get(name)
    return metric.title if metric else name


AGGREGATE = "all"  # the category of the rows that pool every image, in the report and dataset_metrics.csv


def data_category(name: str) -> str:
    """A category of the data as the tables that also hold the ``AGGREGATE`` rows name it.

    ``all`` (a folder called so) becomes ``all_``, and a category already ``all_``, ``all__``, ... gets one
    more ``_`` as well, so no category of the data is read as the aggregate and no two become one.
    """
    return f"{name}_" if re.fullmatch(f"{AGGREGATE}_*", name) else name
