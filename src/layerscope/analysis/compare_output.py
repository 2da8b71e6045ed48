"""The output folder of ``layerscope-compare`` (``--out``, default ``DIR/compare``): what it may replace there,
and how, under the rules the report page follows (``view.page``).

- It writes only what it wrote before: a marker file (``.layerscope-compare``) names the files of its last
  write; any other file there (a user's own ``similarity.csv``, notes) is never replaced: a new output of
  that name is refused in one line, before anything is written.
- Its outputs are replaced as a set: the previous compare's files that this one does not write (a
  ``probe.csv`` of an earlier ``--probe``, heatmaps of another model pair) are removed, so the folder never
  shows two compares side by side. The figures are drawn into a hidden staging folder first; the marker
  lists old and new files while they are swapped, so a cut at any point leaves only files it names.
- One writer at a time: an advisory ``flock`` on ``.layerscope-compare.lock`` in the folder, released by
  the kernel however its holder ends; a second compare into the same folder waits for the first.

A folder written before the marker existed counts as this command's when its ``similarity.csv`` has the
command's columns; then the files named like its outputs are its own.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pandas as pd

from ..results.layout import LOCK, SIMILARITY
from ..results.rundir import wait_for_lock

MARKER = ".layerscope-compare"  # in the output folder: {"files": [...]}, what the last compare wrote there
COMPARE_LOCK = f"{MARKER}{LOCK}"
_STAGING = re.compile(r"^\.layerscope-compare\.\d+-[0-9a-f]{8}\.tmp$")
_OUTPUT = re.compile(r"^(similarity\.csv|probe\.csv|monotonicity\.csv|(cka|probe|attention_distance)[_.][^/]*)$")  # legacy folders
_HEADER = "model_a,layer_a,model_b,layer_b"  # the first columns of the command's similarity.csv


class OutError(ValueError):
    """An ``--out`` the command cannot write into without replacing what is not its own (one line)."""


def _plain(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def own_files(out: Path) -> set[str]:
    """Names of the files in ``out`` that this command wrote (its marker's list; a folder from before the
    marker: the files named like its outputs, when its ``similarity.csv`` is one)."""
    marker = out / MARKER
    if marker.is_file():
        try:
            files = json.loads(marker.read_text()).get("files", [])
        except (OSError, ValueError, AttributeError):  # a damaged marker: nothing counts as its own
            return set()
        return {f for f in files if isinstance(f, str) and _plain(f)}
    try:
        with open(out / SIMILARITY, encoding="utf-8", errors="replace") as f:
            legacy = f.readline().startswith(_HEADER)
    except OSError:
        return set()
    return {p.name for p in out.iterdir() if _OUTPUT.match(p.name) and p.is_file()} if legacy else set()


def _refuse(out: Path, name: str) -> OutError:
    return OutError(f"--out {out}: {out / name} exists and was not written by layerscope-compare; it is left as it is "
                    "(choose another folder)")


def check_out(out: Path, names: Sequence[str]) -> None:
    """Refuse, before any work, an ``out`` that is not a folder or holds a file of ``names`` that is not this
    command's own.

    Raises:
        OutError: the message names the path.
    """
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise OutError(f"--out {out}: exists and is not a folder; expected a folder for the tables and figures "
                       "(nothing was written)")
    if out.is_dir():
        own = own_files(out)
        for name in names:
            if (out / name).exists() or (out / name).is_symlink():
                if name not in own:
                    raise _refuse(out, name)


def _write_marker(out: Path, files: set[str]) -> None:
    tmp = out / f"{MARKER}.tmp"
    tmp.write_text(json.dumps({"written_by": "layerscope-compare", "files": sorted(files)}, indent=1) + "\n")
    tmp.replace(out / MARKER)


class Output:
    """One compare's write into ``out``: figures into ``staging``, then ``commit``.

    Attributes:
        out: the output folder.
        staging: a fresh hidden folder inside it for the figures.
    """

    def __init__(self, out: Path, staging: Path):
        self.out, self.staging = out, staging

    def commit(self, tables: Mapping[str, pd.DataFrame], figures: Sequence[Path]) -> list[Path]:
        """Replace this command's previous outputs in ``out`` by ``tables`` (name -> table, written as CSV)
        and ``figures`` (files in ``staging``), as a set.

        Returns:
            The files written, tables first.

        Raises:
            OutError: one of them would replace a file that is not this command's own (nothing replaced).
        """
        out = self.out
        own = own_files(out)
        names = [*tables, *(p.name for p in figures)]
        for name in names:
            if (out / name).exists() or (out / name).is_symlink():
                if name not in own:
                    raise _refuse(out, name)
        new = set(names)
        _write_marker(out, own | new)  # a cut from here on leaves only files the marker names
        for name in sorted(own - new):  # the previous compare's outputs this one does not replace
            path = out / name
            if path.is_symlink() or path.is_file():
                path.unlink()
        for name, table in tables.items():
            tmp = out / f".{name}.tmp"
            table.to_csv(tmp, index=False)
            tmp.replace(out / name)
        for path in figures:
            path.replace(out / path.name)
        _write_marker(out, new)
        return [out / name for name in names]


@contextmanager
def writing(out: Path) -> Iterator[Output]:
    """Hold ``out`` for one compare's write: the folder made, its lock taken (waiting, with a line on stderr,
    for another compare writing there), what a killed compare left cleaned, a staging folder for the
    figures (removed on leaving, whatever happens).

    Raises:
        OutError: the folder cannot be made or written (a read-only run folder), or a write fails inside
            the block: one line naming it.
    """
    import fcntl

    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / COMPARE_LOCK, "a")
    except OSError as e:
        raise OutError(f"--out {out}: cannot write there ({e.strerror or e}); choose a writable folder with --out "
                       "(nothing was written)") from None
    with handle:
        wait_for_lock(handle, f"waiting for another layerscope-compare writing into {out} ...")
        try:
            for old in out.iterdir():  # staging folders of compares killed before they removed them
                if _STAGING.match(old.name) and old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
            staging = out / f"{MARKER}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
            try:
                staging.mkdir()
            except OSError as e:
                raise OutError(f"--out {out}: cannot write there ({e.strerror or e}); choose a writable folder with "
                               "--out (nothing was written)") from None
            try:
                yield Output(out, staging)
            except OSError as e:  # a full disk, a folder made read-only meanwhile: the earlier outputs stay
                where = f" {e.filename}" if e.filename else ""
                raise OutError(f"--out {out}: cannot write{where} ({e.strerror or e}); its earlier outputs are left "
                               "as they were") from None
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
