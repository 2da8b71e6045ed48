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
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..results import catalog
from ..results.jobs import job_problems
from ..results.layout import RESULTS, report_stem
from ..analysis.leaderboard import IMAGE_METRICS, dataset_markdown, md, rank, rank_dataset, to_markdown
from ..results.rundir import write_atomic
from ..results.table import METRICS, load_results
from .errors import Parser, UsageError, command

def _calibration(value: str, images: pd.DataFrame) -> float | np.ndarray:
    """``--calibration``: a share, a text file of image ids (one per line), or a saved ``choice_*.json``."""
    path = Path(value)
    if not path.is_file():
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"--calibration {value}: expected a share in (0, 1) or a file of image ids") from None
    if path.suffix == ".json":
        try:
            ids = json.loads(path.read_text()).get("calibration_images")
        except (ValueError, AttributeError):
            ids = None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"--calibration {value}: expected a choice_*.json written by layerscope-report "
                             "(with a list of calibration_images)")
    else:
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    unknown = sorted(set(ids) - set(images["id"]))
    if unknown:
        raise ValueError(f"--calibration {value}: {len(unknown)} ids are not among the images, e.g. {unknown[0]!r}")
    return images["id"].isin(ids).to_numpy()


def _check_options(a: argparse.Namespace) -> str | None:
    """The first option outside its range, as a one-line message, or None."""
    ints = (("--boot", a.boot, 1), ("--top", a.top, 1), ("--stability", a.stability, 0))
    for name, value, low in ints:
        if value < low:
            return f"{name} {value}: expected an int >= {low}"
    # a miss that costs nothing makes every inspection pointless (and the break-even rate 0/0)
    for name, value, low in (("--cost-miss", a.cost_miss, ">"), ("--cost-false-alarm", a.cost_false_alarm, ">=")):
        if value is not None and not (math.isfinite(value) and (value > 0 if low == ">" else value >= 0)):
            return f"{name} {value:g}: expected a finite cost {low} 0 per part"
    for name, value in (("--target-fpr", a.target_fpr), ("--defect-rate", a.defect_rate)):
        if value is not None and not 0 <= value <= 1:
            return f"{name} {value:g}: expected a share in [0, 1]"
    return None


def _undefined_markdown(reasons: dict[str, str], metric: str) -> str:
    """The categories where pooled ``metric`` is undefined for every map, and why."""
    lines = []
    for category, reason in reasons.items():
        lines += ["", f"## {md(category)}", "", f"Pooled `{metric}` undefined: {md(reason)}."]
    return "\n".join(lines) + "\n" if lines else ""


def _write(folder: Path, stem: str, table: pd.DataFrame, md: str) -> None:
    write_atomic(folder / f"{stem}.csv", table.to_csv(index=False))  # a cut leaves the earlier report or this one
    write_atomic(folder / f"{stem}.md", md)
    print(md)
    print(f"written: {folder / (stem + '.csv')}, {folder / (stem + '.md')}")


def _fewshot_per_image(a: argparse.Namespace) -> None:
    """A few-shot sweep's shots x layer table of the per-image ``a.metric`` (mean and t-interval across seeds)."""
    from ..analysis import fewshot
    from ..results.layout import fewshot_stem

    settings = fewshot.job_settings(a.folder)
    if not fewshot.is_sweep(settings) or a.metric in IMAGE_METRICS:
        return
    table = fewshot.across_seeds(fewshot.per_image_values(load_results(a.folder, a.results), a.metric), settings)
    _write(a.folder, fewshot_stem(a.metric, "per_image"), table, fewshot.fewshot_markdown(
        table, f"Few-shot protocol: per-image `{a.metric}` by shots and layer", metric=a.metric))


def _fewshot_dataset(a: argparse.Namespace, pooled: pd.DataFrame, pool, metric: str) -> None:
    """A few-shot sweep's shots x layer table of pooled ``metric`` and, with ``--calibration``, the held-out choice
    of layer per shot count against the best in hindsight."""
    from ..analysis import fewshot
    from ..results.layout import fewshot_stem

    settings = fewshot.job_settings(a.folder)
    if not fewshot.is_sweep(settings):
        return
    table = fewshot.across_seeds(fewshot.dataset_values(pooled, metric), settings)
    _write(a.folder, fewshot_stem(metric, "dataset"), table, fewshot.fewshot_markdown(
        table, f"Few-shot protocol: pooled `{metric}` (dataset level) by shots and layer", metric=metric))
    if a.calibration is not None:
        from ..fewshot_choice import choose_by_shots, write_choice_by_shots

        rows = choose_by_shots(pool, settings, metric, _calibration(a.calibration, pool.images), a.seed)
        paths = write_choice_by_shots(a.folder, rows)
        print(paths[-1].read_text())
        print(f"written: {', '.join(map(str, paths))}")


