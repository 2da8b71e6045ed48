"""Compare layers and models beyond masks: similarity across layers and models, a k-NN probe per layer.

    layerscope-compare DIR [DIR ...] [--kind mean|cls] [--measure cka|procrustes|...|all] [--kernel linear|rbf]
        [--estimator auto|full|biased|minibatch] [--rbf-sigma S] [--rbf-median distinct|all] [--knn-k K]
        [--permutations P] [--boot B] [--probe LABEL] [--out DIR] [--depth layer|relative] [--k K]
        [--logger none|wandb]

Reads the representations runs saved (``save_representations=true``) below each DIR (a run, several
runs, a sweep); runs of one model config are merged, images are matched by id. Writes into ``--out``
(default ``DIR/compare`` for one DIR; required for several):

- ``similarity.csv``: one row per measure and pair of layers of every pair of models (both orders, each
  model with itself, the diagonal): ``measure, value``, the paired bootstrap's 95% interval
  (``ci_low, ci_high``), the permutation null (``null_mean, null_q95, p_value``, ``calibrated``), the
  images shared and the conventions (``kernel, estimator, convention``);
- ``monotonicity.csv``: within each model, the Spearman correlation between layer distance and similarity;
- ``cka_<a>__<b>_<kind>_<kernel>.png/pdf``: one CKA heatmap per model pair (Raghu et al. 2021 layout),
  cells not distinguishable from the null (p >= 0.05) hatched;
- with ``--probe LABEL`` (``category``, ``group`` or any results column that labels images):
  ``probe.csv`` and ``probe_<label>_<kind>.png/pdf`` (leave-one-out k-NN accuracy per layer);
- ``attention_distance.png/pdf`` where the runs measured ``attention_distance`` (``cls_attention``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from ..comparison import load_models, monotonicity_table, probe_table, similarity_table
from ..figures.compare import cka_heatmaps, probe_curves
from ..figures.paper import AXES, attention_distance
from ..metrics.measures import MEASURES
from ..metrics.measures.cka import ESTIMATORS
from ..metrics.similarity import KERNELS, RBF_MEDIANS
from ..results.layout import COMPARE, MONOTONICITY, PROBE, RESULTS, SIMILARITY
from ..results.representations import KINDS
from .errors import Parser, UsageError, command


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected an int >= 1") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected an int >= 1")
    return n


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected an int >= 0") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected an int >= 0")
    return n


def _width(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number > 0") from None
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number > 0")
    return x


def _atomic_csv(table: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)


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
    p.add_argument("--kind", default="mean", choices=KINDS, help="mean (patch tokens / global pool) or cls (ViTs)")
    p.add_argument("--measure", nargs="+", default=["cka"], choices=[*MEASURES, "all"],
                   help="similarity measures (default cka; all: every one)")
    p.add_argument("--kernel", default="linear", choices=KERNELS, help="CKA kernel (rbf: median heuristic)")
    p.add_argument("--rbf-sigma", type=_width, default=1.0,
                   help="RBF width as a multiple of the median distance (Kornblith et al. 2019's threshold)")
    p.add_argument("--rbf-median", default="distinct", choices=RBF_MEDIANS,
                   help="RBF median over distinct pairs (default) or all n^2 entries (Kornblith et al. code, ckatorch)")
    p.add_argument("--knn-k", type=_positive, default=10, help="neighbours of mknn and cknna (Huh et al. 2024)")
    p.add_argument("--permutations", type=_count, default=200,
                   help="permutations of the second representation's images for the null (0: no null)")
    p.add_argument("--probe", default=None, metavar="LABEL", help="k-NN probe of this image label per layer "
                   "(category, group, or any results.csv column with one value per image)")
    p.add_argument("--k", type=_positive, default=None, help="probe neighbours (default 20, fewer for small classes)")
    p.add_argument("--estimator", default="auto", choices=ESTIMATORS,
                   help="CKA's HSIC: full (unbiased HSIC_1), biased (Kornblith et al. 2019), minibatch (Nguyen et al. "
                   "2021; no interval or null), or auto (full while the Gram matrices fit)")
    p.add_argument("--batch-size", type=_positive, default=256, help="images per minibatch")
    p.add_argument("--depth", default="layer", choices=AXES, help="figure axes: layer index or relative depth")
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], help="figure formats")
    p.add_argument("--boot", type=_positive, default=1000,
                   help="bootstrap resamples of the 95%% CIs (similarity: the same images for both layers; probe)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: DIR/compare for one DIR)")
    p.add_argument("--logger", default="none", choices=("none", "wandb"), help="also log the tables to W&B")
    a = p.parse_args(argv)
    missing = [f for f in a.folders if not f.is_dir()]
    if missing:
        raise UsageError(f"{missing[0]}: no such folder")
    if a.out is None and len(a.folders) > 1:
        raise UsageError("--out DIR is needed when comparing several folders")
    from matplotlib.figure import Figure

    supported = Figure().canvas.get_supported_filetypes()
    if bad := [f for f in a.formats if f not in supported]:
        raise UsageError(f"--formats {' '.join(bad)}: expected some of {', '.join(sorted(supported))}")
    out = a.out if a.out is not None else a.folders[0] / COMPARE
    started = time.perf_counter()
    models, warnings = load_models(a.folders, a.kind)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    similarity = similarity_table(models, a.kind, a.kernel, a.estimator, a.batch_size, a.seed, measures=a.measure,
                                  n_perm=a.permutations, n_boot=a.boot, rbf_sigma=a.rbf_sigma,
                                  rbf_median=a.rbf_median, knn_k=a.knn_k)
    monotonic = monotonicity_table(similarity)
    probe = probe_table(models, a.probe, a.kind, a.k, a.boot, a.seed) if a.probe else None
    out.mkdir(parents=True, exist_ok=True)
    depths = {m.label: m.num_layers for m in models}
    written = [out / SIMILARITY, out / MONOTONICITY]
    _atomic_csv(similarity, out / SIMILARITY)
    _atomic_csv(monotonic, out / MONOTONICITY)
    written += cka_heatmaps(similarity, out, a.formats, a.depth, depths)
    if probe is not None:
        _atomic_csv(probe, out / PROBE)
        written += [out / PROBE, *probe_curves(probe, out, a.formats, a.depth, depths)]
    labels = {run: m.label for m in models for run in m.runs}
    written += attention_distance(_distance_rows(labels), out, a.formats, a.depth)
    for path in written:
        print(path)
    summary = ", ".join(f"{m.label} ({len(m.ids)} images, {len(m.arrays)} layers)" for m in models)
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
