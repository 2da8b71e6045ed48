"""Prepared images, and how a batch of them crosses from a DataLoader worker process to the study.

A worker resizes (and paints, decodes) the images of a batch. Handed over the usual way, each tensor of
the batch is a shared-memory block whose file descriptor the study asks the worker for, in a round trip,
when it unpickles the batch: on a busy machine each round trip waits for the worker to get a core.
``SlotRing`` removes those round trips: blocks for a few batches are allocated once, before the workers
are forked, a worker writes a batch into the slot of its batch number, and only that number and the
items' small fields go through the pipe; the study copies the slot out on arrival.
"""
from __future__ import annotations

import contextlib
import dataclasses
import operator
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from .base import Dataset
from .ids import safe_name
from .images import BadImage
from .transforms import mask_rule_effect, to_input

PACKED = ("x", "mask", "valid")  # an item's tensors, all of one shape per key within a run


@dataclass
class Item:
    """One image prepared for the model, as the study receives it (``Prepared`` makes it, in a worker).

    Attributes:
        id: the image's file-safe name (``data.ids.safe_name`` of the sample's id).
        index: its dataset index, until ``pack`` turns the batch's first into the batch's slot.
        group: the source image, for averaging over objects then images (the id when the sample has none).
        category, source: as the dataset's ``Sample``.
        x: the model's input, (3, S, S) float32 in [0, 1]; inside a packed batch, its row in the batch's block.
        mask: the ground truth on the input grid, (S, S) bool, or None; packed like ``x``.
        valid: (S, S) bool, True where pixels count, or None; packed like ``x``.
        mask_rule: what resizing the mask by the any-pixel rule changed: (defect cells gained over nearest
            resizing, whether nearest resizing would have lost every defect cell).
        error: why the image could not be read; such an item carries only ``index``, ``id`` and this.
    """

    id: str
    index: int | None = None
    group: str = ""
    category: str = ""
    source: str = ""
    x: Any = None
    mask: Any = None
    valid: Any = None
    mask_rule: tuple[int, bool] = (0, False)
    error: str | None = None

    def __reduce__(self) -> tuple:
        # pickled as the class and its values in field order: smaller and faster through the worker's pipe
        # than the default (the class, then a dict of names and values)
        return Item, _values(self)


_values = operator.attrgetter(*(f.name for f in dataclasses.fields(Item)))


class Prepared(torch.utils.data.Dataset):
    """Dataset items resized for the model; runs in DataLoader workers when ``num_workers`` > 0.

    Each item carries its dataset ``index``, which ``pack`` turns into the batch's slot and clears.
    """

    def __init__(self, dataset: Dataset, size: int):
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Item:
        try:
            s = self.dataset[i]
        except BadImage as e:  # the study skips it (or stops, with on_bad_image=fail)
            name = self.dataset.name_of(i)
            return Item(index=i, id=safe_name(name), error=str(e))
        x, mask, valid = to_input(s, self.size)
        sid = safe_name(s.id)
        rule = mask_rule_effect(s.mask, mask, self.size) if mask is not None else (0, False)
        return Item(index=i, id=sid, group=s.group or sid, category=s.category, source=s.source, x=x, mask=mask,
                    valid=valid, mask_rule=rule)


SHM = Path("/dev/shm")


@contextlib.contextmanager
def no_leftover_segments() -> Iterator[None]:
    """Remove the shared-memory files this process made inside the block when the block fails.

    ``Tensor.share_memory_`` creates ``/dev/shm/torch_<pid>_*`` and then sizes it; where sizing fails
    (a file-size limit, ``ulimit -f``; a full ``/dev/shm``) torch raises and leaves the empty file behind,
    after the run too. Only this process's files that appeared inside the block are removed.
    """
    pattern = f"torch_{os.getpid()}_*"
    before = set(SHM.glob(pattern)) if SHM.is_dir() else set()
    try:
        yield
    except BaseException:
        for path in (set(SHM.glob(pattern)) - before) if SHM.is_dir() else ():
            with contextlib.suppress(OSError):
                path.unlink()
        raise


class SlotRing:
    """Shared-memory blocks for ``slots`` batches of prepared images, made before the workers start.

    Batch ``k`` (of ``batch_size`` consecutive dataset items) goes to slot ``k % slots``. A DataLoader keeps
    at most ``prefetch_factor x num_workers`` batches in flight beyond the one the study has just received,
    and ``unpack`` copies a batch out of its slot on arrival, so ``slots`` = that number + 2 never lets a
    worker write a slot the study is still reading.

    Args:
        batch_size: images per batch.
        size: their side in pixels.
        slots: batches held.

    Raises:
        RuntimeError (or OSError): shared memory cannot hold the blocks (a small or full ``/dev/shm``).
    """

    def __init__(self, batch_size: int, size: int, slots: int):
        self.batch_size, self.slots = batch_size, slots
        shapes = {"x": ((3, size, size), torch.float32), "mask": ((size, size), torch.bool),
                  "valid": ((size, size), torch.bool)}
        with no_leftover_segments():
            self.blocks = {key: torch.empty((slots, batch_size, *shape), dtype=dtype).share_memory_()
                           for key, (shape, dtype) in shapes.items()}

    def fits(self, key: str, value: torch.Tensor) -> bool:
        block = self.blocks[key]
        return value.shape == block.shape[2:] and value.dtype == block.dtype


def pack(items: list[Item], ring: SlotRing | None = None) -> dict:
    """A batch as it crosses from a DataLoader worker (the ``collate_fn``).

    Each of ``PACKED`` goes into the ring's slot for this batch, or, without a ring (or for a tensor of
    another shape), is stacked into one block: the study then receives a few shared-memory blocks, not a
    few per image. The items keep their row in the block (or None).
    """
    first = min((item.index for item in items if item.index is not None), default=None)
    for item in items:
        item.index = None
    slot = first // ring.batch_size % ring.slots if ring is not None and first is not None else None
    blocks: dict[str, Any] = {}
    for key in PACKED:
        have = [i for i, item in enumerate(items) if getattr(item, key) is not None]
        if not have:
            continue
        values = [getattr(items[i], key) for i in have]
        if slot is not None and len(values) <= ring.batch_size and all(ring.fits(key, v) for v in values):
            torch.stack(values, out=ring.blocks[key][slot, :len(values)])
            blocks[key] = (slot, len(values))
        else:
            blocks[key] = torch.stack(values)
        for row, i in enumerate(have):
            setattr(items[i], key, row)
    return {"items": items, "blocks": blocks}


def unpack(batch: Mapping, ring: SlotRing | None = None) -> list[Item]:
    """``pack``'s items with their tensors back: views of the batch's blocks, or of copies of its slots.

    A slot is copied by NumPy, on this thread alone: ``Tensor.clone`` splits a copy this size over the
    intra-op threads, and on a busy machine waits for the one whose core is taken (measured: 15 ms a batch
    against 0.3 ms).
    """
    blocks = {key: torch.from_numpy(ring.blocks[key][block[0], :block[1]].numpy().copy())
              if isinstance(block, tuple) else block for key, block in batch["blocks"].items()}
    for item in batch["items"]:
        for key, block in blocks.items():
            row = getattr(item, key)
            if row is not None:
                setattr(item, key, block[row])
    return batch["items"]
