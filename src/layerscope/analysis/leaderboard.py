"""Rankings of candidate maps (model, method, layer, head) per defect type, for both protocols.

Read by the ``layerscope-report`` command and the offline page (``layerscope-view``).
"""
from __future__ import annotations

import html

import numpy as np
import pandas as pd

from ..results import catalog, layout
from ..results.table import METRICS

KEYS = list(catalog.CANDIDATE)
IMAGE_METRICS = catalog.IMAGE_SCORES
# the dataset-level Markdown table: the pooled pixel metrics and the image AUROC of the map maximum; the
# CSV beside it holds every column
_SHOWN = (*catalog.POOLED, "image_auroc")
_SHOWN_CI = "aupro"  # the CI written beside its value in the Markdown table


def bootstrap_mean(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap 95% interval of the mean."""
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def bootstrap_auroc(pos: np.ndarray, neg: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """AUROC of positive vs negative scores and a stratified bootstrap 95% interval."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan"), float("nan"), float("nan")
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # (P, N)
    auc = float(wins.mean())
    wp = rng.multinomial(len(pos), np.full(len(pos), 1 / len(pos)), size=n_boot)
    wn = rng.multinomial(len(neg), np.full(len(neg), 1 / len(neg)), size=n_boot)
    boots = np.einsum("bi,ij,bj->b", wp, wins, wn) / (len(pos) * len(neg))
    return auc, float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def rank(df: pd.DataFrame, metric: str, threshold: float | None = None, n_boot: int = 1000, seed: int = 0,
         include_best: bool = False) -> pd.DataFrame:
    """The ranking table: one row per (category, model, method, layer, head).

    Args:
        df: concatenated results (see ``load_results``).
        metric: a metric column of ``results.csv``, or ``image_auroc`` / ``image_auroc_topk``.
        threshold: the threshold whose rows to use (threshold-dependent metrics such as
            ``iou`` differ per threshold); None = the smallest one present.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.
        include_best: keep the per-image oracle ``best`` head rows.

    Returns:
        Columns: category, model, method, layer, head, mean, ci_low, ci_high, n, rank.

    Raises:
        ValueError: unknown metric, threshold absent, or no image can score this metric.
    """
    image_level = metric in IMAGE_METRICS
    if metric not in METRICS and not image_level:
        raise ValueError(f"--metric {metric}: expected one of {', '.join([*METRICS, *IMAGE_METRICS])}")
    column = IMAGE_METRICS.get(metric, metric)
    if column not in df.columns:
        raise ValueError(f"--metric {metric}: the results have no column {column!r} (written by an older version?)")
    thresholds = sorted(df["threshold"].dropna().unique())
    if threshold is None:
        threshold = thresholds[0]
    if not np.isclose(thresholds, threshold).any():
        raise ValueError(f"--threshold {threshold}: not in the results (found {', '.join(map(str, thresholds))})")
    df = df[np.isclose(df["threshold"], threshold)]
    if not include_best:
        df = df[df["head"] != "best"]
    # a category of the data called "all" is named apart from the rows over every image
    df = df.assign(group=df["group"].fillna(df["image"]),
                   category=df["category"].fillna("").astype(str).map(catalog.data_category))
    rng = np.random.default_rng(seed)
    out = []
    if image_level:
        good = df[df["category"] == "good"]
        if good.empty:
            raise ValueError(f"--metric {metric}: needs defect-free images (category 'good'), and the results have none")
        negatives = {key: part.groupby("group")[column].mean().to_numpy(float) for key, part in good.groupby(KEYS)}
        bad = df[df["category"] != "good"]
        for category, by_category in [*bad.groupby("category"), (catalog.AGGREGATE, bad)]:
            for key, part in by_category.groupby(KEYS):
                pos = part.groupby("group")[column].mean().to_numpy(float)
                neg = negatives.get(key, np.array([]))
                out.append([category, *key, *bootstrap_auroc(pos, neg, n_boot, rng), len(pos) + len(neg)])
    else:
        scored = df.dropna(subset=[column])
        if scored.empty:
            raise ValueError(f"--metric {metric}: undefined for every row (no masks, or only defect-free images?)")
        for category, by_category in [*scored.groupby("category"), (catalog.AGGREGATE, scored)]:
            per_image = by_category.groupby([*KEYS, "group"], as_index=False)[column].mean()  # objects -> image
            for key, part in per_image.groupby(KEYS):
                out.append([category, *key, *bootstrap_mean(part[column].to_numpy(float), n_boot, rng), len(part)])
    table = pd.DataFrame(out, columns=["category", *KEYS, "mean", "ci_low", "ci_high", "n"])
    ascending = catalog.lower_is_better(metric)
    table = table.sort_values(["category", "mean"], ascending=[True, ascending], kind="stable")
    table["rank"] = table.groupby("category").cumcount() + 1
    table.attrs.update(metric=metric, threshold=threshold)
    return table.reset_index(drop=True)


