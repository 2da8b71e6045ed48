"""Batches taken ahead by a thread (data.prefetch) and a batch's tensors packed across the worker boundary."""
import threading
import time

import pytest
import torch

from layerscope.data.prefetch import Prefetched


def test_batches_come_in_order_and_end_like_the_iterator():
    got = Prefetched(iter(range(7)), ahead=2)
    assert list(got) == list(range(7))
    with pytest.raises(StopIteration):
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
    with pytest.raises(KeyError):
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
    from layerscope.study import _packed, _unpacked

    items = [{"id": "a", "x": torch.rand(3, 4, 4), "mask": torch.rand(4, 4) > 0.5, "valid": None},
             {"id": "bad", "error": "unreadable"},
             {"id": "b", "x": torch.rand(3, 4, 4), "mask": None, "valid": None}]
    expected = [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in item.items()} for item in items]
    batch = _packed([dict(item) for item in items])
    assert sorted(batch["blocks"]) == ["mask", "x"] and batch["blocks"]["x"].shape == (2, 3, 4, 4)
    back = _unpacked(batch)
    assert [sorted(item) for item in back] == [sorted(item) for item in expected]
    for item, want in zip(back, expected):
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(item[key], value)
            else:
                assert item[key] == value