@command(errors=(ValueError, FileNotFoundError), write="; the earlier report is kept")
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="layerscope-report", description=__doc__.split("\n\n")[0])
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
    bad = _check_options(a)
    if bad:
        raise UsageError(bad)
    if (a.cost_miss is None) != (a.cost_false_alarm is None):
        raise UsageError("--cost-miss and --cost-false-alarm go together")
    if a.calibration is None and (a.cost_miss is not None or a.target_fpr is not None):
        raise UsageError("--cost-miss/--target-fpr belong to the held-out choice: add --calibration 0.5")
    per_image_metric = a.metric in (*METRICS, *IMAGE_METRICS)
    try:
        metric = catalog.dataset_metric(a.metric)
    except ValueError:
        if a.protocol == "dataset":
            raise
        if a.protocol == "both" and not per_image_metric:
            raise UsageError(f"--metric {a.metric}: expected one of {', '.join([*METRICS, *IMAGE_METRICS])} (per "
                             f"image) or {', '.join(catalog.DATASET)} (dataset level)") from None
        metric = None
    per_image = a.protocol == "per_image" or (a.protocol == "both" and per_image_metric)
    dataset = a.protocol == "dataset" or (a.protocol == "both" and metric is not None)
    if a.calibration is not None and not dataset:
        raise UsageError(f"--calibration: the held-out choice ranks by a dataset-level metric "
                         f"({', '.join(catalog.DATASET)}), not --metric {a.metric}")
    if a.protocol == "both" and not (per_image and dataset):  # checked first: nothing written, then an error
        print(f"note: --metric {a.metric} has no {'dataset-level' if per_image else 'per-image'} form: only the "
              f"{'per-image' if per_image else 'dataset-level'} report is written (the "
              f"{'dataset' if per_image else 'per_image'} protocol is skipped)", file=sys.stderr)
    problems = job_problems(a.folder, a.results) if a.folder.is_dir() else []

    def warn() -> None:  # once the results read: a folder that holds no run gets its one error line alone
        if problems:
            print(f"warning: not every run below {a.folder} finished (only finished images are ranked): "
                  f"{'; '.join(problems)}", file=sys.stderr)
            problems.clear()

    if per_image:
        results = load_results(a.folder, a.results)
        warn()
        table = rank(results, a.metric, a.threshold, a.boot, a.seed, a.include_best)
        from ..analysis.weights_check import flags_markdown, weight_independent

        _write(a.folder, report_stem(a.metric), table, to_markdown(table, a.top) +
               flags_markdown(weight_independent(results)))  # metrics.randomisation's survivors
        _fewshot_per_image(a)
    if dataset:
        from ..runtime import score_threads
        from ..protocol import choose, undefined_reasons, write_choice, write_dataset_metrics
        from ..analysis.pool import build_pool

        pool = build_pool(a.folder, progress=True)  # the saved maps are read once for the table and the choice
        warn()
        try:
            pooled = write_dataset_metrics(a.folder, n_boot=min(a.boot, 200), seed=a.seed, pool=pool,
                                           threads=score_threads())
            ranked = rank_dataset(pooled, metric)
            md = dataset_markdown(ranked, a.top, held_out=a.calibration is not None)
            _write(a.folder, report_stem(metric, "dataset"), ranked,
                   md + _undefined_markdown(undefined_reasons(pooled, metric), metric))
            if a.calibration is not None:
                result = choose(pool, metric, _calibration(a.calibration, pool.images), a.seed, a.boot,
                                a.stability, a.target_fpr,
                                (a.cost_miss, a.cost_false_alarm) if a.cost_miss is not None else None,
                                a.defect_rate, a.image_score)
                js, md = write_choice(a.folder, result)
                print(md.read_text())
                print(f"written: {js}, {md}")
            _fewshot_dataset(a, pooled, pool, metric)
        finally:
            pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
