"""The run folder: the one place that names the files a run writes and the tools read.

    <run>/results.csv          per-image rows (appended image by image)
    <run>/done.txt             ids of finished images, one per line (resume)
    <run>/config.yaml          the resolved config
    <run>/run_summary.json     written last: its presence marks a finished run
    <run>/run.log              the log (Hydra's job logging)
    <run>/.hydra/config.yaml, hydra.yaml, overrides.yaml   Hydra's record of the job
    <sweep>/multirun.yaml      Hydra's record of the sweep; <sweep>/all_results.csv   ``layerscope-collect``
    <job>/failed.txt           a sweep job's one-line error (the sweep goes on past it)
    <run>/maps/<image>.npz     saved maps of one image
    <run>/figures/<image>_grid.png
    <run>/dataset_metrics.csv  dataset-level protocol (``layerscope-report --protocol dataset``)
    <run>/results_rescored.csv, results_rescored.config.yaml   ``layerscope-rescore`` (default ``--out``)
    <DIR>/report_<metric>.csv|md, report_dataset_<metric>.csv|md   ``layerscope-report``
    <DIR>/choice_<metric>.json|md   the held-out choice (``layerscope-report --calibration``)
    <DIR>/fewshot_[dataset_]<metric>.csv|md   a few-shot sweep's shots x layer table across seeds
    <DIR>/fewshot_choice_<metric>.csv, _summary.csv, .md   its held-out choice of layer per shot count
    <run>/representations/<kind>_layer_<i>.npy, images.txt   pooled representations (save_representations)
    <run>/representations/parts/part_<n>.npz   what the run appends batch by batch (resume)
    <run>/representations/checksums.json   each image's content hash, checksums of images.txt and the arrays
    <run>/representations/thumbnails.npy   each image's input at 16 x 16 (its content, whatever the input size)
    <DIR>/compare/similarity.csv, monotonicity.csv, probe.csv, attention_distance.csv, *.png|pdf, .layerscope-compare (what it wrote)   ``layerscope-compare``
    <run or sweep>/report.html, report_files/   the offline page (``layerscope-view``)
"""
from __future__ import annotations

from pathlib import Path

RESULTS = "results.csv"
DONE = "done.txt"
CONFIG = "config.yaml"
SUMMARY = "run_summary.json"
LOG = "run.log"
LOCK = ".lock"
FAILED = "failed.txt"  # in a sweep job's folder: why the job failed (the sweep went on)
MAPS = "maps"
FIGURES = "figures"
GRID_SUFFIX = "_grid.png"  # FIGURES/<image>_grid.png (see ``grid_file``)
PAPER_FIGURES = "figures_paper"
DATASET_METRICS = "dataset_metrics.csv"
ALL_RESULTS = "all_results.csv"  # layerscope-collect's merged table, in the sweep folder
RESCORED = "results_rescored.csv"  # layerscope-rescore's default output, beside results.csv
HYDRA = ".hydra"  # Hydra's record of a job: HYDRA_CONFIG, HYDRA_SETTINGS, HYDRA_OVERRIDES inside it
HYDRA_CONFIG = "config.yaml"
HYDRA_SETTINGS = "hydra.yaml"
HYDRA_OVERRIDES = "overrides.yaml"
MULTIRUN = "multirun.yaml"  # in a sweep folder: Hydra's record of the sweep (the planned jobs)
CHOICE = "choice_"  # + the pooled metric: the held-out choice's .json and .md (``choice_stem``)
CHOICE_GLOB = f"{CHOICE}*.json"  # every held-out choice of a folder
FEWSHOT = "fewshot_"  # + [protocol_]metric: a few-shot sweep's shots x layer table (``fewshot_stem``)
FEWSHOT_CHOICE = "fewshot_choice_"  # + metric: its held-out choice per shot count (``fewshot_choice_stem``)
REPORT = "report.html"  # layerscope-view's page, with its pictures in REPORT_FILES/
REPORT_FILES = "report_files"  # named after the page: ``page_files(REPORT)``
REPRESENTATIONS = "representations"  # pooled representations per layer (save_representations=true)
REPRESENTATION_IDS = "images.txt"  # inside REPRESENTATIONS: the arrays' row order, one image id per line
REPRESENTATION_PARTS = "parts"  # inside REPRESENTATIONS: per-batch chunks, consolidated at the end
PART_GLOB = "part_*.npz"  # inside REPRESENTATION_PARTS (see ``part_file``)
REPRESENTATION_CHECKSUMS = "checksums.json"  # inside REPRESENTATIONS: each input image's hash, checksums of the files
REPRESENTATION_THUMBS = "thumbnails.npy"  # inside REPRESENTATIONS: each row's input at 16 x 16 (matching across sizes)
COMPARE = "compare"  # layerscope-compare's default output folder
SIMILARITY = "similarity.csv"
MONOTONICITY = "monotonicity.csv"  # in COMPARE: within-model layer monotonicity per similarity measure
PROBE = "probe.csv"
ATTENTION_DISTANCE = "attention_distance.csv"  # layerscope-compare: per head, the mean over images and its interval


