"""The study's fast paths: rows that do not depend on how images are batched, and exact shortcuts.

- ``scoring.batch_image_rows`` (a batch at once, NumPy sorts where they are exact) must give each image's
  rows scored alone (``scoring.image_rows``, a batch of one) exactly on the CPU; its device route (``torch.sort`` and the full
  upsample, what a GPU runs) is checked on CPU tensors, and on CUDA when present, to 1e-6.
- ``pointing_game_tolerance_fast`` must give ``pointing_game_tolerance``'s values exactly.
- ``MaskCells`` must give ``cells_from_mask``'s counts exactly; ``sort_rows`` ``torch.sort``'s values.
- the saved-maps writer, the threaded background writer and ``num_workers`` change no result.
"""
from __future__ import annotations

import math
import threading
import zipfile

import numpy as np
import pytest
import torch

from layerscope.metrics.localization import MaskCells, cells_from_mask
from layerscope.metrics.tolerant_pointing import pointing_game_tolerance, pointing_game_tolerance_fast
from layerscope.metrics.kept_pixels import sort_rows
from layerscope.scoring import ScoreOptions, Target, batch_image_rows, image_rows

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---------------------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------------------
def _maps(g: torch.Generator, b: int, k: int, grid: tuple[int, int], kind: str) -> torch.Tensor:
    """(B, K, h, w) maps: smooth and peaked, with ties (pairs, triples, blocks), signed, all-zero, constant, NaN."""
    m = torch.rand(b, k, *grid, generator=g)
    if kind == "continuous":
        return torch.exp(6 * m)  # peaked, no ties (a float collision is possible but harmless: then it is a tie)
    if kind == "ties":
        m = (m * 6).round() / 6  # large tie groups that every threshold splits
        m[:, 1] = torch.rand(b, *grid, generator=g)
        m[:, 1, 0, :2] = m[:, 1, 1, 1:3]  # a few pairs of equal values in an otherwise tie-free map
    if kind == "mixed":
        m[0, 0] = 0.0  # no mass
        m[1 % b, 1] = 0.25  # constant
        m[:, 2] = m[:, 2] - 0.4  # signed: keep_mass shifts it, and the rank metrics sort it again
        m[-1, 3, 0, 0] = float("nan")
    return m


