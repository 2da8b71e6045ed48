"""The streamed dataset-level pass: counts at distinct scores merged batch by batch equal a pass over every cell.

References: the counts against ``np.unique`` over all cells at once; the rows against the pass over every
pooled cell with per-image weights (``protocol._Candidate``, the bootstrap's pass, written before the
streamed one); a study's ``dataset_metrics.csv`` against the same table computed from its saved maps, for
batch sizes 1 and 4, one and two scoring threads, and a run resumed after a cut at every image.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, astuple

import numpy as np
import pandas as pd
import pytest
import torch

from layerscope import study
from layerscope.metrics.pooled import group_metrics
from layerscope.metrics.pooled_cells import LayerCells, descending_keys, row_metrics, sort_cells
from layerscope.protocol import _Candidate, _categories, stream_rows, write_dataset_metrics
from layerscope.results import catalog, layout
from layerscope.results.maps_io import save_maps
from layerscope.analysis.pool import build_pool
from layerscope.analysis.pool_stream import PooledStream

from .conftest import SMALL_RUN, compose, run_cut_after


def _brute(scores: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct scores, descending, and each one's summed counts, by ``np.unique`` over every cell at once."""
    values, inverse = np.unique(scores, return_inverse=True)
    sums = np.zeros((len(values), 3))
    np.add.at(sums, inverse, counts)
    return values[::-1], sums[::-1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layer_cells_rows_equal_the_curves_over_the_distinct_scores_of_all_cells(seed):
    """Each row's metrics against ``group_metrics`` over the row's distinct scores counted by ``np.unique``."""
    rng = np.random.default_rng(seed)
    n_images, cells, k = 40, 75, 3
    scores = np.round(rng.random((n_images, k, cells)), 2).astype(np.float32)  # many ties, also across images
    scores[3, 0, :5] = -0.0  # -0.0 and 0.0 are one score
    scores[4, 0, :5] = 0.0
    scores[5, 1, :7] = -np.round(rng.random(7), 1)  # negative scores sort below the positive ones
    defect = rng.random((n_images, cells)) < 0.15
    pos = np.where(defect, rng.integers(1, 5, (n_images, cells)), 0)
    neg = np.where(rng.random((n_images, cells)) < 0.1, 0, rng.integers(0, 5, (n_images, cells)))  # empty cells
    pixels = np.stack([pos, neg], -1)
    pro = rng.random((n_images, cells)) * (pos > 0)
    category = rng.choice(["good", "spot", "crack"], n_images)
    pos[category == "good"], pro[category == "good"] = 0, 0.0
    pixels[..., 0] = pos
    store = LayerCells(cells)
    order = rng.permutation(n_images)  # images stored in any order, in batches of any size
    for start, size in ((0, 1), (1, 7), (8, 13), (21, 19)):
        at = order[start:start + size]
        store.add(torch.from_numpy(scores[at]), at, torch.from_numpy(pixels[at]).float(), torch.from_numpy(pro[at]))
    assert len(store) == n_images
    draws = {"draw": rng.integers(0, 4, n_images),  # a bootstrap draw's multiplicities: most images weigh
             "sparse draw": rng.integers(0, 4, n_images) * (rng.random(n_images) < 0.3)}  # few do
    for row in range(k):
        sorted_cells = store.sorted(row)
        for chosen in (["crack"], ["good", "spot"], ["good", "spot", "crack"], ["good"], *draws):
            weights = draws[chosen] if isinstance(chosen, str) else np.isin(category, chosen)
            sel = weights > 0
            flat = scores[sel, row].ravel() + np.float32(0.0)
            counts = np.concatenate([pixels[sel].reshape(-1, 2), pro[sel].reshape(-1, 1)], 1)
            values, sums = _brute(flat, counts * np.repeat(weights[sel], cells)[:, None])
            for limit in (0.3, 0.05, 1.0):
                want = group_metrics(values.astype(np.float64), sums[:, 0], sums[:, 1], sums[:, 2], 7.0, limit)
                got = row_metrics(sorted_cells, weights, 7.0, limit)
                np.testing.assert_allclose(np.array(astuple(got)), np.array(astuple(want)), rtol=1e-12, atol=0)
    nothing = row_metrics(store.sorted(0), np.zeros(n_images, bool), 0.0)
    assert np.isnan(astuple(nothing)).all()
    with pytest.raises(ValueError, match=r"expected 75 cells per image"):
        store.add(torch.zeros(1, k, 74), np.zeros(1), torch.zeros(1, 74, 2), torch.zeros(1, 74))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cells_of_one_size_give_the_rows_of_the_sorted_cells_exactly(seed):
    """``UniformCells`` (a row's scores sorted alone) against ``row_metrics`` over the candidate's sorted cells:
    the same numbers to the last bit, for rows of every kind, ties (within and across images, with defect
    cells among them), cells that are all defect, images without defect pixels, every AUPRO limit."""
    rng = np.random.default_rng(seed)
    n_images, cells, k, size = 30, 60, 3, 4
    scores = np.round(rng.random((n_images, k, cells)), 2).astype(np.float32)  # many ties, also across images
    scores[3, 0, :5] = -0.0
    scores[4, 0, :5] = 0.0
    scores[5, 1, :7] = -np.round(rng.random(7), 1)
    scores[:, 2] = np.round(scores[:, 2], 1)  # a coarse map: large tie groups
    pos = np.where(rng.random((n_images, cells)) < 0.2, rng.integers(1, size + 1, (n_images, cells)), 0)
    category = rng.choice(["good", "spot", "crack"], n_images)
    pos[category == "good"] = 0
    pixels = np.stack([pos, size - pos], -1).astype(np.float32)  # every cell counts ``size`` pixels
    pro = np.where(pos > 0, rng.random((n_images, cells)), 0.0)
    store = LayerCells(cells)
    order = rng.permutation(n_images)
    for start, n in ((0, 4), (4, 11), (15, 15)):
        at = order[start:start + n]
        store.add(torch.from_numpy(scores[at]), at, torch.from_numpy(pixels[at]), torch.from_numpy(pro[at]))
    rows = {"all": None, **{c: category == c for c in ("good", "spot", "crack")},
            "good and spot": np.isin(category, ["good", "spot"]), "one image": np.arange(n_images) == 7,
            "none": np.zeros(n_images, bool)}
    for map_k in range(k):
        uniform, sorted_cells = store.uniform(map_k), store.sorted(map_k)
        assert uniform is not None
        for name, chosen in rows.items():
            for limit in (0.3, 0.05, 0.5, 1.0):
                for regions in (5.0, 0.0):
                    want = astuple(row_metrics(sorted_cells, chosen, regions, limit))
                    got = astuple(uniform.metrics(chosen, regions, limit))
                    np.testing.assert_array_equal(np.array(got), np.array(want), err_msg=f"{name} {limit}")
    odd = LayerCells(cells)  # a cell with an ignored pixel: cells of two sizes, read sorted
    pixels[0, 0, 1] -= 1
    odd.add(torch.from_numpy(scores), np.arange(n_images), torch.from_numpy(pixels), torch.from_numpy(pro))
    assert odd.uniform(0) is None


def test_sort_cells_orders_every_float_like_a_stable_descending_sort():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(size=500), [0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.0, 3.0]])
    values = rng.permutation(values).astype(np.float32)
    keys, order = sort_cells(values)
    want = np.argsort(-(values + np.float32(0.0)), kind="stable")  # ties: in their order
    np.testing.assert_array_equal(order, want)
    np.testing.assert_array_equal(keys, descending_keys(values[want]))
    assert (np.diff(keys.astype(np.int64)) >= 0).all()


