"""The few-shot protocol's reference draw: which ``n`` defect-free images a method learns from.

A reference method (``patch_knn``) learns from ``n`` normal images per category: MVTec AD's
``train/good``, the folder dataset's ``data.normal_dir``, or clean synthetic crops per texture.
``draw`` picks them by the study's ``seed`` (nested: for one seed, the ``n`` images are the first
``n`` of the ``2n``), and ``without_test_copies`` drops any candidate whose file bytes equal a test
image's, so a reference is never a test image even when a folder was copied into both places.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


def draw(available: int, n: int | None, seed: int, where: str) -> list[int]:
    """Indices of ``n`` of ``available`` pool entries, drawn without replacement by ``seed``.

    The order is a seeded permutation of the pool, so for one seed the draw of ``n`` is the start of
    the draw of any larger ``n`` (shot counts compare on shared images).

    Args:
        available: pool size.
        n: images wanted, or None for the whole pool.
        seed: the study's seed.
        where: the pool, named in the error (e.g. ``.../train/good``).

    Raises:
        ValueError: ``n`` exceeds the pool, naming both.
    """
    if n is not None and int(n) > available:
        raise ValueError(f"method.n_references={n}: {where} holds {available} defect-free images; expected at most "
                         f"{available} (or a larger pool)")
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED])).permutation(available)
    return [int(i) for i in order[: available if n is None else int(n)]]


def _digest(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def without_test_copies(pool: Sequence[Path], test: Sequence[Path]) -> list[Path]:
    """``pool`` without the files that are test images: the same path, or the same bytes as one.

    Args:
        pool: candidate reference files.
        test: the dataset's test image files.

    Returns:
        The pool's other files, in order; a warning names how many were dropped.
    """
    test_paths = {Path(p).resolve() for p in test}
    test_sizes = {Path(p).stat().st_size for p in test}
    suspects = [p for p in pool if Path(p).resolve() not in test_paths and Path(p).stat().st_size in test_sizes]
    # bytes are read only where a copy is possible: files of a size some test image has
    sizes = {Path(p).stat().st_size for p in suspects}
    digests = {_digest(p) for p in test if Path(p).stat().st_size in sizes}
    copies = {Path(p) for p in suspects if _digest(p) in digests}
    kept = [p for p in pool if Path(p).resolve() not in test_paths and Path(p) not in copies]
    dropped = len(pool) - len(kept)
    if dropped:
        log.warning("%d of %d reference images are test images (same file or same bytes) and are left out",
                    dropped, len(pool))
    return kept
