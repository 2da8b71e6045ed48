"""Facts about a metric that every reader needs (direction, label, needs, protocol, when undefined).

Torch-free: the metric table (``results.catalog``), the report and the figures read these without a model.
A per-image metric's facts sit in its own file under ``metrics/per_image/``, beside its computation.
"""
from __future__ import annotations

from dataclasses import dataclass

# Why a per-image metric can be undefined for a row, as ``results.csv``'s notes say it. The first three are
# facts of the image's ground truth (at most one applies), the last a fact of the map.
NO_MASK = "no mask"
NO_DEFECT = "no defect pixels"
FULL_MASK = "mask covers the whole image"
NO_MASS = "map is all zero"
CONDITIONS = (NO_MASK, NO_DEFECT, FULL_MASK, NO_MASS)

UNDEFINED = float("nan")  # every metric column's undefined value: NaN in a row, an empty cell in results.csv


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
        order: its place among the metric columns of ``results.csv`` (ascending; a new metric takes a
            number above the others and so comes last).
        undefined_when: the ``CONDITIONS`` under which its value is undefined, as ``notes`` names them.
        undefined: the value a row holds where it is undefined (NaN: an empty cell in ``results.csv``; a
            per-image metric's ``compute`` marks it with NaN).
        shown: a column of the HTML page's per-map table (``view.gallery``).
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
    order: int = 0
    undefined_when: tuple[str, ...] = ()
    undefined: float = UNDEFINED
    shown: bool = False

    def format(self, value: float) -> str:
        return "" if value != value else format(value, self.fmt)
