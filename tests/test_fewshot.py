"""The few-shot protocol: which references (n per category, drawn by seed, never a test image), the tables
across seeds (against hand-written t-intervals), the held-out choice per shot count (against brute-force
pooled AUROC), and a small sweep end to end (report, page, figure)."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

import layerscope as ls
from layerscope.data.mvtec_export import export_mvtec
from layerscope.data.folder import Folder
from layerscope.data.mvtec import MVTecAD
from layerscope.data.references import draw, without_test_copies
from layerscope.data.synthetic import SyntheticDefects
from layerscope.fewshot_choice import choice_summary, choose_by_shots, summary_markdown, write_choice_by_shots
from layerscope.analysis import fewshot
from layerscope.analysis.pool import GridCells, Pool

# t(0.975, df) from a printed table (df 1, 2, 3, 4): the intervals are checked against these, not scipy
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}


# --------------------------------------------------------------------------------------- which references


def test_draw_is_a_seeded_nested_sample_without_replacement():
    a, b = draw(20, 5, seed=0, where="pool"), draw(20, 10, seed=0, where="pool")
    assert len(set(a)) == 5 and all(0 <= i < 20 for i in a)
    assert b[:5] == a  # the 5-shot draw is the start of the 10-shot draw of the same seed
    assert sorted(draw(20, None, seed=3, where="pool")) == list(range(20))
    assert set(draw(20, 5, seed=1, where="pool")) != set(a)
    with pytest.raises(ValueError, match=r"^method.n_references=21: pool holds 20 defect-free images; expected at "
                                         r"most 20"):
        draw(20, 21, seed=0, where="pool")


def test_synthetic_references_are_n_per_texture_by_seed_and_never_a_test_image():
    ds = SyntheticDefects(textures=["brick", "moon"], defects=["scratch"], per_combination=2, size=32,
                          good_per_texture=2)
    refs = ds.references(3, seed=0)
    assert [s.source for s in refs] == ["brick"] * 3 + ["moon"] * 3
    assert all(s.category == "good" and not s.mask.any() for s in refs)
    test_images = [ds[i].image for i in range(len(ds))]
    for s in [*refs, *ds.references(3, seed=1)]:
        assert not any(np.array_equal(s.image, t) for t in test_images)
    # nested per texture; another seed draws other crops; a texture's crops do not depend on the others
    two = ds.references(2, seed=0)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(two, [refs[0], refs[1], refs[3], refs[4]]))
    assert not np.array_equal(ds.references(1, seed=1)[0].image, refs[0].image)
    alone = SyntheticDefects(textures=["moon"], defects=["scratch"], size=32).references(1, seed=0)
    assert np.array_equal(alone[0].image, refs[3].image)
    assert len(ds.references(None, seed=0)) == len(ds)  # null: as many per texture as the test set holds


@pytest.fixture(scope="module")
def mvtec_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    export_mvtec(root, textures=["brick"], defects=["spot"], per_combination=2, good=2, train=6, size=32)
    return root


def test_mvtec_references_draw_train_good_by_seed_and_drop_copies_of_test_images(mvtec_tree, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(mvtec_tree, root)
    ds = MVTecAD(str(root), "brick")
    train = sorted((root / "brick" / "train" / "good").iterdir())
    a = [s.source for s in ds.references(3, seed=0)]
    assert len(set(a)) == 3 and set(a) <= {str(p) for p in train}
    assert [s.source for s in ds.references(5, seed=0)][:3] == a
    assert {s.source for s in ds.references(None, seed=4)} == {str(p) for p in train}
    with pytest.raises(ValueError, match=r"^method.n_references=7: .*train/good holds 6 defect-free images"):
        ds.references(7, seed=0)
    # a copy of a test image in train/good is no reference, under any name
    shutil.copy(root / "brick" / "test" / "good" / "000.png", root / "brick" / "train" / "good" / "zz_copy.png")
    ds = MVTecAD(str(root), "brick")
    assert all("zz_copy" not in s.source for s in ds.references(None, seed=0))
    assert len(ds.references(None, seed=0)) == 6


def _noise(path, rng, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


@pytest.fixture()
def leaky_folder(tmp_path):
    """Noise images only (no defect to find): root/defect/*.png with masks, root/good/*.png, and a normal_dir
    holding three other noise images plus byte copies of the good test images (a leak)."""
    rng = np.random.default_rng(0)
    for i in range(4):
        _noise(tmp_path / "root" / "defect" / f"d{i}.png", rng)
        mask = np.zeros((32, 32), np.uint8)
        mask[8:16, 8:16] = 255
        (tmp_path / "masks" / "defect").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(tmp_path / "masks" / "defect" / f"d{i}.png")
        _noise(tmp_path / "root" / "good" / f"g{i}.png", rng)
    for i in range(3):
        _noise(tmp_path / "normal" / f"n{i}.png", rng)
    for i in range(4):
        shutil.copy(tmp_path / "root" / "good" / f"g{i}.png", tmp_path / "normal" / f"copy{i}.png")
    return tmp_path


def _image_auroc(bb, ds: Folder, references: list[np.ndarray]) -> float:
    items = [ds[i] for i in range(len(ds))]
    m = ls.maps(bb, [s.image for s in items], layers=[2], method="patch_knn", references=references, k=1,
                bank_size=None)
    scores = m[2].reshape(len(items), -1).max(1)
    return roc_auc_score([s.category == "defect" for s in items], scores)


def test_references_never_include_a_test_image_where_a_leak_would_score_auroc_1(leaky_folder):
    ds = Folder(str(leaky_folder / "root"), mask_dir=str(leaky_folder / "masks"), recursive=True,
                normal_dir=str(leaky_folder / "normal"))
    refs = ds.references(None, seed=0)
    assert sorted(s.id for s in refs) == ["normal_n0", "normal_n1", "normal_n2"]  # the copies are left out
    bb = ls.load("tiny_cnn")
    leaked = [ds[i].image for i in range(len(ds)) if ds[i].category == "good"]
    assert _image_auroc(bb, ds, leaked) == 1.0  # the control: a leaked good image scores 0 against itself
    assert _image_auroc(bb, ds, [s.image for s in refs]) < 0.9
    with pytest.raises(ValueError, match=r"^method.n_references=4: data.normal_dir=.* holds 3 defect-free images"):
        ds.references(4, seed=0)
    same = Folder(str(leaky_folder / "root" / "good"), normal_dir=str(leaky_folder / "root" / "good"))
    with pytest.raises(ValueError, match=r"no images found besides the test images under data.root"):
        same.references(1, seed=0)


def test_without_test_copies_keeps_order_and_other_files(tmp_path):
    rng = np.random.default_rng(1)
    files = []
    for name in ("a", "b", "c"):
        _noise(tmp_path / f"{name}.png", rng)
        files.append(tmp_path / f"{name}.png")
    shutil.copy(files[1], tmp_path / "b_copy.png")
    pool = [files[0], tmp_path / "b_copy.png", files[2]]
    assert without_test_copies(pool, [files[1]]) == [files[0], files[2]]
    assert without_test_copies(files, [tmp_path / "b_copy.png", files[2]]) == [files[0]]


# --------------------------------------------------------------------------------------- across seeds


def test_across_seeds_mean_and_t_interval_equal_the_formula():
    values = pd.DataFrame([
        {"job": str(j), "category": "all", "model": "m", "method": "patch_knn", "layer": layer, "head": "knn",
         "value": v} for j, layer, v in [(0, 0, 0.5), (1, 0, 0.7), (2, 0, 0.6), (0, 1, 0.9), (1, 1, 0.8),
                                         (2, 1, 1.0), (3, 0, 0.4), (4, 0, 0.45), (3, 1, 0.3),
                                         (4, 1, 0.35)]])
    settings = pd.DataFrame({"job": ["0", "1", "2", "3", "4"], "shots": [1, 1, 1, 2, 2], "seed": [0, 1, 2, 0, 1]})
    table = fewshot.across_seeds(values, settings)
    r = table[(table["shots"] == 1) & (table["layer"] == 0)].iloc[0]
    sd = math.sqrt(((0.5 - 0.6) ** 2 + (0.7 - 0.6) ** 2) / 2)
    assert r["mean"] == pytest.approx(0.6) and r["sd"] == pytest.approx(sd) and r["n_seeds"] == 3
    assert r["ci_low"] == pytest.approx(0.6 - T975[2] * sd / math.sqrt(3), abs=1e-3)
    assert r["ci_high"] == pytest.approx(0.6 + T975[2] * sd / math.sqrt(3), abs=1e-3)
    r = table[(table["shots"] == 2) & (table["layer"] == 0)].iloc[0]
    assert r["ci_high"] - r["mean"] == pytest.approx(T975[1] * (0.05 / math.sqrt(2)) / math.sqrt(2), abs=1e-3)
    assert r["seeds"] == "0,1" and r["min"] == 0.4 and r["max"] == 0.45
    assert list(table["shots"].drop_duplicates()) == [1, 2]
    md = fewshot.fewshot_markdown(table, "t")
    assert "| 1 | 3 | 0.600 [" in md and "**0.900 [" in md  # layer 1 is the best of 1 shot
    best = fewshot.best_layers(table)
    assert list(best["best_layer"]) == [1, 0] and list(best["last_is_best"]) == [True, False]
    assert fewshot.is_sweep(settings) and not fewshot.is_sweep(settings.iloc[:1])


def test_one_seed_gives_no_interval():
    low, high = fewshot.t_interval(np.array([0.3]))
    assert math.isnan(low) and math.isnan(high)


def test_job_settings_read_each_jobs_shots_and_seed(tmp_path):
    for job, (shots, seed) in enumerate([(1, 0), (4, 2), (None, 1)]):
        d = tmp_path / str(job)
        d.mkdir()
        (d / "config.yaml").write_text(f"seed: {seed}\nmethod:\n  n_references: {'null' if shots is None else shots}\n")
        (d / "results.csv").write_text("image\n")
    other = tmp_path / "attention"
    other.mkdir()
    (other / "config.yaml").write_text("seed: 0\nmethod:\n  _target_: x\n")
    (other / "results.csv").write_text("image\n")
    settings = fewshot.job_settings(tmp_path)
    assert settings.to_dict("list") == {"job": ["0", "1", "2"], "shots": [1, 4, "all"], "seed": [0, 2, 1]}


# --------------------------------------------------------------------------------------- choice per shot count


def _toy_pool() -> tuple[Pool, pd.DataFrame, np.ndarray]:
    """8 images of 4 one-pixel cells (4 defective with one defect cell, 4 good); 2 jobs (1 shot, seeds 0 and 1)
    of 3 layers with noisy scores, the signal growing with the layer in seed 0 and peaking at layer 1 in seed 1."""
    rng = np.random.default_rng(0)
    n, cells = 8, 4
    defective = np.arange(n) < 4
    pos = np.zeros((n, cells), np.float32)
    pos[defective, rng.integers(0, cells, 4)] = 1
    images = pd.DataFrame({"id": [f"i{i}" for i in range(n)], "category": np.where(defective, "spot", "good"),
                           "defective": defective, "regions": defective.astype(int),
                           "defect_pixels": pos.sum(1).astype(int), "normal_pixels": (cells - pos.sum(1)).astype(int)})
    grid = GridCells(np.repeat(np.arange(n, dtype=np.int32), cells), pos.ravel(), (1 - pos).ravel(),
                     pos.ravel().astype(np.float64))
    cand, scores, image_scores, grids = [], {}, {}, {}
    for job, signal in (("0", [0.2, 0.8, 1.6]), ("1", [0.3, 1.5, 0.6])):
        grids[(job, (2, 2))] = grid
        for layer in range(3):
            c = len(cand)
            cand.append({"job": job, "model": "m", "method": "patch_knn", "layer": layer, "head": "knn",
                         "grid": (2, 2), "upsample": "nearest"})
            s = (rng.normal(size=n * cells) + signal[layer] * pos.ravel()).astype(np.float32)
            scores[c] = s
            image_scores[c] = np.stack([s.reshape(n, cells).max(1)] * 2, 1).astype(np.float64)
    pool = Pool(images, pd.DataFrame(cand), grids, image_scores, 0.3, scores)
    settings = pd.DataFrame({"job": ["0", "1"], "shots": [1, 1], "seed": [0, 1]})
    cal = np.isin(np.arange(n), [0, 1, 4, 5])
    return pool, settings, cal


def test_choice_per_shot_count_equals_brute_force_pooled_auroc(tmp_path):
    pool, settings, cal = _toy_pool()
    rows = choose_by_shots(pool, settings, "pixel_auroc", cal)
    labels = pool.grids[("0", (2, 2))].pos
    image = pool.grids[("0", (2, 2))].image
    for r in rows.to_dict("records"):
        cs = pool.candidates.index[pool.candidates["job"] == str(r["seed"])]
        on = {side: [roc_auc_score(labels[np.isin(image, idx)], pool.scores(c)[np.isin(image, idx)]) for c in cs]
              for side, idx in (("cal", np.flatnonzero(cal)), ("out", np.flatnonzero(~cal)))}
        chosen, best = int(np.argmax(on["cal"])), int(np.argmax(on["out"]))
        assert (r["chosen_layer"], r["best_layer"], r["last_layer"]) == (chosen, best, 2)
        assert r["calibration"] == pytest.approx(on["cal"][chosen])
        assert r["held_out"] == pytest.approx(on["out"][chosen])
        assert r["best_held_out"] == pytest.approx(on["out"][best])
        assert r["gap"] == pytest.approx(on["out"][best] - on["out"][chosen]) and r["gap"] >= 0
        assert r["last_held_out"] == pytest.approx(on["out"][2])
    summary = choice_summary(rows)
    s = summary.iloc[0]
    gaps = rows["gap"].to_numpy()
    half = T975[1] * gaps.std(ddof=1) / math.sqrt(2)
    assert s["gap"] == pytest.approx(gaps.mean()) and s["gap_ci_high"] == pytest.approx(gaps.mean() + half, abs=1e-3)
    assert s["chosen_layers"] == ",".join(map(str, rows.sort_values("seed")["chosen_layer"]))
    assert "| 1 | 2 |" in summary_markdown(summary)
    paths = write_choice_by_shots(tmp_path, rows)
    assert [p.name for p in paths] == ["fewshot_choice_pixel_auroc.csv", "fewshot_choice_pixel_auroc_summary.csv",
                                       "fewshot_choice_pixel_auroc.md"]
    with pytest.raises(ValueError, match=r"^no job of the pooled maps has method.n_references"):
        choose_by_shots(pool, settings.assign(job=["x", "y"]), "pixel_auroc", cal)
    with pytest.raises(ValueError, match=r"^--metric image_auroc: the choice ranks by one of"):
        choose_by_shots(pool, settings, "image_auroc", cal)


# --------------------------------------------------------------------------------------- a sweep end to end

SWEEP = ["model=tiny_vit", "method=patch_knn", "data.textures=[brick]", "data.defects=[scratch,spot]",
         "data.per_combination=2", "data.good_per_texture=2", "data.size=64", "data.seed=0", "progress=false",
         "figures.grid=false"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A few-shot sweep, jobs 0..3 = (1 shot, seed 0), (1, 1), (2, 0), (2, 1), run as Hydra's sweep would."""
    from layerscope import study

    from .conftest import compose

    root = tmp_path_factory.mktemp("fewshot") / "sweep"
    for job, (shots, seed) in enumerate([(1, 0), (1, 1), (2, 0), (2, 1)]):
        study.run(compose(*SWEEP, f"method.n_references={shots}", f"seed={seed}"), root / str(job))
    return root


@pytest.mark.slow
def test_sweep_report_page_and_figure(sweep, tmp_path):
    from layerscope.cli.report import main as report_main
    from layerscope.figures.score_plots import fewshot_vs_layer
    from layerscope.results.table import load_results, read_table
    from layerscope.view import build

    from .conftest import call_main
    from .test_protocol import pixels

    results = load_results(sweep)
    a = results[(results["job"] == "0") & (results["head"] == "knn")]["auroc"].to_numpy()
    b = results[(results["job"] == "1") & (results["head"] == "knn")]["auroc"].to_numpy()
    assert len(a) == len(b) and not np.allclose(a, b)  # the seeds' references differ: so do the maps
    ids = sorted(results["image"].unique())
    images = results.drop_duplicates("image").set_index("image")["category"]
    cal_ids = [i for c in ("scratch", "spot", "good") for i in sorted(images[images == c].index)[::2]]
    (tmp_path / "cal.txt").write_text("\n".join(cal_ids) + "\n")
    proc = call_main(report_main, [str(sweep), "--metric", "auroc", "--calibration", str(tmp_path / "cal.txt"),
                                   "--boot", "20", "--stability", "2"])
    assert proc.returncode == 0, proc.stderr
    # the per-image table: per job the mean over images of AUROC, then mean and t-interval over the two seeds
    table = read_table(sweep / "fewshot_auroc.csv")
    for shots, jobs in ((1, ("0", "1")), (2, ("2", "3"))):
        for layer in sorted(results["layer"].unique()):
            per_job = [results[(results["job"] == j) & (results["layer"] == layer)].groupby("image")["auroc"].mean()
                       .mean() for j in jobs]
            r = table[(table["category"] == "all") & (table["shots"] == shots) & (table["layer"] == layer)].iloc[0]
            half = T975[1] * np.std(per_job, ddof=1) / math.sqrt(2)
            assert r["mean"] == pytest.approx(np.mean(per_job)) and r["n_seeds"] == 2
            assert r["ci_high"] == pytest.approx(np.mean(per_job) + half, abs=1e-3 * max(half, 1))
    pooled = read_table(sweep / "fewshot_dataset_pixel_auroc.csv")
    assert set(pooled["shots"]) == {1, 2}
    # the held-out choice per shot count against pooled pixel AUROC of the saved maps, brute force
    rows = read_table(sweep / "fewshot_choice_pixel_auroc.csv")
    assert len(rows) == 4
    for r in rows.to_dict("records"):
        job = str({(1, 0): 0, (1, 1): 1, (2, 0): 2, (2, 1): 3}[(r["shots"], r["seed"])])
        held = []
        for layer in sorted(results["layer"].unique()):
            maps, masks, names = pixels(sweep / job, layer, "knn", None)
            out = np.array([n not in cal_ids for n in names])
            held.append(roc_auc_score(masks[out].ravel(), maps[out].ravel()))
        assert r["best_layer"] == int(np.argmax(held)) and r["best_held_out"] == pytest.approx(max(held), abs=1e-6)
        assert r["held_out"] == pytest.approx(held[r["chosen_layer"]], abs=1e-6)
    assert "Held-out choice of layer per shot count" in (sweep / "fewshot_choice_pixel_auroc.md").read_text()
    page = build(sweep, n_boot=20).read_text()
    assert "<section id=fewshot>" in page and "layers chosen (per seed)" in page
    assert "dataset level, pooled pixel_auroc: tiny_vit · patch_knn · knn" in page
    paths = fewshot_vs_layer(sweep, tmp_path / "figs", ("png",), ("auroc",))
    assert {p.name for p in paths} == {"fewshot_vs_layer_auroc_tiny_vit_patch_knn_knn.png",
                                       "fewshot_vs_layer_dataset_pixel_auroc_tiny_vit_patch_knn_knn.png",
                                       "fewshot_vs_layer_dataset_aupro_tiny_vit_patch_knn_knn.png"}
    assert len(ids) == 6


def test_fit_references_passes_the_seed_and_accepts_a_dataset_without_one(caplog):
    """The study draws references with its seed; a dataset of one's own whose ``references(n)`` takes no seed
    still works, with a warning that its references do not change with the seed."""
    from types import SimpleNamespace

    import torch

    from layerscope.data.base import Sample
    from layerscope.study import fit_references

    fed = []

    class Method:
        name, capture, needs_references, n_references = "patch_knn", "features", True, 2

        def capture_layers(self, layers):  # no fused candidates: the layers themselves
            return layers

        def fit(self, batches, layers, extract):
            fed.extend(x.shape[0] for x in batches)

    image = np.zeros((8, 8, 3), np.uint8)

    class Seeded:
        def references(self, n, seed=0):
            self.asked = (n, seed)
            return [Sample(id=f"r{i}", image=image) for i in range(n)]

    class Old:
        def __len__(self):
            return 5

        def references(self, n):
            self.asked = (n,)
            return [Sample(id=f"r{i}", image=image) for i in range(n)]

    plan = SimpleNamespace(method=Method(), layers=[0])
    backbone = SimpleNamespace(img_size=8, extract=None)
    seeded, old = Seeded(), Old()
    fit_references(plan, backbone, seeded, 4, torch.device("cpu"), seed=7)
    assert seeded.asked == (2, 7) and fed == [2]
    with caplog.at_level("WARNING", logger="layerscope.study"):
        fit_references(plan, backbone, old, 4, torch.device("cpu"), seed=7)
    assert old.asked == (2,) and "Old.references takes no seed" in caplog.text
