"""Batches taken ahead by a thread (data.prefetch) and a batch's tensors packed across the worker boundary."""
import copy
import threading
import time

import pytest
import torch

from layerscope.data.prefetch import Prefetched


def test_batches_come_in_order_and_end_like_the_iterator():
    got = Prefetched(iter(range(7)), ahead=2)
    assert list(got) == list(range(7))
    with pytest.raises(StopIteration, match="^$"):
        next(got)  # a spent iterator stays spent


def test_an_error_is_raised_in_the_callers_thread_in_its_place():
    def batches():
        yield 1
        yield 2
        raise KeyError("bad batch")

    got = Prefetched(batches())
    assert next(got) == 1 and next(got) == 2
    with pytest.raises(KeyError, match="bad batch"):
        next(got)
    with pytest.raises(KeyError, match="bad batch"):
        next(got)


def test_close_stops_the_thread_that_waits_for_room():
    taken = []

    def endless():
        while True:
            taken.append(len(taken))
            yield taken[-1]

    got = Prefetched(endless(), ahead=1)
    assert next(got) == 0
    got.close()
    deadline = time.monotonic() + 10
    while got._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not got._thread.is_alive()
    assert len(taken) <= 3  # it took at most one batch beyond the queue's room before it stopped
    assert "layerscope-data" not in [t.name for t in threading.enumerate()]


def test_packed_batches_hand_back_each_items_tensors():
    """A batch with an unreadable item and an item without a mask crosses a pickle (the worker's pipe) and
    comes back field for field."""
    import copy
    import dataclasses
    import pickle

    from layerscope.data.handover import Item, pack as _packed, unpack as _unpacked

    items = [Item(id="a", index=4, x=torch.rand(3, 4, 4), mask=torch.rand(4, 4) > 0.5, category="c", mask_rule=(2, True)),
             Item(id="bad", index=5, error="unreadable"),
             Item(id="b", index=6, x=torch.rand(3, 4, 4), group="g", source="s")]
    expected = [dataclasses.replace(copy.deepcopy(item), index=None) for item in items]
    batch = pickle.loads(pickle.dumps(_packed([copy.copy(item) for item in items])))
    assert sorted(batch["blocks"]) == ["mask", "x"] and batch["blocks"]["x"].shape == (2, 3, 4, 4)
    assert [item.x for item in batch["items"]] == [0, None, 1]  # rows of the block, not tensors
    back = _unpacked(batch)
    assert all(isinstance(item, Item) for item in back)
    for item, want in zip(back, expected):
        for field in dataclasses.fields(Item):
            value, wanted = getattr(item, field.name), getattr(want, field.name)
            if isinstance(wanted, torch.Tensor):
                assert torch.equal(value, wanted), field.name
            else:
                assert value == wanted, field.name


def _items(indices, size=4, seed=0):
    from layerscope.data.handover import Item

    g = torch.Generator().manual_seed(seed)
    return [Item(index=i, id=f"im{i}", x=torch.rand(3, size, size, generator=g),
                 mask=torch.rand(size, size, generator=g) > 0.5) for i in indices]


def test_a_ring_slot_hands_back_copies_that_outlive_the_slots_reuse():
    """A worker writes batch k into slot k % slots and sends only its number; the study's copy of a batch
    stays intact when a later batch reuses the slot."""
    from layerscope.data.handover import SlotRing, pack, unpack

    ring = SlotRing(batch_size=2, size=4, slots=2)
    first = _items([0, 1])
    want = [{"x": item.x.clone(), "mask": item.mask.clone()} for item in first]
    batch = pack([copy.copy(item) for item in first], ring)
    assert batch["blocks"] == {"x": (0, 2), "mask": (0, 2)}  # numbers only: no tensor crosses the pipe
    assert all(item.index is None for item in batch["items"])
    got = unpack(batch, ring)
    third = pack(_items([4, 5], seed=1), ring)  # batch 2: slot 0 again
    assert third["blocks"]["x"] == (0, 2) and not torch.equal(ring.blocks["x"][0, 0], want[0]["x"])
    for item, expected in zip(got, want):
        assert item.valid is None
        for key, value in expected.items():
            assert torch.equal(getattr(item, key), value)
    assert pack(_items([2, 3]), ring)["blocks"]["x"] == (1, 2)  # batch 1: slot 1


