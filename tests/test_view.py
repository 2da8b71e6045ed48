"""The offline report page (``layerscope-view``): its structure, its pictures, a real headless browser,
and the figure additions it shares with ``layerscope-figures`` (layer x head heatmap, relative depth,
identical jobs merged).

The browser test drives headless Chromium from the command line (no Playwright, no driver): it
dumps the DOM after the page's script ran, clicks a thumbnail from a same-folder harness page,
and saves a screenshot under the test's folder. Without Chromium it skips and says why
(``.ci/run`` installs it from Debian's packages). Regenerate the README's screenshot with
``python tests/test_view.py RUN_DIR docs/report_page.png``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from layerscope.cli.view import main
from layerscope.figures.score_plots import layer_head, metric_vs_layer
from layerscope.analysis.saved import Study, relative_depth
from layerscope.analysis.leaderboard import rank
from layerscope.view import REPORT, build

from .conftest import call_main, run_main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.textures=[brick,grass]", "data.defects=[scratch,spot]", "data.per_combination=2",
         "data.good_per_texture=1", "data.size=64", "progress=false"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PNG = b"\x89PNG\r\n\x1a\n"


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A sweep-like folder: 0/ a tiny ViT run, 1/ a tiny CNN run, 2/ a copy of 1 (an identical job, as
    ``method=auto`` and ``method=features`` on a CNN)."""
    parent = tmp_path_factory.mktemp("sweep")
    for job, model in (("0", "tiny_vit"), ("1", "tiny_cnn")):
        proc = run_main([f"model={model}", *SMALL, f"hydra.run.dir={parent / job}"], ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.copytree(parent / "1", parent / "2")
    return parent


@pytest.fixture(scope="module")
def single(sweep, tmp_path_factory) -> Path:
    """One run (the tiny ViT), with its page."""
    run = tmp_path_factory.mktemp("single") / "run"
    shutil.copytree(sweep / "0", run)
    build(run, n_boot=200)
    return run


class _Tags(HTMLParser):
    """Start tags (name, attrs) and the text of ``<script id=data>``."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.data = ""
        self._in_data = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        self._in_data = tag == "script" and attrs.get("id") == "data"

    def handle_endtag(self, tag):
        self._in_data = False

    def handle_data(self, data):
        if self._in_data:
            self.data += data


def _parse(page: Path) -> _Tags:
    parser = _Tags()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


# ------------------------------------------------------------------------------------- the page


@pytest.mark.slow
def test_page_structure_of_one_run(single):
    page = single / REPORT
    text = page.read_text(encoding="utf-8")
    parsed = _parse(page)
    ids = {a.get("id") for _, a in parsed.tags}
    assert {"summary", "glance", "gallery", "ranking", "curves", "runs", "data", "thumbs", "detail"} <= ids
    assert "choice" not in ids  # no choice_*.json in this run
    # self-contained: no network reference anywhere (no CDN, no remote font, no remote picture)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "@import" not in text and "url(http" not in text
    data = json.loads(parsed.data)
    saved = sorted(p.stem for p in (single / "maps").glob("*.npz"))
    assert sorted(im["id"] for im in data["images"]) == saved
    assert [s["label"] for s in data["series"]] == ["tiny_vit · cls_attention"]
    series = data["series"][0]
    assert series["layers"] == [0, 1] and series["names"][-1] == "mean"
    assert series["depth"] == [0.0, 1.0]
    cells = len(series["layers"]) * len(series["names"])
    for im in data["images"]:
        for kind in ("thumb", "input"):
            assert (single / im[kind]).is_file(), im[kind]
        entry = im["s"]["0"]
        grid = Image.open(single / entry["g"])
        assert grid.mode == "P" and grid.size == (len(series["names"]) * series["tile"],
                                                  len(series["layers"]) * series["tile"])
        assert len(entry["v"]) == cells and all(v is None or len(v) == len(data["metrics"]) for v in entry["v"])
        assert (im["o"] is None) == (im["cat"] == "good")  # an outline for every defect, none for good images
    # thumbnails: small files, lazily loaded; pictures only under report_files/
    thumbs = [a for t, a in parsed.tags if t == "img" and "loading" in a]
    assert len(thumbs) == len(saved) and all(a["loading"] == "lazy" for a in thumbs)
    assert all(a["src"].startswith("report_files/") for a in thumbs)
    assert max(f.stat().st_size for f in (single / "report_files" / "thumb").iterdir()) < 20_000
    # the per-map values are the results' own (smallest threshold, no 'best' rows)
    df = pd.read_csv(single / "results.csv", dtype={"head": str})
    im = next(i for i in data["images"] if i["cat"] == "scratch")
    k = series["names"].index("mean")
    row = df[(df["image"] == im["id"]) & (df["layer"] == 1) & (df["head"] == "mean")].iloc[0]
    value = im["s"]["0"]["v"][1 * len(series["names"]) + k]
    names = [m["name"] for m in data["metrics"]]
    assert value[names.index("auroc")] == pytest.approx(row["auroc"], abs=1e-3)


@pytest.mark.slow
def test_heatmap_marks_the_ranking_best(single):
    text = (single / REPORT).read_text(encoding="utf-8")
    best = re.findall(r"<td class=best [^>]*>([^<]*)</td>", text)
    assert len(best) == 1
    top = rank(Study(single).df, "aupro", n_boot=10).query("category == 'all'").iloc[0]
    assert float(best[0]) == pytest.approx(top["mean"], abs=6e-4)
    assert f"best: <b>layer {top['layer']} · head {top['head']}</b>" in text
    assert "x-axis: " in text and "relative depth (0 = first layer, 1 = last" in text


@pytest.mark.slow
def test_sweep_page_side_by_side_with_identical_job_merged(sweep, tmp_path):
    out = tmp_path / "page" / "index.html"
    proc = _cli(["-m", "layerscope.view", str(sweep), "--out", str(out), "--metric", "auroc", "--boot", "100",
                 "--depth", "relative"], ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(out)
    assert "page " in proc.stderr and " MB" in proc.stderr
    assert (tmp_path / "page" / "index_files" / "thumb").is_dir()
    text = out.read_text(encoding="utf-8")
    data = json.loads(_parse(out).data)
    assert [s["label"] for s in data["series"]] == ["tiny_cnn · features", "tiny_vit · cls_attention"]
    assert data["series"][0]["depth"] == [0.0, 0.25, 0.5, 0.75, 1.0]  # 5 CNN stages on the ViT's 0..1 axis
    assert data["metric"] == "auroc"
    assert "Job 2 holds the same results as job 1" in text
    assert text.count("<table class=heat>") == 2 and text.count("<td class=best ") == 2
    assert '<body class="rel">' in text  # --depth relative: the curves open on relative depth
    assert "job 2" not in json.dumps(data)  # the copy is drawn once
    for im in data["images"]:
        assert set(im["s"]) == {"0", "1"}  # every image through both models


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "empty", "metric"])
def test_cli_errors_exit_2_in_one_line(single, tmp_path, case):
    folder = {"missing": tmp_path / "nope", "empty": tmp_path, "metric": single}[case]
    args = [str(folder), *(["--metric", "nonsense"] if case == "metric" else [])]
    proc = call_main(main, args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert ("--metric nonsense" if case == "metric" else str(folder)) in lines[0]


def test_a_cli_error_through_the_command_line(tmp_path):
    proc = _cli(["-m", "layerscope.view", str(tmp_path / "nope")], ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: no such folder"], proc.stderr


@pytest.mark.slow
def test_main_writes_page_again(single, capsys):
    assert main([str(single), "--boot", "20", "--top", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(single / REPORT)
    assert [p.name for p in single.glob(".report*")] == [f".{REPORT}.lock"]  # no staging left, only the lock
    assert main([str(single), "--boot", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --top 5 --boot 0: expected ints >= 1"


# ---------------------------------------------------------------------------------- the browser


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    why = os.environ.get("LAYERSCOPE_NO_BROWSER") or "none installed"
    pytest.skip(f"browser test skipped: no headless Chromium on PATH (tried {', '.join(BROWSERS)}): {why}. "
                ".ci/run installs it with `apt-get install chromium`; do that to run this test")


@pytest.fixture(scope="module")
def browser() -> str:
    """The headless browser, found before the sweep fixture runs (so a machine without one skips at once)."""
    return _browser()


def chromium(args: list[str], browser: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Headless Chromium with ``args`` (``--dump-dom URL``, ``--screenshot=F URL``); a private profile."""
    import tempfile

    browser = browser or _browser()
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                               "--no-first-run", "--mute-audio", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


def screenshot(url: str, out: Path, size: tuple[int, int] = (1400, 1000), browser: str | None = None,
               extra: tuple[str, ...] = ()) -> Path:
    """A PNG of ``url`` at ``size`` (the window). Headless screenshots of a scrolled page come out
    blank, so the page must not scroll (the report scrolls to its images only when they are out of sight)."""
    proc = chromium([*extra, f"--screenshot={out}", f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=5000",
                     url], browser)
    assert out.is_file(), proc.stderr[-2000:]
    return out


HARNESS = """<!DOCTYPE html><html><body style="margin:0">
<iframe id=f src="{page}" style="border:0;width:100vw;height:100vh"></iframe><div id=out></div>
<script>
document.getElementById("f").addEventListener("load", function () {{
  var d = this.contentDocument, a = d.querySelector('.th[data-id="{image}"]');
  if (!a) {{ document.getElementById("out").setAttribute("data-error", "no thumbnail"); return; }}
  a.click();
  var detail = d.getElementById("detail"), out = document.getElementById("out");
  out.setAttribute("data-image", detail.getAttribute("data-image") || "");
  out.setAttribute("data-selected", (d.querySelector(".th.sel") || {{dataset: {{}}}}).dataset.id || "");
  out.setAttribute("data-hash", this.contentWindow.location.hash);
  out.innerHTML = detail.innerHTML;
}});
</script></body></html>
"""


@pytest.mark.slow
def test_browser_opens_the_page_clicks_an_image_and_shows_its_grid(browser, sweep, tmp_path):
    build(sweep, n_boot=100)
    page = sweep / REPORT
    data = json.loads(_parse(page).data)
    first, other = data["images"][0]["id"], data["images"][-1]["id"]
    cells = sum(len(s["layers"]) * len(s["names"]) for s in data["series"])

    # 1. open with #image=<id>: the script selects that image, builds its grids and metric tables
    started = time.perf_counter()
    proc = chromium(["--virtual-time-budget=5000", "--dump-dom", f"{page.as_uri()}#image={other}"], browser)
    seconds = time.perf_counter() - started
    dom = re.sub(r"<script.*?</script>", "", proc.stdout, flags=re.S)  # the page's elements, not its code
    assert f'id="detail" class="detail" data-image="{other}"' in dom, proc.stderr[-2000:]
    assert dom.count('class="gc') == cells  # every layer x map of both models
    assert dom.count("<table class=\"maptable\">") == len(data["series"])
    assert len(re.findall(r'<tr data-r="\d+" data-k="\d+"', dom)) == cells
    assert 'class="sprite" loading="lazy"' in dom
    ready = int(re.search(r'data-ready-ms="(\d+)"', dom).group(1))  # recorded, not asserted: speed varies
    (tmp_path / "timing.txt").write_text(f"dump-dom {seconds:.2f} s, script ready at {ready} ms\n")

    # 2. a real click on another thumbnail (a harness page beside the report, file access allowed)
    harness = sweep / "click_harness.html"
    harness.write_text(HARNESS.format(page=REPORT, image=first))
    proc = chromium(["--allow-file-access-from-files", "--virtual-time-budget=5000", "--dump-dom", harness.as_uri()],
                    browser)
    dom = re.sub(r"<script.*?</script>", "", proc.stdout, flags=re.S)
    assert f'data-image="{first}"' in dom and f'data-selected="{first}"' in dom, (dom[-3000:], proc.stderr[-2000:])
    assert f'data-hash="#image={first}"' in dom  # the click wrote the image into the address
    assert dom.count('class="gc') == cells and dom.count('class="maptable"') == len(data["series"])
    assert 'class="bc"' in dom  # the enlarged maps of the selected layer

    # 3. what it looks like after the click, saved with the test's output
    shot = screenshot(harness.as_uri(), tmp_path / "report_page.png", browser=browser,
                      extra=("--allow-file-access-from-files",))
    picture = np.asarray(Image.open(shot).convert("RGB"))
    assert picture.shape[:2] == (1000, 1400)
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 500  # rendered content, not a blank page
    harness.unlink()


@pytest.mark.slow
def test_wandb_logs_the_page_as_a_report_artifact(single, tmp_path):
    from layerscope.loggers.offline import _records

    code = ("import sys\nfrom pathlib import Path\nfrom omegaconf import OmegaConf\n"
            "from layerscope.loggers.wandb_logger import WandbLogger\n"
            "logger = WandbLogger(mode='offline')\n"
            "logger.start(OmegaConf.create({'data': {'name': 'synthetic'}}), Path(sys.argv[1]), 'tiny_vit', 'x')\n"
            "logger.log_report(Path(sys.argv[2]))\nlogger.finish(True)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(single / REPORT)], env=env,
                          capture_output=True, text=True, timeout=300)  # its own process: W&B flushes on exit
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_file = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))[-1]
    artifacts = [r.artifact for r in _records(run_file) if r.WhichOneof("record_type") == "artifact"]
    assert [a.type for a in artifacts] == ["report"]
    paths = {entry.path for entry in artifacts[0].manifest.contents}
    assert REPORT in paths and any(p.startswith("report_files/thumb/") for p in paths)


