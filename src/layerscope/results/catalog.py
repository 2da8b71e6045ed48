"""The metric table: every metric the project writes, with the facts every reader needs.

The scorer (``layerscope.scoring``), the report, the W&B logger, the dashboard, the figures and
the HTML view read these facts here, so a metric's direction, label or needs are written once.
This module imports nothing heavy (no torch): the figures and the report run without a model.

Two protocols (see the README):

- ``per_image``: one value per (image, map) in ``results.csv``; a ranking averages over images.
- ``dataset``: one value per (candidate map, category) over all images pooled, in
  ``dataset_metrics.csv`` (pixel AUROC and AUPRO as MVTec AD / anomalib compute them).

A candidate map is named by ``CANDIDATE`` (model, method, layer, head) in every table that ranks maps.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """Facts about one metric.

    Attributes:
        name: column name.
        title: short display name (``AUROC``).
        label: axis label with its range.
        higher_is_better: ranking direction.
        needs_mask: undefined without a ground-truth mask.
        threshold_dependent: differs between threshold rows (only IoU per image).
        protocol: ``per_image`` (results.csv) or ``dataset`` (dataset_metrics.csv).
        kind: ``map`` (how a map relates to the mask, or its shape) or ``image_score``
            (a per-image anomaly score, ranked through image AUROC).
        fmt: format spec for tables.
        needs_model: computed with the model (extra forward passes), so only by a run that asked
            for it (``metrics.faithfulness=true``) and never by ``layerscope-rescore``.
        aliases: other names users may type for it (dataset protocol: ``auroc`` is ``pixel_auroc``).
        ci: ``dataset_metrics.csv`` holds its bootstrap 95% CI (``<name>_ci_low``, ``<name>_ci_high``).
        score: for an image-level metric (``kind="image_score"``, dataset protocol), the per-image
            score column of ``results.csv`` it ranks images by (``score_max``).
        option: the ``metrics.*`` option that fills the column (empty: always filled where defined).
    """

    name: str
    title: str
    label: str
    higher_is_better: bool = True
    needs_mask: bool = True
    threshold_dependent: bool = False
    protocol: str = "per_image"
    kind: str = "map"
    fmt: str = ".3f"
    needs_model: bool = False  # computed with the model's classifier (faithfulness): not by rescoring
    aliases: tuple[str, ...] = ()
    ci: bool = False
    score: str = ""
    option: str = ""  # the option that adds the column (metrics.sparseness); empty rows otherwise

    def format(self, value: float) -> str:
        return "" if value != value else format(value, self.fmt)


_PER_IMAGE = (
    Metric("iou", "IoU", "IoU (0–1)", threshold_dependent=True),
    Metric("iou_oracle", "oracle IoU", "oracle IoU (0–1)"),
    Metric("auroc", "AUROC", "pixel AUROC (0–1)"),
    Metric("aupro", "AUPRO", "AUPRO (0–1)"),
    Metric("mass_in_mask", "mass in mask", "map mass in mask (0–1)"),
    Metric("mass_ratio", "mass ratio", "mass in mask / mask area (1 = chance)", fmt=".2f"),
    Metric("pointing", "pointing", "pointing accuracy (0–1)"),
    Metric("pointing_tol", "pointing (tolerance)", "pointing accuracy within metrics.pointing_tolerance px (0–1)"),
    Metric("entropy", "entropy", "normalised entropy (0–1, 1 = uniform)", higher_is_better=False, needs_mask=False),
    Metric("deletion_auc", "deletion AUC", "deletion AUC (0–1, lower = more faithful)", higher_is_better=False,
           needs_mask=False, needs_model=True),
    Metric("insertion_auc", "insertion AUC", "insertion AUC (0–1)", needs_mask=False, needs_model=True),
    Metric("attention_distance", "attention distance", "mean attention distance (input pixels)", needs_mask=False,
           fmt=".1f", needs_model=True),  # cls_attention, from each head's q and k; descriptive (wider, not better)
    Metric("score_max", "max score", "map maximum", needs_mask=False, kind="image_score", fmt=".4g"),
    Metric("score_topk", "top-k score", "mean of the top cells", needs_mask=False, kind="image_score", fmt=".4g"),
    # metrics.sparseness: shape of the map alone (rescore computes them)
    Metric("gini", "Gini", "Gini sparseness of |map| (0–1, higher = sparser)", needs_mask=False,
           option="metrics.sparseness"),
    Metric("complexity", "complexity", "entropy of |map| over cells (nats, lower = simpler)", higher_is_better=False,
           needs_mask=False, option="metrics.sparseness"),
    # metrics.road: ROAD (Rong et al. 2022) with noisy linear imputation, and AOPC over its MoRF curve
    Metric("road_morf", "ROAD MoRF", "ROAD MoRF probability (0–1, lower = more faithful)", higher_is_better=False,
           needs_mask=False, needs_model=True, option="metrics.road"),
    Metric("road_lerf", "ROAD LeRF", "ROAD LeRF probability (0–1)", needs_mask=False, needs_model=True,
           option="metrics.road"),
    Metric("aopc", "AOPC", "AOPC, ROAD MoRF (higher = more faithful)", needs_mask=False, needs_model=True,
           option="metrics.road"),
    # metrics.randomisation: similarity to the map under re-initialised weights (lower = depends on the weights)
    Metric("mprt_spearman", "MPRT Spearman", "Spearman, trained vs randomised map (lower = depends on weights)",
           higher_is_better=False, needs_mask=False, needs_model=True, option="metrics.randomisation"),
    Metric("mprt_ssim", "MPRT SSIM", "SSIM, trained vs randomised map (lower = depends on weights)",
           higher_is_better=False, needs_mask=False, needs_model=True, option="metrics.randomisation"),
    Metric("random_logit_ssim", "Random Logit SSIM", "SSIM, map vs another class's map (lower = class-specific)",
           higher_is_better=False, needs_mask=False, needs_model=True, option="metrics.randomisation"),
)
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
