"""Compare layers and models beyond masks: similarity across layers and models, a k-NN probe per layer.

    layerscope-compare DIR [DIR ...] [--kind mean|cls|patches|defect|background] [--grid G] [--max-cells N]
        [--measure cka|procrustes|...|all] [--kernel linear|rbf] [--estimator auto|full|biased|minibatch]
        [--rbf-sigma S] [--rbf-median distinct|all] [--knn-k K] [--permutations P] [--boot B]
        [--probe LABEL] [--k K] [--group COLUMN] [--interval wilson|clopper-pearson] [--out DIR]
        [--depth layer|relative] [--logger none|wandb]

Reads the representations runs saved (``save_representations=true``) below each DIR (a run, several
runs, a sweep); runs of one model config are merged, images are matched by id and content (the hash or
thumbnail of the input each run saved). Writes into ``--out`` (default ``DIR/compare`` for one DIR;
required for several), replacing only its own previous outputs there, as a set (``analysis.compare_output``):

- ``similarity.csv``: one row per measure and pair of layers of every pair of models (both orders, each
  model with itself, the diagonal): ``measure, value``, the paired bootstrap's 95% interval
  (``ci_low, ci_high``), the permutation null (``null_mean, null_q95, p_value``, ``calibrated``), the
  images shared and the conventions (``kernel, estimator, convention``);
- ``monotonicity.csv``: within each model, the Spearman correlation between layer distance and similarity;
- ``cka_<a>__<b>_<kind>_<kernel>.png/pdf``: one CKA heatmap per model pair (Raghu et al. 2021 layout),
  cells not distinguishable from the null (p >= 0.05) hatched;
- with ``--probe LABEL`` (``category``, ``group`` or any results column that labels images):
  ``probe.csv`` and ``probe_<label>_<kind>.png/pdf`` (leave-one-out, or with ``--group`` leave-one-group-out,
  k-NN accuracy per layer with its binomial 95% interval and its label-permutation null under the same
  scheme: ``chance`` = the null's mean, ``null_q05``/``null_q95``, ``p_value``; ``majority`` = the largest
  class's share); a warning when accuracy is significantly below its null;
- ``attention_distance.csv`` and ``.png/pdf`` where the runs measured ``attention_distance`` (``cls_attention``):
  per (model, rule, unit, layer, head) the mean over images with its 95% bootstrap interval.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from ..comparison import (cca_warnings, check_label, load_models, monotonicity_table, probe_table,
                          probe_warnings, representation_rows, similarity_table)
from ..figures.comparison_plots import cka_heatmaps, probe_curves
from ..figures.paper import AXES, attention_distance
from ..metrics.measures import MEASURES
from ..metrics.measures.cka import ESTIMATORS
from ..metrics.probe import INTERVALS
from ..metrics.similarity import KERNELS, RBF_MEDIANS
from ..analysis.compare_output import check_out, writing
from ..results.layout import ATTENTION_DISTANCE, COMPARE, MONOTONICITY, PROBE, RESULTS, SIMILARITY
from ..analysis.saved import distance_table
from ..results.representations import KINDS
from .errors import Parser, UsageError, command


def _int_at_least(low: int):
    """An argparse type: an int >= ``low``."""
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r}: expected an int >= {low}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"{value!r}: expected an int >= {low}")
        return n
    return parse


_positive, _nonnegative = _int_at_least(1), _int_at_least(0)


def _width(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number > 0") from None
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number > 0")
    return x


def _distance_rows(labels: dict[Path, str]) -> pd.DataFrame:
    """``results.csv`` rows of the runs with ``attention_distance`` values, ``series`` = the model's label."""
    from ..results.table import read_results

    frames = []
    for run, label in labels.items():
        df = read_results(run / RESULTS) if (run / RESULTS).exists() else pd.DataFrame()
        if "attention_distance" in df.columns and df["attention_distance"].notna().any():
            frames.append(df.assign(series=label))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _log_wandb(similarity: pd.DataFrame, probe: pd.DataFrame | None, out: Path, folders: list[Path]) -> None:
    from ..loggers.wandb_logger import WandbLogger

    logger = WandbLogger(group="compare")
    logger.start({"compare": {"folders": [str(f) for f in folders]}}, out, "compare", "compare")
    ok = False
    try:
        logger.log_comparison(similarity, probe)
        ok = True
    finally:
        logger.finish(ok)


