"""The page as a whole: its metric, its HTML around the sections (with ``assets/report.css`` and
``assets/report.js`` inlined), and how it is written: beside its pictures folder, replacing only what this
command wrote, one writer at a time, the earlier page kept until the new one is complete."""
from __future__ import annotations

import functools
import os
import shutil
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from ..results import catalog, layout
from ..results.rundir import wait_for_lock
from ..analysis.saved import Study
from ..analysis.weights_check import flags_section
from .comparison_section import compare_section
from .fewshot_section import fewshot_section
from .gallery import gallery_data, gallery_section
from .html import esc, script_json
from .sections import (choice_section, curves_section, glance_section, job_entries, ranking_section, runs_section,
                       series_scores, summary_section)

REPORT = layout.REPORT
DEFAULT_METRICS = ("aupro", "auroc", "iou", "entropy")  # the first one with values is the page's metric


@functools.lru_cache(maxsize=None)
def asset(name: str) -> str:
    """The text of ``assets/<name>`` (``report.css``, ``report.js``), read from the installed package."""
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


class ViewError(ValueError):
    """A folder or option the page cannot be made from (the message is the one-line error)."""


def pick_metric(study: Study, metric: str | None) -> str:
    """The page's metric: ``metric`` when given (a per-image map metric), else the first of
    ``DEFAULT_METRICS`` with values.

    Raises:
        ViewError: an unknown metric, or one without any value.
    """
    if metric is None:
        for name in DEFAULT_METRICS:
            if name in study.df.columns and study.df[name].notna().any():
                return name
        raise ViewError(f"{study.root}: no metric has a value in results.csv")
    if metric not in catalog.MAP_METRICS:
        raise ViewError(f"--metric {metric}: expected one of {', '.join(catalog.MAP_METRICS)}")
    if metric not in study.df.columns or study.df[metric].isna().all():
        raise ViewError(f"--metric {metric}: no value in the results (no masks?)")
    return metric


def _page(title: str, where: str, sections: Iterable[str], data: dict[str, Any], depth: str) -> str:
    payload = script_json(data)
    nav = "".join(f"<a href=\"#{a}\">{t}</a>" for a, t in (("glance", "at a glance"), ("gallery", "images"),
                                                           ("ranking", "ranking"), ("curves", "by layer"),
                                                           ("choice", "choice"), ("fewshot", "few-shot"),
                                                           ("compare", "compare"), ("runs", "runs")))
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><meta name=generator content={GENERATOR}>"
            "<meta name=viewport "
            f"content=\"width=device-width,initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>\n{asset('report.css')}</style></head>"
            f"<body class=\"{'rel' if depth == 'relative' else ''}\"><header><h1>{esc(title)}</h1><nav>{nav}</nav>"
            f"<span class=where>{esc(where)}</span></header><main>{''.join(sections)}</main>"
            f"<script type=\"application/json\" id=data>{payload}</script>"
            f"<script>\n{asset('report.js')}</script></body></html>\n")


GENERATOR = "layerscope-view"  # named in the page's <meta name=generator>: a page this command wrote
MARKER = ".layerscope-view"  # inside <stem>_files/: a folder this command wrote (holds the page's file name)
OWN_PICTURES = ("grid", "thumb", "input")  # what <stem>_files/ holds (pages written before the marker)


def _is_page(path: Path) -> bool:
    """Whether ``path`` is a page this command wrote (its head names it), which it may replace."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    own = f"<meta name=generator content={GENERATOR}>".encode() in head or b"<title>layerscope \xc2\xb7 " in head
    return head.startswith(b"<!DOCTYPE html>") and own


def _own_files(folder: Path) -> bool:
    """Whether ``folder`` (``<stem>_files/``) is this command's pictures folder, which it may replace: it
    holds the marker, or (written before the marker) nothing but the page's pictures (an empty folder too)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    if (folder / MARKER).is_file():
        return True
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts
        if parts[0] not in OWN_PICTURES or path.is_symlink() or (
                not path.is_dir() and path.suffix not in (".png", ".jpg")):
            return False
    return True


def check_out(out: Path) -> Path:
    """The pictures folder of the page ``out`` (``<stem>_files/``), once sure that writing both replaces
    nothing this command did not write.

    Raises:
        ViewError: ``out`` is a folder, not an ``.html`` name, or an existing file (a run's
            ``results.csv``, any other file) or ``<stem>_files/`` that is not this command's own.
    """
    if out.is_dir():
        raise ViewError(f"--out {out}: is a folder; expected the page's file name (e.g. {out / REPORT})")
    if out.suffix.lower() not in (".html", ".htm"):
        raise ViewError(f"--out {out}: expected a file name ending in .html (nothing was written)")
    if (out.exists() or out.is_symlink()) and not _is_page(out):
        raise ViewError(f"--out {out}: exists and is not a page written by layerscope-view; it is left as it is "
                        "(choose another file name)")
    files = layout.page_files(out)
    if (files.exists() or files.is_symlink()) and not _own_files(files):
        raise ViewError(f"--out {out}: {files} exists and was not written by layerscope-view (the page's pictures "
                        "go there); it is left as it is (choose another file name)")
    return files


