"""The dataset-level protocol end to end: pooled metrics from a run's saved maps against references
computed on the concatenated pixels, the held-out choice, and memory on a long image stream."""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from layerscope import study
from layerscope.methods import upsample
from layerscope.protocol import choose, dataset_metrics, split_images
from layerscope.cli.report import main as report_main
from layerscope.results import layout
from layerscope.results.maps_io import load_maps, save_maps
from layerscope.analysis.pool import build_pool

from .conftest import compose
from .test_pooled import brute_f1, reference_aupro

DATA = ["model=tiny_vit", "data.textures=[brick,moon]", "data.defects=[scratch,spot]", "data.per_combination=2",
        "data.good_per_texture=2", "data.size=64", "progress=false", "figures.grid=false",
        "metrics.image_topk=0.1"]  # top-k over several cells


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("protocol") / "run"
    study.run(compose(*DATA), out)
    return out


def pixels(run_dir, layer: int, head: str, categories: set[str] | None):
    """Nearest-upsampled maps and masks of the chosen images, (n, S, S) each, from the saved files."""
    maps, masks, ids = [], [], []
    for path in layout.map_files(run_dir):
        d = load_maps(path)
        if categories is not None and d["meta"]["category"] not in categories:
            continue
        k = list(d["names"][layer]).index(head)
        m = torch.from_numpy(d["maps"][layer][k])
        maps.append(upsample(m, d["mask"].shape).numpy())
        masks.append(d["mask"])
        ids.append(d["meta"]["image"])
    return np.stack(maps), np.stack(masks), ids