def _target(kind: str, size: int, g: torch.Generator) -> Target | None:
    if kind == "none":
        return None
    mask = torch.zeros(size, size, dtype=torch.bool)
    valid = None
    if kind in ("regions", "ignored"):
        mask[2:size // 3, 3:size // 2] = True
        mask[size // 2:size - 3, size // 2 + 2:size - 2] = True
        mask |= torch.rand(size, size, generator=g) > 0.985
        if kind == "ignored":
            valid = torch.rand(size, size, generator=g) > 0.2
            valid[:, :2] = False
    elif kind == "full":
        mask[:] = True
    elif kind == "tiny":
        mask[size // 2, size // 2] = True
    return Target(mask, valid)


def _same(a, b, tol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        a, b = float(a), float(b)
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol * max(1.0, abs(b))
    return a == b


def _assert_same_rows(ours: list[list[dict]], ref: list[list[dict]], tol: float = 0.0) -> None:
    assert [len(r) for r in ours] == [len(r) for r in ref]
    for image_ours, image_ref in zip(ours, ref):
        for a, b in zip(image_ours, image_ref):
            assert set(a) == set(b)  # the same columns (results.csv orders them)
            bad = {c: (a[c], b[c]) for c in b if not _same(a[c], b[c], tol)}
            assert not bad, f"image {b['image']} layer {b['layer']} head {b['head']} @ {b['threshold']}: {bad}"


def _reference(metas, maps, names, targets, opts, extras=None):
    extras = extras or [None] * len(metas)
    return [image_rows(meta, {layer: m[i].cpu() for layer, m in maps.items()}, names, targets[i], opts, extras[i])
            for i, meta in enumerate(metas)]


NAMES = ["0", "1", "2", "3", "4", "mean"]


# ---------------------------------------------------------------------------------------------------------------
# batch_image_rows == image_rows
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["continuous", "ties", "mixed"])
@pytest.mark.parametrize("rule,thresholds", [("keep_mass", [0.6]), ("keep_mass", [0.0, 0.3, 0.6, 0.9, 1.0]),
                                             ("minmax", [0.0, 0.5, 1.0])])
@pytest.mark.parametrize("threads", [1, 8])  # 8: three grids on threads, each split into runs of 2 images
def test_batch_rows_equal_image_rows_exactly(kind, rule, thresholds, threads):
    g = torch.Generator().manual_seed(hash((kind, rule, len(thresholds))) % 1000)
    targets = [_target(t, 56, g) for t in ("regions", "none", "empty", "full", "ignored", "tiny")]
    b = len(targets)
    # two grids (one of them shared by two layers, one block), one layer in float64 (its own block)
    maps = {0: _maps(g, b, 6, (14, 14), kind), 1: _maps(g, b, 6, (7, 7), kind), 2: _maps(g, b, 6, (14, 14), kind),
            3: _maps(g, b, 6, (7, 7), kind).double()}
    names = {layer: NAMES for layer in maps}
    metas = [{"image": f"im{i}", "model": "m"} for i in range(b)]
    opts = ScoreOptions(thresholds, rule, "nearest", fpr_limit=0.3, topk=0.05, pointing_tolerance=3)
    ours = batch_image_rows(metas, maps, names, targets, opts, threads=threads)
    _assert_same_rows(ours, _reference(metas, maps, names, targets, opts))


@pytest.mark.slow
def test_batch_rows_of_large_maps_with_float_collisions_equal_image_rows():
    """Large grids (112 x 112, 32 x 32 at 448 px) take NumPy's sort and the fast pointing game; pairs of equal
    values that a threshold cuts between must still be kept as ``torch.sort`` orders them."""
    g = torch.Generator().manual_seed(7)
    targets = [_target("regions", 224, g), _target("tiny", 224, g)]
    big = torch.rand(2, 3, 112, 112, generator=g)
    big = (big * 2 ** 12).round() / 2 ** 12  # 4096 levels over 12544 cells: many pairs, some triples
    maps = {0: big, 1: torch.exp(8 * torch.rand(2, 84, 16, 16, generator=g))}
    names = {0: ["a", "b", "c"], 1: [str(i) for i in range(84)]}
    metas = [{"image": "x"}, {"image": "y"}]
    for opts in (ScoreOptions([0.1, 0.5, 0.6, 0.9]), ScoreOptions([0.2, 0.7], "minmax")):
        _assert_same_rows(batch_image_rows(metas, maps, names, targets, opts),
                          _reference(metas, maps, names, targets, opts))


def test_batch_rows_bilinear_and_extra_columns_equal_image_rows():
    g = torch.Generator().manual_seed(3)
    targets = [_target("regions", 28, g), _target("none", 28, g)]
    maps = {0: _maps(g, 2, 6, (7, 7), "mixed"), 1: _maps(g, 2, 6, (7, 7), "continuous")}
    names = {layer: NAMES for layer in maps}
    extras = [{0: {"deletion_auc": torch.arange(6.0)}, 1: {"deletion_auc": torch.ones(6)}}, None]
    metas = [{"image": "a"}, {"image": "b"}]
    for mode in ("nearest", "bilinear"):
        opts = ScoreOptions([0.5], upsample=mode)
        _assert_same_rows(batch_image_rows(metas, maps, names, targets, opts, extras),
                          _reference(metas, maps, names, targets, opts, extras))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threads", [1, 2])  # 2: the one grid's images in two runs
def test_device_route_agrees_with_the_cpu_scorer(device, threads):
    """What a GPU runs (``torch.sort`` everywhere, the full upsample for the pointing game, every step on the
    device) against ``image_rows`` on the CPU: the same numbers to 1e-6. Continuous maps: among exactly equal
    cells, which ones a threshold keeps is the sort's choice, and a GPU sort may choose others."""
    g = torch.Generator().manual_seed(11)
    targets = [_target(t, 112, g) for t in ("regions", "ignored", "none", "empty")]
    maps = {layer: _maps(g, 4, 7, (16, 16), "continuous") for layer in range(3)}
    maps[3] = _maps(g, 4, 7, (16, 16), "continuous") - 200.0  # signed
    names = {layer: NAMES + ["x"] for layer in maps}
    metas = [{"image": f"im{i}"} for i in range(4)]
    opts = ScoreOptions([0.3, 0.6], pointing_tolerance=15)
    on_device = {layer: m.to(device) for layer, m in maps.items()}
    ours = batch_image_rows(metas, on_device, names, targets, opts, cpu_shortcuts=False, threads=threads)
    _assert_same_rows(ours, _reference(metas, maps, names, targets, opts), tol=1e-6)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_score_units_cover_every_layer_and_image_once(threads):
    from layerscope.scoring.scorer import _units

    for blocks in ([[0, 2], [1]], [[0, 1, 2]]):
        units = _units(blocks, 5, threads)
        pairs = [(layer, b) for layers, images in units for layer in layers for b in images]
        assert sorted(pairs) == sorted((layer, b) for layers in blocks for layer in layers for b in range(5))
        assert all(images == list(range(images[0], images[-1] + 1)) for _, images in units)  # runs
        assert len(units) == (len(blocks) if threads == 1 or len(blocks) >= threads
                              else len(blocks) * min(5, -(-threads // len(blocks))))


def test_map_threads_keeps_the_order_runs_one_intra_op_thread_and_raises_here():
    from layerscope.runtime import map_threads

    before = torch.get_num_threads()

    def work(i):
        if i == 5:
            raise KeyError("item 5")
        return i * i, torch.get_num_threads(), threading.current_thread().name

    got = map_threads(work, list(range(5)), 3)
    assert [r[0] for r in got] == [0, 1, 4, 9, 16] and {r[1] for r in got} == {1}
    assert all(name.startswith("layerscope-score") for _, _, name in got)
    with pytest.raises(KeyError, match="item 5"):
        map_threads(work, list(range(7)), 3)
    assert torch.get_num_threads() == before  # the caller's count is back


def test_batch_rows_check_the_shapes():
    with pytest.raises(ValueError, match=r"expected maps \(B=2, K=6, h, w\) at layer 0, got \(2, 5, 7, 7\)"):
        batch_image_rows([{}, {}], {0: torch.rand(2, 5, 7, 7)}, {0: NAMES}, [None, None], ScoreOptions([0.5]))


# ---------------------------------------------------------------------------------------------------------------
# The pieces
# ---------------------------------------------------------------------------------------------------------------
def _pointing_cases():
    g = torch.Generator().manual_seed(0)
    for (h, w), (big_h, big_w) in [((32, 32), (448, 448)), ((7, 7), (224, 224)), ((5, 9), (37, 101)),
                                   ((16, 16), (16, 16)), ((14, 14), (224, 224))]:
        for kind in ("uniform", "signed", "ties", "peaked", "twin peaks"):
            v = torch.rand(12, h * w, generator=g)
            if kind == "signed":
                v = torch.randn(12, h * w, generator=g)
            elif kind == "ties":
                v = (v * 4).floor()
            elif kind == "peaked":
                v = torch.exp(12 * v)
            elif kind == "twin peaks":  # two equal maxima far apart: a tie the fast path must hand back
                v = v * 0.5
                v[:, 0] = v[:, -1] = 1.0
            v[0] = 0.0
            v[1] = 1.0
            v[2, 3] = float("nan")
            mask = torch.zeros(big_h, big_w, dtype=torch.bool)
            cy, cx = int(torch.randint(0, big_h, (1,), generator=g)), int(torch.randint(0, big_w, (1,), generator=g))
            mask[max(0, cy - 9):cy + 9, max(0, cx - 2):cx + 2] = True
            mask[:2, :2] = kind == "twin peaks"  # beside one of the twins only
            yield v, mask, (h, w)


@pytest.mark.slow
@pytest.mark.parametrize("tolerance", [0, 2.5, 15])
def test_fast_pointing_game_equals_the_full_upsample(tolerance):
    for v, mask, grid in _pointing_cases():
        ref = pointing_game_tolerance(v, mask, grid, tolerance)
        ours = pointing_game_tolerance_fast(v, mask, grid, tolerance)
        assert torch.equal(ref.isnan(), ours.isnan()) and torch.equal(ref.nan_to_num(-1), ours.nan_to_num(-1)), grid
    empty = torch.zeros(20, 20, dtype=torch.bool)
    assert pointing_game_tolerance_fast(torch.rand(2, 3, 16), empty, (4, 4)).isnan().all()
    with pytest.raises(ValueError, match="metrics.pointing_tolerance=-1"):
        pointing_game_tolerance_fast(torch.rand(2, 16), empty, (4, 4), -1)


@pytest.mark.parametrize("grid, size", [((5, 5), (15, 15)), ((20, 20), (15, 15)), ((1, 8), (64, 64)),
                                        ((6, 4), (45, 23))])
def test_fast_pointing_game_on_odd_scales_equals_the_full_upsample(grid, size):
    """Scales where a cell is read by three runs of pixels (an odd factor), by one pixel or by none (a shrink)."""
    g = torch.Generator().manual_seed(4)
    n = grid[0] * grid[1]
    for v in (torch.rand(6, n, generator=g), torch.softmax(torch.randn(6, n, generator=g) * 3, -1),
              (torch.rand(6, n, generator=g) * 3).round() - 1):
        mask = torch.rand(size, generator=g) > 0.97
        for tolerance in (0, 2.5):
            ref = pointing_game_tolerance(v, mask, grid, tolerance)
            assert torch.equal(pointing_game_tolerance_fast(v, mask, grid, tolerance), ref)


@pytest.mark.slow
@pytest.mark.parametrize("fast", [True, False, None])
def test_batched_pointing_game_equals_one_image_at_a_time(fast):
    from layerscope.metrics.tolerant_pointing import pointing_game_tolerance_batch

    cases = list(_pointing_cases())[:5]  # one grid, five kinds of maps, five masks (one image each)
    scores = torch.stack([v for v, _, _ in cases])
    masks = torch.stack([m for _, m, _ in cases])
    masks[3] = False  # an image without mask pixels: NaN for its maps
    ours = pointing_game_tolerance_batch(scores, masks, cases[0][2], 15, fast=fast)
    ref = torch.stack([pointing_game_tolerance(v, m, cases[0][2], 15) for v, m in zip(scores, masks)])
    assert torch.equal(ref.isnan(), ours.isnan()) and torch.equal(ref.nan_to_num(-1), ours.nan_to_num(-1))
    assert ours[3].isnan().all()


def test_fast_pointing_game_on_real_attention_maps_uses_no_full_upsample(monkeypatch):
    """Peaked maps (softmax attention) need no fallback: that is where the time goes."""
    import layerscope.metrics.tolerant_pointing as pointing

    g = torch.Generator().manual_seed(5)
    v = torch.softmax(torch.randn(84, 1024, generator=g) * 3, -1)
    mask = torch.zeros(448, 448, dtype=torch.bool)
    mask[100:160, 200:230] = True
    ref = pointing_game_tolerance(v, mask, (32, 32), 15)
    monkeypatch.setattr(pointing, "_upsampled_hits", lambda *a, **k: pytest.fail("fell back"))
    assert torch.equal(pointing.pointing_game_tolerance_fast(v, mask, (32, 32), 15), ref)


@pytest.mark.slow
def test_mask_cells_equal_cells_from_mask():
    g = torch.Generator().manual_seed(1)
    for size in ((224, 224), (37, 101), (5, 5)):
        for kind in ("empty", "regions", "full", "valid"):
            mask = torch.zeros(size, dtype=torch.bool)
            valid = None
            if kind in ("regions", "valid"):
                for _ in range(3):
                    y = int(torch.randint(0, size[0], (1,), generator=g))
                    x = int(torch.randint(0, size[1], (1,), generator=g))
                    mask[y:y + 9, x:x + 4] = True
                valid = torch.rand(size, generator=g) > 0.1 if kind == "valid" else None
            elif kind == "full":
                mask[:] = True
            cells = MaskCells(mask, valid)
            for grid in ((7, 7), (14, 14), (32, 32), (3, 9), size):
                a, b = cells.at(grid), cells_from_mask(mask, grid, valid)
                assert torch.equal(a.pos, b.pos) and torch.equal(a.neg, b.neg) and torch.equal(a.regions, b.regions)


def test_mask_cells_number_many_regions_as_cells_from_mask():
    """Regions labelled within the mask's bounding box: the same labels, in the same order, as on the image."""
    g = torch.Generator().manual_seed(6)
    for size, share in (((64, 48), 0.97), ((31, 77), 0.9), ((40, 40), 0.5)):
        mask = torch.zeros(size, dtype=torch.bool)  # many small regions, some joined only diagonally, in a box
        mask[4:-3, 6:-2] = torch.rand(size, generator=g)[4:-3, 6:-2] > share
        mask[5:9, 7:30] = True
        for valid in (None, torch.rand(size, generator=g) > 0.2):
            cells = MaskCells(mask, valid)
            for grid in ((7, 7), (8, 6), size):
                a, b = cells.at(grid), cells_from_mask(mask, grid, valid)
                assert torch.equal(a.pos, b.pos) and torch.equal(a.neg, b.neg) and torch.equal(a.regions, b.regions)


def test_finite_maps_flag_every_map_holding_a_nan_or_an_infinity():
    """``finite_maps`` finds the non-finite maps from their extremes: ``isfinite(...).all()``'s answer."""
    from layerscope.scoring.scorer import finite_maps

    g = torch.Generator().manual_seed(8)
    maps = torch.randn(3, 5, 6, 7, generator=g)
    for (b, k), value in zip([(0, 1), (1, 2), (2, 3), (2, 4)],
                             [float("nan"), float("inf"), float("-inf"), -float("nan")]):
        maps[b, k, b + 1, k] = value
    clean, bad = finite_maps({0: maps, 3: maps.double()})
    for layer in (0, 3):
        assert torch.equal(bad[layer], ~torch.isfinite(maps).flatten(-2).all(-1))
        assert torch.isfinite(clean[layer]).all() and not clean[layer][bad[layer]].any()


def test_target_counts_from_its_cells_equal_the_image_sized_ones():
    """``Target.fraction`` and ``has_pixels`` read the mask's cells and bytes: the image-sized formulas' values."""
    g = torch.Generator().manual_seed(7)
    for size, share in (((37, 101), 0.5), ((64, 64), 0.999), ((5, 5), 2.0), ((1, 1), 0.0)):
        mask = torch.rand(size, generator=g) > share
        for valid in (None, torch.rand(size, generator=g) > 0.3):
            counted = valid if valid is not None else torch.ones_like(mask)
            target = Target(mask, valid)
            assert target.fraction == float((mask & counted).sum() / counted.sum().clamp_min(1))
            assert target.has_pixels == bool(mask.any())


def test_sort_rows_gives_torch_sort_values_and_a_sorting_order():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(40, 300, generator=g)
    x[:10] = (x[:10] * 50).round()  # triples and more: torch.sort's own order
    x[10:20, :2] = x[10:20, 2:4]  # pairs: NumPy's order
    x[20, 5] = float("nan")
    for rows in (x, x.double(), x[20:]):
        values, order, ties, own = sort_rows(rows)
        ref_values, ref_order = torch.sort(rows, dim=-1)
        assert torch.equal(values.nan_to_num(7), ref_values.nan_to_num(7))
        assert torch.equal(rows.gather(1, order).nan_to_num(7), ref_values.nan_to_num(7))
        assert torch.equal(order[own], ref_order[own])  # rows with larger ties: exactly torch.sort's permutation
        assert torch.equal(ties, (ref_values[:, 1:] == ref_values[:, :-1]).any(-1) | ref_values[:, -1].isnan())


def test_saved_maps_store_floats_and_deflate_the_image(tmp_path):
    from layerscope.results.maps_io import load_maps, save_maps

    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[3:9, 4:20] = True
    maps = {0: np.random.default_rng(1).random((3, 8, 8), dtype=np.float32), 5: np.zeros((3, 8, 8), np.float32)}
    path = tmp_path / "a.npz"
    save_maps(path, image, mask, maps, {0: ["a", "b", "c"], 5: ["a", "b", "c"]}, {"image": "a"})
    back = load_maps(path)
    assert np.array_equal(back["image"], image) and np.array_equal(back["mask"], mask)
    assert all(np.array_equal(back["maps"][k], v) for k, v in maps.items()) and back["meta"] == {"image": "a"}
    with zipfile.ZipFile(path) as z:
        kinds = {i.filename: i.compress_type for i in z.infolist()}
    assert kinds["layer_0.npy"] == zipfile.ZIP_STORED and kinds["image.npy"] == zipfile.ZIP_DEFLATED


@pytest.mark.parametrize("route", ["isal", "zlib", "zip64"])
def test_saved_maps_zip_is_a_valid_npz_on_every_route(tmp_path, monkeypatch, route):
    """``write_npz`` writes the zip itself: ``zipfile`` finds every entry intact (CRCs checked) and ``np.load``
    gives the arrays back, with ISA-L's deflate, with zlib's where isal is missing, and through ``zipfile``'s
    ZIP64 past the plain format's size limit (made small here)."""
    import builtins

    from layerscope.results import maps_io

    if route == "zlib":
        real_import = builtins.__import__

        def no_isal(name, *args, **kwargs):
            if name == "isal" or name.startswith("isal."):
                raise ImportError(name)
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_isal)
    if route == "zip64":
        monkeypatch.setattr(maps_io, "_ZIP32", 1000)
    rng = np.random.default_rng(2)
    arrays = {"layer_0": rng.random((4, 16, 16), dtype=np.float32),
              "image": rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), "mask": rng.random((48, 48)) < 0.2,
              "meta": np.frombuffer(b'{"names": {}}', dtype=np.uint8)}
    path = tmp_path / "a.npz"
    maps_io.write_npz(path, arrays)
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        kinds = {i.filename: i.compress_type for i in z.infolist()}
    assert kinds == {"layer_0.npy": zipfile.ZIP_STORED, "image.npy": zipfile.ZIP_DEFLATED,
                     "mask.npy": zipfile.ZIP_DEFLATED, "meta.npy": zipfile.ZIP_DEFLATED}
    with np.load(path, allow_pickle=False) as back:
        assert sorted(back.files) == sorted(arrays)
        assert all(back[k].dtype == v.dtype and np.array_equal(back[k], v) for k, v in arrays.items())
    if route != "zip64":  # the same arrays, the same bytes (no time stamp of the moment)
        again = tmp_path / "b.npz"
        maps_io.write_npz(again, arrays)
        assert again.read_bytes() == path.read_bytes()


def test_threaded_writer_marks_images_done_in_submission_order(tmp_path):
    from layerscope.results.writer import BackgroundWriter

    done = tmp_path / "done.txt"
    finished: list[int] = []
    later_done = threading.Event()

    def write(i: int) -> None:
        if i == 0:  # the first image's files finish only after the second image's: an event, not a sleep
            assert later_done.wait(60), "the second image was never written beside the first"
        finished.append(i)
        if i == 1:
            later_done.set()

    with BackgroundWriter(done, max_pending=6, threads=3) as w:
        for i in range(9):
            w.submit(f"img{i}", [(tmp_path / f"{i}", lambda i=i: write(i))])
    assert sorted(finished) == list(range(9)) and finished.index(1) < finished.index(0)
    assert done.read_text() == "".join(f"img{i}\n" for i in range(9))


def test_threaded_writer_error_names_the_file_and_marks_nothing_after_it(tmp_path):
    from layerscope.results.writer import BackgroundWriter, WriteError

    done = tmp_path / "done.txt"
    gate = threading.Event()

    def fail():
        gate.wait(2)
        raise OSError(28, "No space left on device")

    w = BackgroundWriter(done, threads=2)
    w.submit("a", [(tmp_path / "a.npz", lambda: None)])
    w.submit("b", [(tmp_path / "b.npz", fail)])
    w.submit("c", [(tmp_path / "c.npz", lambda: None)])  # written before b fails, but never marked done
    gate.set()
    with pytest.raises(WriteError, match="b.npz: No space left on device"):
        w.close()
    assert done.read_text() == "a\n"


# ---------------------------------------------------------------------------------------------------------------
# A study: workers and the batched scorer change nothing
# ---------------------------------------------------------------------------------------------------------------
def test_loader_workers_auto_uses_the_cores_but_one(monkeypatch):
    import layerscope.data.loading as loading

    monkeypatch.setattr(loading, "usable_cores", lambda: 1)
    assert loading.loader_workers("auto", 100, 4) == 0
    monkeypatch.setattr(loading, "usable_cores", lambda: 2)
    assert loading.loader_workers("auto", 100, 4) == 1
    monkeypatch.setattr(loading, "usable_cores", lambda: 16)
    assert loading.loader_workers("auto", 100, 4) == 4 and loading.loader_workers("auto", 5, 4) == 2
    assert loading.loader_workers(3, 100, 4) == 3
    for bad in (-1, "some", True):
        with pytest.raises(ValueError, match="expected an int >= 0 or auto"):
            loading.loader_workers(bad, 10, 4)


@pytest.mark.slow
def test_study_rows_are_the_same_with_workers_and_equal_a_rescore(tmp_path):
    """``num_workers=0`` and ``2`` write the same table, and rescoring the saved maps one image at a time
    (``image_rows``) reproduces it: the batched scorer changed no number."""
    import csv

    from layerscope import study
    from layerscope.rescoring import rescore_dir

    from .conftest import compose

    tables = []
    for workers in (0, 2):
        cfg = compose("model=tiny_cnn", "data.textures=[brick,moon]", "data.good_per_texture=1", "progress=false",
                      "cache.enabled=false", "dataset_metrics=false", "figures.grid=false", f"num_workers={workers}",
                      "batch_size=3")
        out = tmp_path / f"w{workers}"
        study.run(cfg, out)
        assert study_summary(out)["num_workers"] == workers
        with open(out / "results.csv") as f:
            tables.append(sorted(csv.reader(f)))
    assert len(tables[0]) == 1 + 10 * 5 * 3 and tables[0] == tables[1]
    rescored = rescore_dir(tmp_path / "w0", [], "rescored.csv", progress=False)
    with open(rescored) as f:
        assert sorted(csv.reader(f)) == tables[0]


def study_summary(out):
    import json

    return json.loads((out / "run_summary.json").read_text())


def test_workers_that_cannot_share_memory_fall_back_or_stop_with_one_line(monkeypatch, caplog):
    """num_workers=auto prepares images in the study's process when workers cannot hand batches over (a full
    /dev/shm); an explicit num_workers names the problem."""
    from omegaconf import OmegaConf

    from layerscope.data.synthetic import SyntheticDefects
    from layerscope.data.loading import image_batches

    def no_shared_memory(self):
        raise RuntimeError("unable to resize file </torch_1> to the right size: No space left on device (28)")

    monkeypatch.setattr(torch.Tensor, "share_memory_", no_shared_memory)
    dataset = SyntheticDefects(textures=["brick"], defects=["spot"], size=32)
    cfg = OmegaConf.create({"batch_size": 1, "num_workers": "auto"})
    monkeypatch.setattr("layerscope.data.loading.usable_cores", lambda: 4)
    with caplog.at_level("WARNING"):
        batches, workers = image_batches(cfg, dataset, 32, torch.device("cpu"))
    assert workers == 0 and [item.id for batch in batches for item in batch] == ["brick_spot_0"]
    assert "DataLoader workers cannot run here (unable to resize file" in caplog.text
    cfg.num_workers = 2
    with pytest.raises(ValueError, match=r"^num_workers=2: cannot start DataLoader worker processes \(unable to "
                                         r"resize file .*\); use num_workers=0$"):
        image_batches(cfg, dataset, 32, torch.device("cpu"))
