"""Which layer finds it? Rank (model, method, layer, head) by a metric, per defect type, with 95% CIs.

    layerscope-report RUN_OR_MULTIRUN_DIR [--protocol both|per_image|dataset] [--metric aupro]
        [--calibration 0.5 | FILE] [--target-fpr 0.05] [--cost-miss 100 --cost-false-alarm 2 [--defect-rate 0.01]]

Two protocols (see the README). ``per_image`` reads every ``results.csv`` below the folder,
averages the metric per image (per object first, then per image, where one image holds several
objects), and ranks the candidates per category by the mean over images, with a percentile
bootstrap 95% CI over images; ``--metric image_auroc`` / ``image_auroc_topk`` rank how well a
map's maximum (or top cells) separates defective from ``good`` images. ``dataset`` pools every
pixel of every image from the saved maps (``dataset_metrics.csv`` in each run folder) and ranks
the pooled metric. Writes ``report_<metric>.csv/.md`` (per image) and
``report_dataset_<metric>.csv/.md`` into the folder. With ``--calibration`` the candidate and its
threshold are chosen on calibration images only and reported on the held-out rest
(``choice_<metric>.json/.md``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .results import catalog
from .results.layout import RESULTS
from .results.table import METRICS, load_results

KEYS = ["model", "method", "layer", "head"]
IMAGE_METRICS = catalog.IMAGE_SCORES


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
    df = df.assign(group=df["group"].fillna(df["image"]), category=df["category"].fillna(""))
    rng = np.random.default_rng(seed)
    out = []
    if image_level:
        good = df[df["category"] == "good"]
        if good.empty:
            raise ValueError(f"--metric {metric}: needs defect-free images (category 'good'), and the results have none")
        negatives = {key: part.groupby("group")[column].mean().to_numpy(float) for key, part in good.groupby(KEYS)}
        bad = df[df["category"] != "good"]
        for category, by_category in [*bad.groupby("category"), ("all", bad)]:
            for key, part in by_category.groupby(KEYS):
                pos = part.groupby("group")[column].mean().to_numpy(float)
                neg = negatives.get(key, np.array([]))
                out.append([category, *key, *bootstrap_auroc(pos, neg, n_boot, rng), len(pos) + len(neg)])
    else:
        scored = df.dropna(subset=[column])
        if scored.empty:
            raise ValueError(f"--metric {metric}: undefined for every row (no masks, or only defect-free images?)")
        for category, by_category in [*scored.groupby("category"), ("all", scored)]:
            per_image = by_category.groupby([*KEYS, "group"], as_index=False)[column].mean()  # objects -> image
            for key, part in per_image.groupby(KEYS):
                out.append([category, *key, *bootstrap_mean(part[column].to_numpy(float), n_boot, rng), len(part)])
    table = pd.DataFrame(out, columns=["category", *KEYS, "mean", "ci_low", "ci_high", "n"])
    ascending = catalog.lower_is_better(metric)
    table = table.sort_values(["category", "mean"], ascending=[True, ascending], kind="stable")
    table["rank"] = table.groupby("category").cumcount() + 1
    table.attrs.update(metric=metric, threshold=threshold)
    return table.reset_index(drop=True)


def to_markdown(table: pd.DataFrame, top: int) -> str:
    """The top ``top`` candidates per category as Markdown tables."""
    metric, threshold = table.attrs.get("metric", ""), table.attrs.get("threshold", "")
    lines = [f"# Which layer finds it? `{metric}` (threshold {threshold}), per-image protocol: each image scored on "
             "its own, then the mean over images, 95% bootstrap CI", ""]
    for category, part in table.groupby("category", sort=False):
        lines += [f"## {category}", "", "| rank | model | method | layer | head | mean | 95% CI | n |",
                  "|---:|---|---|---:|---|---:|---|---:|"]
        for r in part.head(top).itertuples():
            lines.append(f"| {r.rank} | {r.model} | {r.method} | {r.layer} | {r.head} | {r.mean:.3f} | "
                         f"[{r.ci_low:.3f}, {r.ci_high:.3f}] | {r.n} |")
        lines.append("")
    return "\n".join(lines)


def rank_dataset(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The dataset-level ranking: ``dataset_metrics`` rows sorted per category by the pooled ``metric``."""
    from .protocol import dataset_metric

    metric = dataset_metric(metric)
    ranked = table.dropna(subset=[metric]).sort_values(["category", metric], ascending=[True, False], kind="stable")
    ranked = ranked.assign(rank=ranked.groupby("category").cumcount() + 1).reset_index(drop=True)
    ranked.attrs.update(metric=metric)
    return ranked