@pytest.mark.slow
@pytest.mark.parametrize("layer,head,category", [(1, "mean", "all"), (0, "1", "scratch"), (1, "0", "spot")])
def test_pooled_metrics_equal_references_on_concatenated_pixels(run_dir, layer, head, category):
    table = pd.read_csv(run_dir / layout.DATASET_METRICS, dtype={"head": str})  # written at the end of the run
    row = table[(table["layer"] == layer) & (table["head"] == head) & (table["category"] == category)].iloc[0]
    maps, masks, _ = pixels(run_dir, layer, head, None if category == "all" else {category, "good"})
    assert row["n_images"] == len(maps) and row["n_defect_images"] == int(masks.any((1, 2)).sum())
    s, y = maps.ravel(), masks.ravel()
    assert row["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-8)  # the csv keeps 9 digits
    assert row["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-8)
    best, per_threshold = brute_f1(s, y)
    assert row["pixel_f1_max"] == pytest.approx(best, abs=1e-8)
    assert per_threshold[min(per_threshold, key=lambda t: abs(t - row["f1_threshold"]))] == pytest.approx(best, abs=1e-8)
    assert row["aupro"] == pytest.approx(reference_aupro(maps, masks, 0.3), abs=1e-8)
    top = maps.reshape(len(maps), -1).max(1)
    assert row["image_auroc"] == pytest.approx(roc_auc_score(masks.any((1, 2)), top), abs=1e-8)
    assert np.isnan(row["aupro_ci_low"])  # the run's own pass skips the bootstrap; the report adds it


def test_pooled_image_scores_are_the_scores_results_csv_holds(run_dir):
    """The pool's score_max / score_topk are the scorer's own values (the metric function, not a copy of it):
    equal to what results.csv wrote, digit for digit, and to a brute-force top-k mean."""
    from layerscope.analysis.pool import SCORES

    results = pd.read_csv(run_dir / layout.RESULTS, dtype=str, keep_default_na=False)  # the cells as written
    results = results[results["threshold"] == results["threshold"].iloc[0]].set_index(["image", "layer", "head"])
    pool = build_pool(run_dir)
    ids = list(pool.images["id"])
    try:
        assert SCORES == ("score_max", "score_topk") and len(pool.candidates) == 6  # 2 layers x (2 heads, mean)
        for c, cand in pool.candidates.iterrows():
            for i, image in enumerate(ids):
                written = results.loc[(image, str(cand["layer"]), cand["head"]), list(SCORES)]
                assert [f"{v:.6g}" for v in pool.image_scores[c][i]] == list(written), (image, cand["head"])
        d = load_maps(layout.map_file(run_dir, ids[0]))
        flat = d["maps"][0].reshape(len(d["maps"][0]), -1)
        k = max(1, round(0.1 * flat.shape[1]))
        assert k > 1
        brute = [np.mean(sorted(row, reverse=True)[:k], dtype=np.float64) for row in flat]
        c0 = [c for c, cand in pool.candidates.iterrows() if cand["layer"] == 0]
        np.testing.assert_allclose([pool.image_scores[c][0][1] for c in c0], brute, rtol=1e-6)
        np.testing.assert_array_equal([pool.image_scores[c][0][0] for c in c0], flat.max(1))
        # bit for bit what the row builder of a run and of rescoring computes from the same saved maps
        from layerscope.scoring import ScoreOptions, image_rows

        rows = image_rows(d["meta"], {layer: torch.from_numpy(m) for layer, m in d["maps"].items()}, d["names"], None,
                          ScoreOptions([0.6], topk=0.1))
        by_map = {(r["layer"], r["head"]): [r[s] for s in SCORES] for r in rows if r["head"] != "best"}
        assert {(cand["layer"], cand["head"]): list(pool.image_scores[c][0])
                for c, cand in pool.candidates.iterrows()} == by_map
    finally:
        pool.close()


def test_report_adds_bootstrap_cis_to_the_pooled_rows(run_dir):
    pool = build_pool(run_dir)
    table = dataset_metrics(pool, n_boot=50, ci_top=None)  # every candidate
    pool.close()
    pooled = table[table["category"] == "all"]
    for metric in ("pixel_auroc", "aupro"):
        low, high = pooled[f"{metric}_ci_low"], pooled[f"{metric}_ci_high"]
        assert ((low <= pooled[metric] + 1e-12) & (pooled[metric] <= high + 1e-12)).all() and (low < high).any()
    assert table.loc[table["category"] != "all", "aupro_ci_low"].isna().all()


@pytest.mark.parametrize("threaded_cells", [0, 2 ** 40])  # every candidate on the threads; none
def test_dataset_metrics_on_threads_equal_one_thread_with_the_same_cis(run_dir, monkeypatch, threaded_cells):
    """Candidates on 3 threads (two chunks of bootstrap draws): the same table, CIs included, as one thread."""
    import layerscope.protocol as protocol

    monkeypatch.setattr(protocol, "THREADED_CELLS", threaded_cells)
    pool = build_pool(run_dir)
    try:
        tables = [dataset_metrics(pool, n_boot=20, ci_top=None, threads=t) for t in (1, 3)]
    finally:
        pool.close()
    assert tables[0]["aupro_ci_low"].notna().sum() == 6  # every candidate's pooled row has a CI
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_the_two_protocols_differ_where_scales_differ(tmp_path):
    """Each image ranked on its own is perfect; pooled, the image whose map has another scale loses."""
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    maps = [mask * 1.0 + 0.1, mask * 10.0 + 5.0, np.full((8, 8), 0.5)]  # 2 defective images, 1 good
    for i, m in enumerate(maps):
        msk = mask if i < 2 else np.zeros_like(mask)
        save_maps(layout.map_file(tmp_path, f"im{i}"), np.zeros((8, 8, 3), np.uint8), msk,
                  {0: m[None].astype(np.float32)}, {0: ["0"]},
                  {"image": f"im{i}", "category": "scratch" if i < 2 else "good", "model": "m", "method": "x"})
    pool = build_pool(tmp_path)
    row = dataset_metrics(pool, n_boot=0).query("category == 'all'").iloc[0]
    pool.close()
    per_image = [roc_auc_score(mask.ravel(), m.ravel()) for m in maps[:2]]
    assert per_image == [1.0, 1.0]
    s = np.concatenate([m.ravel() for m in maps])
    y = np.concatenate([mask.ravel(), mask.ravel(), np.zeros(64, bool)])
    assert row["pixel_auroc"] == pytest.approx(roc_auc_score(y, s)) and row["pixel_auroc"] < 0.99
    assert row["image_auroc"] == 1.0  # both defective maxima (1.1, 15) beat the good image's 0.5


@pytest.mark.slow
def test_held_out_choice_is_disjoint_saved_and_reproducible(run_dir, capsys):
    args = [str(run_dir), "--protocol", "dataset", "--metric", "aupro", "--calibration", "0.5", "--boot", "100",
            "--stability", "30", "--cost-miss", "50", "--cost-false-alarm", "2"]
    assert report_main(args) == 0
    result = json.loads((run_dir / "choice_aupro.json").read_text())
    cal, held = set(result["calibration_images"]), set(result["held_out_images"])
    assert cal and held and not cal & held and len(cal | held) == 12
    for category in ("scratch", "spot", "good"):  # stratified: every category on both sides
        assert any(category in i for i in cal) and any(category in i for i in held)
    out = result["held_out"]
    for name in ("pixel_auroc", "aupro", "pixel_f1", "pixel_iou", "image_recall", "image_accuracy"):
        low, high = out[name]["ci"]
        assert low <= out[name]["value"] <= high or np.isnan(low), name
    assert abs(sum(s["wins"] for s in result["stability"]) - 1) < 1e-9
    e = result["economics"]
    assert e["no_inspection_cost_per_part"] == pytest.approx(e["defect_rate"] * 50)
    assert "break-even defect rate" in e["verdict"]
    assert "Held-out choice" in capsys.readouterr().out
    # the same choice again from the saved ids alone: the same candidate, threshold and held-out numbers
    saved = run_dir / "choice_aupro.json"
    again = run_dir / "again"
    again.mkdir()
    (again / "ids.txt").write_text("\n".join(result["calibration_images"]))
    pool = build_pool(run_dir)
    try:
        redo = choose(pool, "aupro", pool.images["id"].isin(result["calibration_images"]).to_numpy(), n_boot=100,
                      n_stability=30, costs=(50, 2))
    finally:
        pool.close()
    assert redo["chosen"] == result["chosen"] and redo["threshold"] == result["threshold"]
    assert redo["held_out"] == result["held_out"]
    assert report_main([str(run_dir), "--protocol", "dataset", "--metric", "aupro", "--calibration", str(saved),
                        "--boot", "100", "--stability", "30", "--cost-miss", "50", "--cost-false-alarm", "2"]) == 0
    assert json.loads(saved.read_text())["held_out"] == result["held_out"]


def test_split_is_seeded_and_stratified():
    images = pd.DataFrame({"id": [f"i{k}" for k in range(10)], "category": ["a"] * 6 + ["good"] * 4})
    one, two = split_images(images, 0.5, 3), split_images(images, 0.5, 3)
    assert (one == two).all() and one[:6].sum() == 3 and one[6:].sum() == 2
    assert not (split_images(images, 0.5, 4) == one).all()
    with pytest.raises(ValueError, match="--calibration 1.5"):
        split_images(images, 1.5, 0)


def test_report_refuses_bad_protocol_options(run_dir, capsys):
    assert report_main([str(run_dir), "--cost-miss", "5"]) == 2
    assert "--cost-miss and --cost-false-alarm go together" in capsys.readouterr().err
    assert report_main([str(run_dir), "--protocol", "dataset", "--calibration", "nope"]) == 2
    assert "--calibration nope" in capsys.readouterr().err
    assert report_main([str(run_dir), "--protocol", "dataset", "--metric", "entropy"]) == 2
    assert "metric 'entropy'" in capsys.readouterr().err


def _stream(folder, n: int, layers: int, maps_per_layer: int, grid: int = 16) -> None:
    rng = np.random.default_rng(0)
    names = {layer: [str(k) for k in range(maps_per_layer)] for layer in range(layers)}
    mask = np.zeros((32, 32), bool)
    mask[4:9, 5:8] = True
    for i in range(n):
        maps = {layer: rng.random((maps_per_layer, grid, grid), dtype=np.float32) for layer in range(layers)}
        save_maps(layout.map_file(folder, f"im{i:04d}"), np.zeros((32, 32, 3), np.uint8),
                  mask if i % 4 else np.zeros_like(mask), maps, names,
                  {"image": f"im{i:04d}", "category": "spot" if i % 4 else "good", "model": "m", "method": "x"})


def _peak(folder) -> tuple[int, pd.DataFrame]:
    tracemalloc.start()
    pool = build_pool(folder)
    table = dataset_metrics(pool, n_boot=0)
    pool.close()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, table


@pytest.mark.slow
def test_memory_stays_bounded_on_a_long_image_stream(tmp_path):
    """2,000 tiny images: 24 candidate maps need no more memory than one (each is pooled in turn from disk)."""
    n, cells = 2000, 2000 * 16 * 16
    _stream(tmp_path / "one", n, layers=1, maps_per_layer=1)
    _stream(tmp_path / "many", n, layers=12, maps_per_layer=2)
    one, _ = _peak(tmp_path / "one")
    many, table = _peak(tmp_path / "many")
    assert len(table) == 24 * 2 and table["n_images"].max() == n
    assert table["pixel_auroc"].between(0.48, 0.52).all()  # random maps: chance, pooled over 512,000 cells
    assert many < 1.5 * one, f"24 candidates peak at {many / 2**20:.1f} MiB, one at {one / 2**20:.1f} MiB"
    assert many < 160 * cells, f"peak {many / cells:.0f} bytes per cell of one candidate"  # exact sorting: O(cells)