# ------------------------------------------------------------------------------ paper figures


def test_relative_depth():
    assert list(relative_depth(np.arange(12), 12)) == pytest.approx(np.arange(12) / 11)
    assert list(relative_depth(np.arange(5), 5)) == [0, 0.25, 0.5, 0.75, 1]
    assert float(relative_depth(0, 1)) == 1.0


@pytest.mark.slow
def test_identical_jobs_merge_and_differing_ones_stay_apart(sweep, tmp_path):
    study = Study(sweep)
    assert study.merged == {"2": "1"}
    assert study.series() == ["tiny_cnn · features", "tiny_vit · cls_attention"]
    assert set(study.df["job"]) == {"0", "1"}
    other = tmp_path / "other"
    shutil.copytree(sweep / "1", other / "1")
    shutil.copytree(sweep / "1", other / "2")
    df = pd.read_csv(other / "2" / "results.csv", dtype={"head": str})
    df["auroc"] = df["auroc"] * 0.5  # same rows, other values: a sweep over some other option
    df.to_csv(other / "2" / "results.csv", index=False)
    study = Study(other)
    assert study.merged == {}
    assert study.series() == ["tiny_cnn · features · job 1", "tiny_cnn · features · job 2"]


@pytest.mark.slow
def test_layer_head_heatmap_and_relative_depth_figures(sweep, tmp_path):
    paths = layer_head(sweep, tmp_path, ("png",), ("aupro", "entropy"))
    assert [p.name for p in paths] == ["layer_head_aupro.png", "layer_head_entropy.png"]
    assert all(p.read_bytes().startswith(PNG) and p.stat().st_size > 4096 for p in paths)
    paths = metric_vs_layer(sweep, tmp_path, ("png",), ("auroc",), depth="relative")
    assert [p.name for p in paths] == ["metric_vs_depth_auroc.png"]
    with pytest.raises(ValueError, match="--depth"):
        metric_vs_layer(sweep, tmp_path, ("png",), ("auroc",), depth="nonsense")
    proc = _cli(["-m", "layerscope.figures", str(sweep), "--out", str(tmp_path / "cli"), "--formats", "png",
                 "--kinds", "layer_head", "metric_vs_layer", "--metric", "iou", "--depth", "relative"], ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(Path(p).name for p in proc.stdout.split()) == ["layer_head_iou.png", "metric_vs_depth_iou.png"]
    assert "jobs 1 and 2 hold identical results" in proc.stderr


if __name__ == "__main__":  # python tests/test_view.py RUN_DIR OUT.png [WIDTHxHEIGHT] [IMAGE]
    run, target = Path(sys.argv[1]), Path(sys.argv[2])
    width, height = map(int, (sys.argv[3] if len(sys.argv) > 3 else "1400x1000").split("x"))
    report = build(run)
    anchor = f"#image={sys.argv[4]}" if len(sys.argv) > 4 else ""
    screenshot(report.as_uri() + anchor, target, (width, height), shutil.which("chromium"))
    small = Image.open(target).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(target, optimize=True)  # 256 colours: a third of the size, the text stays sharp
    print(target, f"{target.stat().st_size / 1e3:.0f} KB")


def test_a_held_out_value_that_is_undefined_reads_as_a_dash(tmp_path):
    """A held-out choice on images without a good one has no false-alarm rate (JSON null): the page says so
    instead of stopping."""
    import json
    from types import SimpleNamespace

    from layerscope.view.sections import choice_section

    choice = {"metric": "aupro", "threshold": 0.5, "threshold_rule": "fpr", "calibration_images": ["a"],
              "held_out_images": ["b"], "chosen": {"model": "m", "method": "x", "layer": 3, "head": "mean"},
              "held_out": {"aupro": {"value": 0.3649, "ci": [0.1651, 0.4623]},
                           "image_false_alarm_rate": {"value": None, "ci": [None, None]}}}
    (tmp_path / "choice_aupro.json").write_text(json.dumps(choice))
    page = choice_section(SimpleNamespace(root=tmp_path))
    assert "<b>0.365</b></td><td class=ci>[0.165, 0.462]" in page
    assert "image_false_alarm_rate</td><td class=n><b><span title=undefined>–</span></b>" in page