def _saved_folder(folder, n: int = 14, seed: int = 0) -> None:
    """Saved maps of ``n`` images of three categories (good ones included), maps with ties, one NaN map."""
    rng = np.random.default_rng(seed)
    names = {0: ["0", "1"], 3: ["mean"]}
    for i in range(n):
        category = ("good", "spot", "crack")[i % 3]
        mask = np.zeros((32, 32), bool)
        if category != "good":
            mask[rng.integers(0, 20):][:8, 4:4 + rng.integers(2, 9)] = True
            mask[25:28, 25:30] = i % 2 == 0  # a second region in some images
        maps = {0: np.round(rng.random((2, 8, 8)), 1).astype(np.float32),  # ties within and across images
                3: rng.random((1, 4, 4)).astype(np.float32)}
        if i == 5:
            maps[0][1, 2, 2] = np.nan
        valid = np.ones((32, 32), bool) if i % 4 else ~np.eye(32, dtype=bool)  # ignored pixels in some
        save_maps(layout.map_file(folder, f"im{i:02d}"), np.zeros((32, 32, 3), np.uint8), mask, maps, names,
                  {"image": f"im{i:02d}", "category": category, "model": "m", "method": "x"}, valid=valid)


def _table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows).drop(columns=["_c"], errors="ignore")


