"""One image's ``results.csv`` rows from its scored columns: per threshold every map, then the ``best`` head."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..metrics.facts import UNDEFINED
from ..metrics.per_image import BY_NAME

NONFINITE_NOTE = "map has NaN/inf values: every metric undefined"


@dataclass
class LayerScores:
    """One image's scored maps at one layer.

    Attributes:
        columns: metric column -> K values (a threshold-dependent column: K lists of T values).
        notes: K notes (why a map's metrics are undefined; ``per_image.notes``).
        target: the image has a ground truth (then a layer of heads has a ``best`` row).
    """

    columns: dict[str, list]
    notes: list[str]
    target: bool


def _emptied(scores: LayerScores, bad: Sequence[bool], thresholds: int) -> LayerScores:
    """``scores`` with the columns of the non-finite maps (``bad``) undefined and ``NONFINITE_NOTE``."""
    columns = {}
    for c, values in scores.columns.items():
        metric = BY_NAME[c].metric
        empty = [metric.undefined] * thresholds if metric.threshold_dependent else metric.undefined
        columns[c] = [empty if b else v for v, b in zip(values, bad)]
    return LayerScores(columns, [NONFINITE_NOTE if b else n for n, b in zip(scores.notes, bad)], scores.target)


def layer_rows(names: Sequence[str], scores: LayerScores, extra: Mapping[str, Any], bad: Sequence[bool],
               thresholds: Sequence[float]) -> list[dict]:
    """One layer's rows: per threshold, every map, then (where the maps are heads with their ``mean``) the
    ``best`` head: the head with the highest IoU on this image (the DINO protocol), named in ``best_head``.

    Args:
        names: K map names.
        scores: the K maps' columns and notes.
        extra: more columns computed elsewhere (faithfulness), column -> (K,) values; a ``best`` row takes its
            head's.
        bad: K bools, True for a map that held NaN or infinite values: its row keeps no number.
        thresholds: the T thresholds.
    """
    if any(bad):
        scores = _emptied(scores, bad, len(thresholds))
    dependent = {c for c in scores.columns if BY_NAME[c].metric.threshold_dependent}
    extras = [{c: UNDEFINED if bad[k] else float(v[k]) for c, v in extra.items()} for k in range(len(names))]
    heads = [k for k, n in enumerate(names) if n != "mean"] if "mean" in names else []
    ious = scores.columns["iou"]
    rows = []
    for j, t in enumerate(thresholds):
        block = [{"head": name, "threshold": t,
                  **{c: v[k][j] if c in dependent else v[k] for c, v in scores.columns.items()},
                  "notes": scores.notes[k], **extras[k]} for k, name in enumerate(names)]
        rows += block
        if heads and scores.target:
            best = max(heads, key=lambda k: float("-inf") if ious[k][j] != ious[k][j] else ious[k][j])
            rows.append(dict(block[best], head="best", best_head=names[best]))
    return rows