@contextmanager
def _page_lock(out: Path):
    """One writer of a page at a time: a second ``layerscope-view`` writing the same page waits here for the
    first, so neither removes the other's pictures (an advisory ``flock`` on ``.<name>.lock`` beside it,
    released by the kernel however its holder ends)."""
    import fcntl

    with open(layout.page_lock(out), "a") as handle:
        wait_for_lock(handle, f"waiting for another layerscope-view writing {out} ...")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _staging(out: Path) -> Path:
    """A fresh hidden folder beside ``out`` for its pictures, marked as this command's; earlier ones that a
    killed writer of the same page left are removed (called under ``_page_lock``)."""
    import secrets

    prefix = f".{out.stem}_files."
    legacy = out.with_name(f"{prefix}tmp")  # what a page written before the marker left when stopped
    if legacy.is_dir() and _own_files(legacy):
        shutil.rmtree(legacy, ignore_errors=True)
    for old in out.parent.glob(f"{prefix}*.tmp*"):
        marker = old / MARKER
        if old.is_dir() and marker.is_file() and marker.read_text(errors="replace").strip() == out.name:
            shutil.rmtree(old, ignore_errors=True)
        elif old.is_file() and old.name.endswith(".tmp.html") and _is_page(old):
            old.unlink()
    staging = out.with_name(f"{prefix}{os.getpid()}-{secrets.token_hex(4)}.tmp")
    staging.mkdir()  # not mkdtemp: its 0700 would keep a web server from the pictures
    (staging / MARKER).write_text(f"{out.name}\n")
    return staging


def build(folder: Path | str, out: Path | str | None = None, metric: str | None = None, depth: str = "layer",
          top: int = 5, n_boot: int = 1000) -> Path:
    """Write the report page of a run or sweep folder.

    Args:
        folder: a run folder (``results.csv`` + ``maps/``) or a sweep folder above several.
        out: the HTML file; default ``FOLDER/report.html``. Its pictures go beside it, in
            ``<stem>_files/`` (replaced as a whole). Only a page this command wrote, and its
            pictures folder, are ever replaced (``check_out``); two builds of one page take turns.
        metric: the page's metric (heatmaps, ranking, first curve); default the first of
            ``DEFAULT_METRICS`` with values.
        depth: the curves' x-axis when the page opens: ``layer`` or ``relative``.
        top: candidates shown per defect type in the ranking.
        n_boot: bootstrap resamples of the 95% CIs (>= 1).

    Returns:
        The HTML file written.

    Raises:
        FileNotFoundError: no such folder, or no ``results.csv`` below it.
        ViewError: a bad option, or an ``out`` that would replace a file this command did not write.
    """
    if depth not in ("layer", "relative"):
        raise ViewError(f"--depth {depth}: expected layer or relative")
    if top < 1 or n_boot < 1:
        raise ViewError(f"--top {top} --boot {n_boot}: expected ints >= 1")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    out = Path(out) if out is not None else folder / REPORT
    check_out(out)  # before any work: a refused --out costs nothing
    study = Study(folder)
    metric = pick_metric(study, metric)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ViewError(f"--out {out}: cannot make its folder {out.parent} ({e.strerror or e})") from None
    with _page_lock(out):
        files = check_out(out)  # again under the lock: what another writer left is its own page
        staging = _staging(out)
        tmp, old = staging.with_name(f"{staging.name}.html"), staging.with_name(f"{staging.name}.old")
        try:
            tmp.write_text(_write(study, folder, files, staging, metric, depth, top, n_boot), encoding="utf-8")
            if files.exists():
                files.replace(old)  # the earlier pictures (checked: this command's own) step aside
            try:
                staging.replace(files)
            except OSError:
                if old.exists():
                    old.replace(files)
                raise
            tmp.replace(out)
        finally:  # on success only the earlier pictures are left to remove; on failure the new ones too
            tmp.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
    return out


def _write(study: Study, folder: Path, files: Path, staging: Path, metric: str, depth: str, top: int,
           n_boot: int) -> str:
    """The pictures into ``staging`` (served as ``files``); returns the page."""
    from ..analysis.leaderboard import rank

    ranked = rank(study.df, metric, n_boot=n_boot)
    scores = series_scores(study, metric, ranked, n_boot)
    series_index: dict[str, int] = {}
    data = gallery_data(study, staging, files.name, metric, scores, series_index)  # moved to files/ once written
    jobs, never = job_entries(study)
    sections = [summary_section(study, jobs, never, metric), glance_section(study, scores, metric, series_index),
                gallery_section(data), ranking_section(study, metric, ranked, top),
                curves_section(study, metric, scores, n_boot, depth), choice_section(study),
                fewshot_section(study, metric), compare_section(study.df, folder), flags_section(study.df),
                runs_section(study, jobs)]
    title = f"layerscope · {folder.resolve().name}"
    return _page(title, f"{folder.resolve()} · written {time.strftime('%Y-%m-%d %H:%M')}", sections, data, depth)