@pytest.mark.parametrize("mode", ["nearest", pytest.param("bilinear", marks=pytest.mark.slow)])
def test_streamed_rows_equal_the_weighted_pass_over_every_cell(tmp_path, mode):
    _saved_folder(tmp_path)
    (tmp_path / layout.CONFIG).write_text(f"upsample: {mode}\n")  # bilinear: a cell per pixel
    pool = build_pool(tmp_path)
    assert set(pool.candidates["upsample"]) == {mode}
    images = pool.images
    defective = images["defective"].to_numpy()
    reference = []
    for c in range(len(pool.candidates)):
        data = _Candidate(pool, c)
        for category, chosen in _categories(images):
            m = asdict(data.metrics(chosen.astype(float)))
            if pool.nonfinite.get(c):
                m = {k: float("nan") for k in m}
            reference.append({"category": category, "n_images": int(chosen.sum()),
                              "n_defect_images": int((chosen & defective).sum()), **m})
    want = _table(reference)
    fed = {}
    for name, batch, order in (("one", 1, 1), ("four", 4, 1), ("reversed", 4, -1)):
        stream = PooledStream.for_run(tmp_path)
        files = layout.map_files(tmp_path)[::order]
        for start in range(0, len(files), batch):
            stream.add_saved(tmp_path, [p.stem for p in files[start:start + batch]])
        fed[name] = _table(stream_rows(stream))
    pool.close()
    for got in fed.values():  # the same sums grouped otherwise: to rounding
        pd.testing.assert_frame_equal(got[want.columns].reset_index(drop=True), want, check_exact=False, rtol=1e-13,
                                      atol=0)
    exact = [c for c in want.columns if c != "aupro"]  # a tie's PRO weights summed in the order cells came
    pd.testing.assert_frame_equal(fed["one"][exact], fed["four"][exact], check_exact=True)
    pd.testing.assert_frame_equal(fed["one"], fed["reversed"], check_exact=False, rtol=1e-13, atol=0)
    assert (fed["one"]["notes"].str.contains("NaN/inf") == (fed["one"]["head"] == "1")).all()  # the NaN map
    image = fed["one"][(fed["one"]["layer"] == 3) & (fed["one"]["category"] == catalog.AGGREGATE)]
    assert image["image_auroc"].iloc[0] > 0 and image["pixel_auroc"].iloc[0] > 0


def test_a_stream_over_its_memory_bound_leaves_the_pass_to_the_saved_maps(tmp_path, monkeypatch):
    from layerscope.analysis import pool_stream

    _saved_folder(tmp_path, n=6)
    write_dataset_metrics(tmp_path, n_boot=0)
    want = (tmp_path / layout.DATASET_METRICS).read_text()
    monkeypatch.setattr(pool_stream, "STREAM_BYTES", 1000)
    stream = PooledStream.for_run(tmp_path)
    stream.add_saved(tmp_path)
    assert stream.dropped and not stream.layers
    (tmp_path / layout.DATASET_METRICS).unlink()
    write_dataset_metrics(tmp_path, n_boot=0, stream=stream)
    assert (tmp_path / layout.DATASET_METRICS).read_text() == want


def _from_saved_maps(run, tmp) -> str:
    """The run's dataset_metrics.csv computed again from its saved maps (the pass over every cell), in ``tmp``."""
    copy = tmp / f"{run.name}_again"
    shutil.copytree(run, copy)
    (copy / layout.DATASET_METRICS).unlink()
    write_dataset_metrics(copy, n_boot=0)
    return (copy / layout.DATASET_METRICS).read_text()