def image_stem(image: str) -> str:
    """The file name stem of every file named after an image id (saved maps, grids, the page's and
    the figures' pictures): the id itself for the ids a run writes (``data.ids.safe_name`` leaves a
    safe id as it is), otherwise the cleaned id with a hash of it, so that an id read from a table
    (``../x``, ``a/b``) never names a file outside its folder and two ids never share one."""
    from ..data.ids import safe_name

    return safe_name(image)


def report_stem(metric: str, protocol: str = "per_image") -> str:
    """The file stem (``.csv`` and ``.md``) of ``layerscope-report``'s ranking by ``metric`` under ``protocol``."""
    return f"report_{metric}" if protocol == "per_image" else f"report_{protocol}_{metric}"


def fewshot_stem(metric: str, protocol: str = "per_image") -> str:
    """The file stem (``.csv``, ``.md``) of a few-shot sweep's shots x layer table of ``metric`` under ``protocol``."""
    return f"{FEWSHOT}{metric}" if protocol == "per_image" else f"{FEWSHOT}{protocol}_{metric}"


def fewshot_choice_stem(metric: str) -> str:
    """The file stem of a few-shot sweep's held-out choice per shot count (``.csv``; ``_summary.csv``, ``.md``)."""
    return f"{FEWSHOT_CHOICE}{metric}"


def choice_stem(metric: str) -> str:
    """The file stem (``.json`` and ``.md``) of the held-out choice by the pooled ``metric``."""
    return f"{CHOICE}{metric}"


def page_files(page: Path) -> Path:
    """The pictures folder of the offline page ``page``: ``<stem>_files/`` beside it (``REPORT_FILES``)."""
    page = Path(page)
    return page.with_name(f"{page.stem}_files")


def page_lock(page: Path) -> Path:
    """The advisory lock beside the page ``page`` (``.<name>.lock``) that two writers of one page share."""
    page = Path(page)
    return page.with_name(f".{page.name}{LOCK}")


def map_file(run_dir: Path, image: str) -> Path:
    """The saved maps of ``image``."""
    return Path(run_dir) / MAPS / f"{image_stem(image)}.npz"


def grid_file(run_dir: Path, image: str) -> Path:
    """The layer x head grid picture of ``image``."""
    return Path(run_dir) / FIGURES / f"{image_stem(image)}{GRID_SUFFIX}"


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, symbolic links resolved, lies inside ``folder`` (resolved as well)."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except (ValueError, OSError, RuntimeError):  # elsewhere, or a link loop
        return False
    return True


def representation_key(kind: str, layer: int | str) -> str:
    """The name of one representation kind at one layer: its ``.npy`` file's stem and its key in a part
    (``layer="*"`` gives the glob of a kind's files)."""
    return f"{kind}_layer_{layer}"


def representation_file(run_dir: Path, kind: str, layer: int) -> Path:
    """The ``(n_images, D)`` float32 array of one representation kind (``mean``, ``cls``) at one layer."""
    return Path(run_dir) / REPRESENTATIONS / f"{representation_key(kind, layer)}.npy"


def part_file(run_dir: Path, n: int) -> Path:
    """The ``n``-th per-batch chunk of a run's representations (``PART_GLOB`` finds them all)."""
    return Path(run_dir) / REPRESENTATIONS / REPRESENTATION_PARTS / f"part_{n:06d}.npz"


def map_files(run_dir: Path) -> list[Path]:
    """Every finished saved-map file of a run, sorted (half-written temporary files excluded)."""
    folder = Path(run_dir) / MAPS
    return sorted(p for p in folder.glob("*.npz") if ".tmp" not in p.name) if folder.is_dir() else []


def run_dirs(folder: Path, name: str = RESULTS) -> list[Path]:
    """Folders at or below ``folder`` holding ``name``, sorted."""
    folder = Path(folder)
    return sorted(p.parent for p in folder.rglob(name)) if folder.is_dir() else []


def is_complete(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a finished run."""
    return (Path(out_dir) / SUMMARY).exists()


def read_done(out_dir: Path) -> dict[str, int | None]:
    """Finished images and how many rows each wrote, from ``done.txt`` (``id<TAB>rows`` lines, in order).

    A last line cut mid-write (no newline) is ignored; lines of older runs without a count map to None.
    """
    path = Path(out_dir) / DONE
    if not path.exists():
        return {}
    lines = path.read_text(errors="replace").split("\n")[:-1]  # the part after the last newline never finished
    done: dict[str, int | None] = {}
    for line in lines:
        image, _, rows = line.partition("\t")
        if image:
            done[image] = int(rows) if rows.isdigit() else None
    return done


def done_line(image: str, rows: int) -> str:
    """The ``done.txt`` line of an image whose ``rows`` rows are flushed to ``results.csv``."""
    return f"{image}\t{rows}\n"
