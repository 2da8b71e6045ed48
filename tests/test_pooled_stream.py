"""The streamed dataset-level pass: counts at distinct scores merged batch by batch equal a pass over every cell.

References: the counts against ``np.unique`` over all cells at once; the rows against the pass over every
pooled cell with per-image weights (``protocol._Candidate``, the bootstrap's pass, written before the
streamed one); a study's ``dataset_metrics.csv`` against the same table computed from its saved maps, for
batch sizes 1 and 4, one and two scoring threads, and a run resumed after a cut at every image.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch

from layerscope import study
from layerscope.metrics.pooled_runs import CandidateRuns, group_cells, merge_runs
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


def test_group_cells_and_merges_equal_the_counts_of_all_cells_at_once():
    rng = np.random.default_rng(0)
    n, k = 3000, 3
    scores = np.round(rng.random((k, n)), 2).astype(np.float32)  # many ties, also across batches
    counts = np.stack([rng.integers(0, 5, n), rng.integers(0, 5, n), rng.random(n) * (rng.random(n) < 0.3)], 1)
    category = rng.choice(["good", "spot", "crack"], n)
    per = [CandidateRuns() for _ in range(k)]
    for start in range(0, n, 170):  # batches of cells, each category apart as a study feeds them
        for c in np.unique(category[start:start + 170]):
            at = start + np.flatnonzero(category[start:start + 170] == c)
            got = group_cells(torch.from_numpy(scores[:, at]), torch.from_numpy(counts[at].T.copy()))
            for runs, one in zip(per, got):
                runs.add(str(c), one)
    keys = ["crack", "good", "spot"]
    for row in range(k):
        assert sum(len(p) for p in per[row].parts.values()) < n  # merged as it went: ties counted once
        assert all(len(p) < 2 * CandidateRuns.FAN_IN for p in per[row].parts.values())  # a few runs per level
        for chosen in (["crack"], ["good", "spot"], keys):
            sel = np.isin(category, chosen)
            values, got = per[row].row(chosen)
            want_values, want = _brute(scores[row, sel], counts[sel])
            np.testing.assert_array_equal(values, want_values.astype(np.float64))
            np.testing.assert_array_equal(got[:2].T, want[:, :2])  # pixel counts: exact
            np.testing.assert_allclose(got[2], want[:, 2], rtol=1e-12, atol=0)
    one = merge_runs(group_cells(torch.from_numpy(scores[:1]), torch.from_numpy(counts.T.copy())))
    np.testing.assert_array_equal(one.values.numpy(), _brute(scores[0], counts)[0])
    with pytest.raises(ValueError, match=r"expected scores \(K, M\) and counts \(3, M\)"):
        group_cells(torch.zeros(2, 5), torch.zeros(3, 4))


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
    assert stream.dropped and not any(r.parts for r in stream.runs)
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
    from layerscope.metrics.pooled_runs import sort_descending

    rng = np.random.default_rng(1)
    values = np.round(rng.normal(size=(3, 2000)), 1).astype(np.float32)  # ties, negatives
    values[0, :6] = [np.inf, -np.inf, 0.0, 3.5, 3.5, -0.0]  # -0.0 and 0.0 tie, as in a sort
    t = torch.from_numpy(values)
    (got, order), (want, want_order) = sort_descending(t), sort_descending(t, packed=False)
    assert torch.equal(got, want) and torch.equal(order, want_order)  # ties keep their order in both
    assert torch.equal(got, torch.gather(t, 1, order)) and (got[:, :-1] >= got[:, 1:]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (scripts/gpu_check.sh runs it)")
def test_cuda_accumulators_equal_the_cpu_ones(tmp_path):
    """The accumulators on the GPU (as a study with device=cuda keeps them) give the CPU's rows to 1e-6."""
    _saved_folder(tmp_path, n=24)
    rows = {}
    for device in ("cpu", "cuda"):
        stream = PooledStream.for_run(tmp_path, device=device)
        stream.add_saved(tmp_path)
        assert all(r.values.device.type == device for runs in stream.runs for p in runs.parts.values() for r in p)
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