@pytest.mark.slow
def test_a_study_writes_the_same_table_for_any_batch_size_and_thread_count(tmp_path, monkeypatch):
    tables = {}
    for batch, threads in ((1, 1), (4, 2), (4, 1)):
        monkeypatch.setattr(study, "score_threads", lambda t=threads: t)
        out = tmp_path / f"b{batch}t{threads}"
        study.run(compose(*SMALL_RUN, f"batch_size={batch}", "cache.enabled=false"), out)
        tables[(batch, threads)] = (out / layout.DATASET_METRICS).read_text()
    assert len(set(tables.values())) == 1
    assert tables[(1, 1)] == _from_saved_maps(tmp_path / "b1t1", tmp_path)
    assert pd.read_json(tmp_path / "b4t2" / layout.SUMMARY, typ="series")["dataset_stream_seconds"] > 0


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("stream") / "clean"
    study.run(compose(*SMALL_RUN, "batch_size=4", "cache.enabled=false"), out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("cut", range(6))
def test_a_run_cut_after_any_image_resumes_to_the_same_table(clean, tmp_path, monkeypatch, cut):
    """Stopped after ``cut`` images of 6 (batches of 4): the resumed run feeds the finished ones from their maps."""
    out = tmp_path / "run"
    run_cut_after(monkeypatch, cut, lambda: study.run(compose(*SMALL_RUN, "batch_size=4", "cache.enabled=false"), out))
    assert len((out / layout.DONE).read_text().splitlines()) == cut
    study.run(compose(*SMALL_RUN, "batch_size=4", "cache.enabled=false"), out)
    assert (out / layout.DATASET_METRICS).read_text() == (clean / layout.DATASET_METRICS).read_text()
    assert (clean / layout.DATASET_METRICS).read_text() == _from_saved_maps(clean, tmp_path)


def test_the_packed_cpu_sort_orders_as_torch_sort():
    """The CPU's packed-key sort and ``torch.sort`` (what a GPU runs): the same scores in the same order."""
    rng = np.random.default_rng(1)
    values = np.round(rng.normal(size=6000), 1).astype(np.float32)  # ties, negatives
    values[:6] = [np.inf, -np.inf, 0.0, 3.5, 3.5, -0.0]  # -0.0 and 0.0 tie, as in a sort
    keys, order = sort_cells(torch.from_numpy(values))
    want, want_order = torch.sort(torch.from_numpy(values), descending=True, stable=True)
    np.testing.assert_array_equal(order, want_order.numpy())  # ties keep their order in both
    np.testing.assert_array_equal(keys, descending_keys(want.numpy()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (scripts/gpu_check.sh runs it)")
def test_cuda_accumulators_equal_the_cpu_ones(tmp_path):
    """The accumulators on the GPU (as a study with device=cuda keeps them) give the CPU's rows to 1e-6."""
    _saved_folder(tmp_path, n=24)
    rows = {}
    for device in ("cpu", "cuda"):
        stream = PooledStream.for_run(tmp_path, device=device)
        stream.add_saved(tmp_path)
        held = [s for store in stream.layers.values() for s in store.scores]  # the maps stay where they are
        assert held and all((s.device.type if isinstance(s, torch.Tensor) else "cpu") == device for s in held)
        rows[device] = pd.DataFrame(stream_rows(stream))
    numeric = [c for c in rows["cpu"].columns if rows["cpu"][c].dtype.kind == "f"]
    np.testing.assert_allclose(rows["cuda"][numeric].to_numpy(float), rows["cpu"][numeric].to_numpy(float),
                               rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(rows["cuda"].drop(columns=numeric), rows["cpu"].drop(columns=numeric))


def test_the_accumulator_timing_runs_on_the_cpu(capsys):
    from layerscope.bench import stream as bench_stream

    assert bench_stream.main(["--images", "6", "--batch", "4", "--layers", "2", "--maps", "2", "--grid", "6",
                              "--size", "24", "--devices", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "dataset-level accumulators on cpu:" in out and "for the 8 rows at the end" in out


def test_rescore_writes_the_dataset_table_under_its_options(small_run, tmp_path):
    """Rescoring with the run's options gives its ``dataset_metrics.csv`` byte for byte; with another AUPRO limit,
    upsampling or top-k share, the table the pass over the saved maps gives a run configured that way."""
    from omegaconf import OmegaConf

    from layerscope.rescoring import dataset_table, rescore_dir

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    same = rescore_dir(run, [], "same.csv", progress=False)
    assert dataset_table(same).read_text() == (run / layout.DATASET_METRICS).read_text()
    changed = ["metrics.aupro_fpr_limit=0.05", "metrics.image_topk=0.2", "upsample=bilinear"]
    other = rescore_dir(run, changed, "other.csv", progress=False)
    reference = tmp_path / "reference"
    shutil.copytree(small_run, reference)
    config = OmegaConf.merge(OmegaConf.load(reference / layout.CONFIG), OmegaConf.from_dotlist(changed))
    OmegaConf.save(config, reference / layout.CONFIG)
    write_dataset_metrics(reference, n_boot=0)
    got, want = pd.read_csv(dataset_table(other)), pd.read_csv(reference / layout.DATASET_METRICS)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)
    assert (got["upsample"] == "bilinear").all()
    assert not got["aupro"].equals(pd.read_csv(run / layout.DATASET_METRICS)["aupro"])  # the options did change it


def test_images_without_a_category_get_no_row_that_repeats_all():
    """A folder of images has no categories: its only row is ``all``, not an unnamed copy of it; beside named
    defect types the unnamed images keep their own row."""
    unnamed = pd.DataFrame({"category": ["", "", "good"]})
    assert [name for name, _ in _categories(unnamed)] == [catalog.AGGREGATE]
    mixed = pd.DataFrame({"category": ["", "spot", "good"]})
    rows = dict(_categories(mixed))
    assert list(rows) == ["", "spot", catalog.AGGREGATE]
    np.testing.assert_array_equal(rows[""], [True, False, True])