@command(errors=(ValueError, FileNotFoundError))
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="layerscope-compare", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", type=Path, nargs="+", metavar="DIR", help="a run, several runs, or a sweep folder")
    p.add_argument("--kind", default="mean", choices=KINDS, help="mean (patch tokens / global pool), cls (ViTs), "
                   "patches (rows = image x cell on one common grid), defect / background (mean of the cells "
                   "inside / outside the mask)")
    p.add_argument("--grid", type=_positive, default=None, help="patches: the common grid's side (default: the "
                   "coarsest compared layer's)")
    p.add_argument("--max-cells", type=_positive, default=None, help="patches: compare a seeded subset of this "
                   "many image x cell rows")
    p.add_argument("--measure", nargs="+", default=["cka"], choices=[*MEASURES, "all"],
                   help="similarity measures (default cka; all: every one)")
    p.add_argument("--kernel", default="linear", choices=KERNELS, help="CKA kernel (rbf: median heuristic)")
    p.add_argument("--rbf-sigma", type=_width, default=1.0,
                   help="RBF width as a multiple of the median distance (Kornblith et al. 2019's threshold)")
    p.add_argument("--rbf-median", default="distinct", choices=RBF_MEDIANS,
                   help="RBF median over distinct pairs (default) or all n^2 entries (Kornblith et al. code, ckatorch)")
    p.add_argument("--knn-k", type=_positive, default=10, help="neighbours of mknn and cknna (Huh et al. 2024)")
    p.add_argument("--permutations", type=_nonnegative, default=200,
                   help="permutations of the second representation's images for the null (0: no null)")
    p.add_argument("--probe", default=None, metavar="LABEL", help="k-NN probe of this image label per layer "
                   "(category, group, or any results.csv column with one value per image)")
    p.add_argument("--k", type=_positive, default=None, help="probe neighbours (default 20, fewer for small classes)")
    p.add_argument("--group", default=None, metavar="COLUMN", help="probe leave-one-group-out: the images sharing a "
                   "value of this image label (e.g. source, the texture) are left out together, so that factor "
                   "cannot outvote the probed label (default: leave-one-out; patches: leave-one-image-out)")
    p.add_argument("--interval", default="wilson", choices=INTERVALS, help="the probe accuracy's 95%% interval: "
                   "Wilson (1927) or Clopper-Pearson (1934)")
    p.add_argument("--estimator", default="auto", choices=ESTIMATORS,
                   help="CKA's HSIC: full (unbiased HSIC_1), biased (Kornblith et al. 2019), minibatch (Nguyen et al. "
                   "2021; no interval or null), or auto (full while the Gram matrices fit)")
    p.add_argument("--batch-size", type=_positive, default=256, help="images per minibatch")
    p.add_argument("--depth", default="layer", choices=AXES, help="figure axes: layer index or relative depth")
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], help="figure formats")
    p.add_argument("--boot", type=_positive, default=1000,
                   help="bootstrap resamples of the similarities' 95%% CIs (the same images for both layers)")
    p.add_argument("--seed", type=_nonnegative, default=0, help="seed of the bootstrap, the permutations, the "
                   "minibatches and --max-cells (>= 0)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: DIR/compare for one DIR)")
    p.add_argument("--logger", default="none", choices=("none", "wandb"), help="also log the tables to W&B")
    a = p.parse_args(argv)
    missing = [f for f in a.folders if not f.is_dir()]
    if missing:
        raise UsageError(f"{missing[0]}: no such folder")
    if (a.grid or a.max_cells) and a.kind != "patches":
        raise UsageError(f"--grid and --max-cells apply to --kind patches (got --kind {a.kind})")
    if a.group and not a.probe:
        raise UsageError("--group needs --probe LABEL (it sets the probe's leave-one-group-out)")
    if a.out is None and len(a.folders) > 1:
        raise UsageError("--out DIR is needed when comparing several folders")
    from matplotlib.figure import Figure

    supported = Figure().canvas.get_supported_filetypes()
    if bad := [f for f in a.formats if f not in supported]:
        raise UsageError(f"--formats {' '.join(bad)}: expected some of {', '.join(sorted(supported))}")
    out = a.out if a.out is not None else a.folders[0] / COMPARE
    # before any work: a refused --out costs nothing
    check_out(out, [SIMILARITY, MONOTONICITY, ATTENTION_DISTANCE, *([PROBE] if a.probe else [])])
    started = time.perf_counter()
    models, warnings = load_models(a.folders, a.kind)
    models, more = representation_rows(models, a.kind, a.grid, a.max_cells, a.seed)
    warnings += more
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if a.probe:
        check_label(models, a.probe)
    similarity = similarity_table(models, a.kind, a.kernel, a.estimator, a.batch_size, a.seed, measures=a.measure,
                                  n_perm=a.permutations, n_boot=a.boot, rbf_sigma=a.rbf_sigma,
                                  rbf_median=a.rbf_median, knn_k=a.knn_k)
    monotonic = monotonicity_table(similarity)
    for w in cca_warnings(models, similarity):
        print(f"warning: {w}", file=sys.stderr)
    probe = (probe_table(models, a.probe, a.kind, a.k, a.group, a.permutations, a.interval, a.seed)
             if a.probe else None)
    for w in probe_warnings(probe) if probe is not None else []:
        print(f"warning: {w}", file=sys.stderr)
    depths = {m.label: m.num_layers for m in models}
    labels = {run: m.label for m in models for run in m.runs}
    distances = _distance_rows(labels)
    distance = distance_table(distances, seed=a.seed)
    tables = {SIMILARITY: similarity, MONOTONICITY: monotonic}
    if probe is not None:
        tables[PROBE] = probe
    if not distance.empty:
        tables[ATTENTION_DISTANCE] = distance
    with writing(out) as output:  # one compare at a time; its previous outputs replaced as a set
        figures = cka_heatmaps(similarity, output.staging, a.formats, a.depth, depths)
        if probe is not None:
            figures += probe_curves(probe, output.staging, a.formats, a.depth, depths)
        figures += attention_distance(distances, output.staging, a.formats, a.depth)
        written = output.commit(tables, figures)
    for path in written:
        print(path)
    rows = "rows (image x cell)" if a.kind == "patches" else "images"
    summary = ", ".join(f"{m.label} ({len(m.ids)} {rows}, {len(m.arrays)} layers)" for m in models)
    estimators = sorted(set(similarity.loc[similarity["measure"] == "cka", "estimator"]))
    print(f"compared {summary} in {time.perf_counter() - started:.1f} s"
          + (f"; CKA estimator {', '.join(estimators)}" if estimators else ""), file=sys.stderr)
    for r in monotonic.itertuples():
        print(f"layer monotonicity {r.model} {r.measure}: Spearman(|i - j|, similarity) = {r.spearman:.2f} "
              f"({r.n_layers} layers)", file=sys.stderr)
    if a.logger == "wandb":
        _log_wandb(similarity, probe, out, a.folders)
    return 0


if __name__ == "__main__":
    sys.exit(main())
