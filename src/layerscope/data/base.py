"""The record every dataset yields, and what the study asks of a dataset."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class Sample:
    """One image with its optional ground-truth mask.

    Attributes:
        id: unique, filesystem-safe name of the image within its dataset.
        image: RGB image, (H, W, 3) uint8.
        mask: ground truth, (H, W) bool, or None where the dataset has no mask.
        category: defect type or object class ("" when unknown).
        source: where the image came from (texture name, file path, ...).
        ignore: (H, W) bool, True where pixels count for no metric (VOC's object
            borders), or None.
        group: the source image when one image yields several samples (one per
            VOC object), so results average over objects, then images; "" otherwise.
    """

    id: str
    image: np.ndarray
    mask: np.ndarray | None = None
    category: str = ""
    source: str = ""
    ignore: np.ndarray | None = None
    group: str = ""


@runtime_checkable
class Dataset(Protocol):
    """What a study asks of a dataset (``data=`` builds one from its config's ``_target_``).

    The optional capabilities are members every dataset has, so callers ask, never probe:
    ``has_references`` says whether ``references`` gives normal images, and ``name_of`` names an
    item that could not be read. ``DatasetBase`` gives the defaults (no references, items named
    by index).

    Attributes:
        has_references: whether ``references`` gives defect-free images (for methods that learn
            from normal images, ``patch_knn``).
    """

    has_references: bool

    def __len__(self) -> int:
        """Number of items."""

    def __getitem__(self, i: int) -> Sample:
        """Item ``i``; raises ``data.images.BadImage`` for an unreadable file."""

    def name_of(self, i: int) -> str:
        """What item ``i`` is, for a message about it when it cannot be read (a file path)."""

    def references(self, n: int | None, seed: int = 0) -> list[Sample]:
        """``n`` defect-free images per category drawn by ``seed`` (None: all there are), when
        ``has_references``; never a test item (``data.references``)."""


class DatasetBase:
    """The defaults of ``Dataset``'s optional capabilities: no reference images, items named by index."""

    has_references = False

    def name_of(self, i: int) -> str:
        return f"item {i}"

    def references(self, n: int | None, seed: int = 0) -> list[Sample]:
        raise ValueError(f"{type(self).__name__} has no defect-free reference images")


def check_dataset(dataset: object) -> Dataset:
    """``dataset`` when it is a ``Dataset``, else ValueError naming what it lacks (a ``data._target_`` of one's own).

    Raises:
        ValueError: one line naming the class and its missing members.
    """
    if isinstance(dataset, Dataset):
        return dataset
    missing = [m for m in ("__len__", "__getitem__", "has_references", "name_of", "references")
               if not hasattr(dataset, m)]
    raise ValueError(f"data: {type(dataset).__name__} is not a dataset: it lacks {', '.join(missing)}; subclass "
                     "layerscope.data.base.DatasetBase for the optional ones")