def dataset_markdown(table: pd.DataFrame, top: int) -> str:
    """The top ``top`` candidates per category of the dataset-level ranking."""
    metric = table.attrs.get("metric", "")
    lines = [f"# Which layer finds it? pooled `{metric}` (dataset level: every pixel of every image, good ones "
             "included, one threshold for all)", "",
             "Chosen on the images it reports on: use `--calibration` for a held-out estimate.", ""]
    for category, part in table.groupby("category", sort=False):
        lines += [f"## {category}", "", "| rank | model | method | layer | head | pixel AUROC | AUPRO | pixel AP | "
                  "F1-max | image AUROC | images (defective) |", "|---:|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
        for r in part.head(top).itertuples():
            ci = f" [{r.aupro_ci_low:.3f}, {r.aupro_ci_high:.3f}]" if r.aupro_ci_low == r.aupro_ci_low else ""
            lines.append(f"| {r.rank} | {r.model} | {r.method} | {r.layer} | {r.head} | {r.pixel_auroc:.3f} | "
                         f"{r.aupro:.3f}{ci} | {r.pixel_ap:.3f} | {r.pixel_f1_max:.3f} | {r.image_auroc:.3f} | "
                         f"{r.n_images} ({r.n_defect_images}) |")
        lines.append("")
    return "\n".join(lines)


def _calibration(value: str, images: pd.DataFrame) -> float | np.ndarray:
    """``--calibration``: a share, a text file of image ids (one per line), or a saved ``choice_*.json``."""
    path = Path(value)
    if not path.is_file():
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"--calibration {value}: expected a share in (0, 1) or a file of image ids") from None
    if path.suffix == ".json":
        import json

        ids = json.loads(path.read_text())["calibration_images"]
    else:
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    unknown = sorted(set(ids) - set(images["id"]))
    if unknown:
        raise ValueError(f"--calibration {value}: {len(unknown)} ids are not among the images, e.g. {unknown[0]!r}")
    return images["id"].isin(ids).to_numpy()


def _write(folder: Path, stem: str, table: pd.DataFrame, md: str) -> None:
    table.to_csv(folder / f"{stem}.csv", index=False)
    (folder / f"{stem}.md").write_text(md)
    print(md)
    print(f"written: {folder / (stem + '.csv')}, {folder / (stem + '.md')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="layerscope-report", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a run folder or a multirun folder")
    p.add_argument("--protocol", choices=("both", "per_image", "dataset"), default="both",
                   help="per_image: mean over images of per-image metrics; dataset: pooled over images (MVTec AD)")
    p.add_argument("--metric", default="auroc", help="auroc, aupro, iou, ... (per image) or image_auroc[_topk]; "
                   "dataset level: auroc (pooled pixel AUROC), aupro, pixel_ap, pixel_f1_max")
    p.add_argument("--threshold", type=float, default=None, help="which threshold's rows (default: the smallest)")
    p.add_argument("--top", type=int, default=5, help="candidates shown per category")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=RESULTS, help="file name to collect (e.g. results_rescored.csv)")
    p.add_argument("--include-best", action="store_true", help="rank the per-image oracle 'best' head too")
    p.add_argument("--calibration", default=None, help="held-out choice: share of images to choose on (0.5), "
                   "a file of calibration image ids, or a saved choice_*.json")
    p.add_argument("--target-fpr", type=float, default=None, help="threshold by calibration pixel FPR instead of F1-max")
    p.add_argument("--stability", type=int, default=200, help="calibration resamples for the stability table")
    p.add_argument("--cost-miss", type=float, default=None, help="cost of passing a defective part")
    p.add_argument("--cost-false-alarm", type=float, default=None, help="cost of rejecting a good part")
    p.add_argument("--defect-rate", type=float, default=None, help="the line's share of defective parts "
                   "(default: the data's own)")
    p.add_argument("--image-score", choices=("max", "topk"), default="max", help="image score of the cost threshold")
    a = p.parse_args(argv)
    if (a.cost_miss is None) != (a.cost_false_alarm is None):
        print("error: --cost-miss and --cost-false-alarm go together", file=sys.stderr)
        return 2
    if a.calibration is None and (a.cost_miss is not None or a.target_fpr is not None):
        print("error: --cost-miss/--target-fpr belong to the held-out choice: add --calibration 0.5", file=sys.stderr)
        return 2
    try:
        per_image_metric = a.metric in (*METRICS, *IMAGE_METRICS)
        if a.protocol == "per_image" or (a.protocol == "both" and per_image_metric):
            table = rank(load_results(a.folder, a.results), a.metric, a.threshold, a.boot, a.seed, a.include_best)
            _write(a.folder, f"report_{a.metric}", table, to_markdown(table, a.top))
        if a.protocol in ("both", "dataset"):
            from .protocol import choose, dataset_metric, write_choice, write_dataset_metrics
            from .results.pool import build_pool

            metric = dataset_metric(a.metric)
            pooled = write_dataset_metrics(a.folder, n_boot=min(a.boot, 200), seed=a.seed, progress=True)
            ranked = rank_dataset(pooled, metric)
            _write(a.folder, f"report_dataset_{metric}", ranked, dataset_markdown(ranked, a.top))
            if a.calibration is not None:
                pool = build_pool(a.folder)
                try:
                    result = choose(pool, metric, _calibration(a.calibration, pool.images), a.seed, a.boot,
                                    a.stability, a.target_fpr,
                                    (a.cost_miss, a.cost_false_alarm) if a.cost_miss is not None else None,
                                    a.defect_rate, a.image_score)
                finally:
                    pool.close()
                js, md = write_choice(a.folder, result)
                print(md.read_text())
                print(f"written: {js}, {md}")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