def md(text: object) -> str:
    """A name (category, model, head, image) as Markdown text: HTML-escaped, so a folder called
    ``<!--<script>`` shows as written wherever the report is rendered, ``|`` kept inside its cell, and a line
    break shown as ``\\n`` (a heading or a table row is one line)."""
    text = html.escape(str(text), quote=True).replace("|", "&#124;")
    return text.replace("\r", "\\r").replace("\n", "\\n")


def number(value: object) -> str:
    """A metric value for a Markdown table: three decimals, or ``undefined`` (NaN, missing)."""
    return f"{value:.3f}" if value is not None and pd.notna(value) else "undefined"


def interval(low: object, high: object) -> str:
    """``[low, high]``, or nothing where the interval is undefined."""
    return f"[{low:.3f}, {high:.3f}]" if pd.notna(low) and pd.notna(high) else ""


def to_markdown(table: pd.DataFrame, top: int) -> str:
    """The top ``top`` candidates per category as Markdown tables."""
    metric, threshold = table.attrs.get("metric", ""), table.attrs.get("threshold", "")
    lines = [f"# Which layer finds it? `{metric}` (threshold {threshold}), per-image protocol: each image scored on "
             "its own, then the mean over images, 95% bootstrap CI", ""]
    for category, part in table.groupby("category", sort=False):
        lines += [f"## {md(category)}", "", "| rank | model | method | layer | head | mean | 95% CI | n |",
                  "|---:|---|---|---:|---|---:|---|---:|"]
        for r in part.head(top).itertuples():
            lines.append(f"| {r.rank} | {md(r.model)} | {md(r.method)} | {r.layer} | {md(r.head)} | {number(r.mean)} | "
                         f"{interval(r.ci_low, r.ci_high)} | {r.n} |")
        lines.append("")
    return "\n".join(lines)


def rank_dataset(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The dataset-level ranking: ``dataset_metrics`` rows sorted per category by the pooled ``metric``."""
    metric = catalog.dataset_metric(metric)
    ranked = table.dropna(subset=[metric]).sort_values(["category", metric], ascending=[True, False], kind="stable")
    ranked = ranked.assign(rank=ranked.groupby("category").cumcount() + 1).reset_index(drop=True)
    ranked.attrs.update(metric=metric)
    return ranked


def dataset_markdown(table: pd.DataFrame, top: int, held_out: bool = False) -> str:
    """The top ``top`` candidates per category of the dataset-level ranking (``held_out``: a held-out choice
    accompanies it)."""
    metric = table.attrs.get("metric", "")
    where = f"the held-out estimate is in `{layout.choice_stem(metric)}.md`" if held_out else \
        "use `--calibration` for a held-out estimate"
    lines = [f"# Which layer finds it? pooled `{metric}` (dataset level: every pixel of every image, good ones "
             "included, one threshold for all)", "", f"Ranked on the images it reports on: {where}.", ""]
    header = " | ".join(catalog.get(name, "dataset").title for name in _SHOWN)
    for category, part in table.groupby("category", sort=False):
        lines += [f"## {md(category)}", "", f"| rank | model | method | layer | head | {header} | images (defective) |",
                  "|---:|---|---|---:|---|" + "---:|" * len(_SHOWN) + "---|"]
        for r in part.head(top).to_dict("records"):
            low, high = r.get(f"{_SHOWN_CI}_ci_low"), r.get(f"{_SHOWN_CI}_ci_high")
            ci = f" {interval(low, high)}" if pd.notna(low) and pd.notna(high) else ""
            cells = [f"{number(r[name])}{ci if name == _SHOWN_CI else ''}" for name in _SHOWN]
            lines.append(f"| {r['rank']} | {md(r['model'])} | {md(r['method'])} | {r['layer']} | {md(r['head'])} | "
                         f"{' | '.join(cells)} | {r['n_images']} ({r['n_defect_images']}) |")
        lines.append("")
    return "\n".join(lines)
