"""``layerscope-view DIR``: one self-contained HTML page per run or sweep, to look at offline.

    layerscope-view RUN_OR_MULTIRUN_DIR [--metric aupro] [--depth layer|relative] [--top 5] [--boot 1000]
                    [--out FILE]

Writes ``DIR/report.html`` and its pictures beside it in ``DIR/report_files/``; no network, no CDN,
no framework: it opens from ``file://`` in any browser, also on an air-gapped machine. The page holds,
in this order:

- a summary line: runs, models and methods, images, defect types, threshold, the page's metric;
- at a glance: a layer x head heatmap of the chosen metric per (model, method), best cell marked;
- images: selecting one (a click, or ``report.html#image=<id>[&layer=L]``) shows, per (model,
  method) side by side, one layer's maps large with a slider (and buttons, arrow keys) stepping
  through layers, the whole layer x map grid with the mask outline, each map's metrics on hover
  and in a table;
- which layer finds it, per defect type: the per-image ranking (``analysis.leaderboard.rank``, mean
  over images, 95% bootstrap CI) beside the dataset-level one (``dataset_metrics.csv``) where present;
- metric against layer per (model, method), with a switch to relative depth (0 = first layer, 1 = last);
- the held-out choice (``choice_<metric>.json``) where present;
- the runs: each job's model, method, overrides, images, rows and time, its config and summary.

Reads only saved results (``results.csv``, ``maps/*.npz``, ``dataset_metrics.csv``, ``choice_*.json``);
never loads a model. Pictures: a JPEG thumbnail and input per image, and per (model, method, image)
one palette PNG of every map (each on its own grid, at most ``MAX_TILE`` px; min-max scaled per map,
inferno), loaded only when the image is shown; the per-map metrics are embedded as JSON.

Modules: ``page`` (the page and how it is written), ``sections`` (summary, glance, ranking, curves, choice,
runs), ``gallery`` and ``pictures`` (the images), ``compare`` (beyond masks), ``charts`` (the one SVG chart),
``html`` (escaping and formats); ``assets/report.css`` and ``assets/report.js`` are inlined into every
page. The saved results are read by ``analysis.saved.Study``, as the figures read them. The command (its
options and errors) is ``layerscope.cli.view``.
"""
from __future__ import annotations

from .page import DEFAULT_METRICS, MARKER, REPORT, ViewError, build, check_out, pick_metric

__all__ = ["DEFAULT_METRICS", "MARKER", "REPORT", "ViewError", "build", "check_out", "pick_metric"]