def test_a_tensor_the_ring_cannot_hold_crosses_as_a_block():
    from layerscope.data.handover import SlotRing, pack, unpack

    ring = SlotRing(batch_size=2, size=4, slots=2)
    items = _items([0, 1], size=6)  # another size than the ring's
    want = [item.x.clone() for item in items]
    batch = pack([copy.copy(item) for item in items], ring)
    assert isinstance(batch["blocks"]["x"], torch.Tensor) and batch["blocks"]["x"].shape == (2, 3, 6, 6)
    assert all(torch.equal(item.x, x) for item, x in zip(unpack(batch, ring), want))


def test_worker_batches_through_the_ring_equal_the_study_process_own(monkeypatch):
    """Two workers, more batches than slots (each slot reused), a last batch shorter: the same items, in
    order, as preparing them in the study's process."""
    from omegaconf import OmegaConf

    from layerscope.data.synthetic import SyntheticDefects
    from layerscope.data.loading import image_batches

    dataset = SyntheticDefects(textures=["brick", "moon"], defects=["spot", "crack"], per_combination=5, size=32)
    monkeypatch.setattr("layerscope.data.loading.usable_cores", lambda: 4)
    got = {}
    for workers in (0, 2):
        cfg = OmegaConf.create({"batch_size": 3, "num_workers": workers})
        batches, started = image_batches(cfg, dataset, 32, torch.device("cpu"))
        assert started == workers
        got[workers] = [item for batch in batches for item in batch]
    assert len(got[0]) == 20 and [i.id for i in got[0]] == [i.id for i in got[2]]
    for a, b in zip(got[0], got[2]):
        assert torch.equal(a.x, b.x) and torch.equal(a.mask, b.mask) and a.mask_rule == b.mask_rule


def test_workers_without_room_for_the_ring_hand_batches_over_block_by_block(monkeypatch, caplog):
    """A /dev/shm too small for the ring of slots (but big enough for one batch): the workers still run, and each
    batch crosses in shared blocks of its own."""
    from omegaconf import OmegaConf

    from layerscope.data import loading
    from layerscope.data.synthetic import SyntheticDefects

    def no_room(*args, **kwargs):
        raise RuntimeError("unable to resize file </torch_9> to the right size: No space left on device (28)")

    dataset = SyntheticDefects(textures=["brick"], defects=["spot", "crack"], per_combination=2, size=32)
    monkeypatch.setattr("layerscope.data.loading.usable_cores", lambda: 4)
    monkeypatch.setattr(loading, "SlotRing", no_room)
    with caplog.at_level("INFO"):
        batches, workers = loading.image_batches(OmegaConf.create({"batch_size": 3, "num_workers": "auto"}), dataset,
                                                 32, torch.device("cpu"))
        items = [item for batch in batches for item in batch]
    assert workers == 2 and "one shared block at a time (unable to resize file" in caplog.text
    assert [item.id for item in items] == [dataset[i].id for i in range(4)]
    assert all(item.x.shape == (3, 32, 32) and item.mask.shape == (32, 32) for item in items)


def test_close_ends_the_thread_and_the_worker_processes_before_it_returns(monkeypatch):
    """Leaving early (Ctrl-C): ``close()`` returns only once the thread has left the DataLoader and its
    worker processes have exited, so no thread is inside torch's code while the interpreter finalises."""
    import multiprocessing

    from omegaconf import OmegaConf

    from layerscope.data.synthetic import SyntheticDefects
    from layerscope.data.loading import image_batches

    dataset = SyntheticDefects(textures=["brick", "moon"], defects=["spot", "crack"], per_combination=5, size=32)
    monkeypatch.setattr("layerscope.data.loading.usable_cores", lambda: 4)
    before = set(multiprocessing.active_children())
    batches, workers = image_batches(OmegaConf.create({"batch_size": 2, "num_workers": 2}), dataset, 32,
                                     torch.device("cpu"))
    assert workers == 2 and len(set(multiprocessing.active_children()) - before) == 2
    got = Prefetched(batches, ahead=1)
    assert len(next(got)) == 2
    got.close()  # no polling: the join is close()'s own
    assert not got._thread.is_alive()
    assert set(multiprocessing.active_children()) - before == set()
