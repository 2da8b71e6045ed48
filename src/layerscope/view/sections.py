"""The page's sections around the images, each a function returning its ``<section>``: the summary line, at a
glance (layer x head heatmaps), which layer finds it (the rankings), by layer (curves), the held-out choice
and the runs. Every text that comes from a file is escaped."""
from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ..figures.style import PALETTE
from ..results import catalog, layout
from ..results.axes import axis_word, map_label
from ..analysis.saved import (SEP, Study, head_order, layer_head_scores, line_head, num_layers, relative_depth,
                             smallest_threshold)
from ..results.table import read_table
from .charts import line_chart
from .html import colour_legend, esc, fmt, hex_colour, ink, num, relpath


def job_entries(study: Study) -> tuple[list[dict[str, Any]], int]:
    """One entry per run folder, failed and unfinished ones included (``results.jobs``): job, state,
    why, summary (run_summary.json), config text, overrides; and the sweep's planned jobs never started."""
    from ..results.jobs import job_states
    from ..results.rundir import job_overrides

    states, never = job_states(study.root)
    out = []
    for job, state, why in states:
        folder = study.root / job
        summary_file, config_file = folder / layout.SUMMARY, folder / layout.CONFIG
        try:
            summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        except ValueError:  # cut short: shown as unfinished
            summary = None
        summary = summary if isinstance(summary, dict) else None
        if state == "finished" and not (summary or {}).get("complete"):
            state, why = "unfinished", f"{layout.SUMMARY} unreadable"
        config = config_file.read_text(errors="replace") if config_file.is_file() else ""
        out.append({"job": job, "state": state, "why": why, "summary": summary, "config": config,
                    "overrides": job_overrides(folder), "merged": study.merged.get(job)})
    return out, never


def runs_section(study: Study, jobs: list[dict[str, Any]]) -> str:
    df = study.df
    rows = []
    for j in jobs:
        part = df[df["job"] == j["job"]]
        s = j["summary"] or {}
        model = s.get("model") or (part["model"].iloc[0] if len(part) else "")
        method = s.get("method") or (part["method"].iloc[0] if len(part) else "")
        overrides = " ".join(f"{k}={v}" for k, v in j["overrides"].items())
        state = j["state"] if j["state"] == "finished" else f"{j['state']}: {j['why']}"
        state = f"{state}; same results as job {j['merged']}, shown once" if j["merged"] else state
        seconds = f"{s['seconds']:.0f} s" if isinstance(s.get("seconds"), (int, float)) else ""
        mark = "" if j["state"] == "finished" else f" class={j['state']}"
        rows.append(f"<tr{mark}><td>{esc(j['job'])}</td><td>{esc(model)}</td><td>{esc(method)}</td>"
                    f"<td>{esc(overrides)}</td><td class=n>{esc(s.get('images', part['image'].nunique()))}</td>"
                    f"<td class=n>{esc(s.get('rows', len(part)))}</td><td class=n>{seconds}</td><td>{esc(state)}</td>"
                    "</tr>")
    details = []
    for j in jobs:
        name = "this run" if j["job"] == "." else f"job {j['job']}"
        body = esc(j["config"] or "(no config.yaml)")
        summary = esc(json.dumps(j["summary"], indent=1)) if j["summary"] else "(no run_summary.json)"
        details.append(f"<details><summary>config and summary of {esc(name)}</summary><div class=cfg>"
                       f"<pre>{body}</pre><pre>{summary}</pre></div></details>")
    return (f"<section id=runs><h2>Runs</h2><table class=t><thead><tr><th>job</th><th>model</th><th>method</th>"
            "<th>overrides</th><th>images</th><th>rows</th><th>time</th><th>state</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>{''.join(details)}</section>")


def _run_count(jobs: list[dict[str, Any]], never: int) -> str:
    """``3 runs (1 finished, 1 failed, 1 unfinished; 2 planned never started)``: nothing that did not finish hidden."""
    counts = {state: sum(j["state"] == state for j in jobs) for state in ("finished", "failed", "unfinished")}
    parts = ", ".join(f"{n} {state}" for state, n in counts.items() if n or state == "finished")
    return (f"<b>{len(jobs)}</b> run{'s' if len(jobs) != 1 else ''} ({parts}"
            f"{f'; {never} planned never started' if never else ''})")


def summary_section(study: Study, jobs: list[dict[str, Any]], never: int, metric: str) -> str:
    df = study.df
    thresholds = sorted(df["threshold"].dropna().unique())
    rule = ", ".join(sorted(df["threshold_rule"].astype(str).unique()))
    categories = sorted(str(c) for c in df["category"].unique() if c)
    facts = [_run_count(jobs, never),
             f"<b>{len(study.series())}</b> model · method: {esc(', '.join(study.series()))}",
             f"<b>{df['image'].nunique()}</b> images", f"defect types: {esc(', '.join(categories) or '–')}",
             f"threshold ({esc(rule)}) {esc(', '.join(f'{t:g}' for t in thresholds) or '–')}"
             f"{' (the smallest is shown)' if len(thresholds) > 1 else ''}",
             f"metric: <b>{esc(catalog.title(metric))}</b> ({'lower' if catalog.lower_is_better(metric) else 'higher'}"
             " is better)"]
    merged = "".join(f"<p class=note>Job {esc(job)} holds the same results as job {esc(kept)} (e.g. "
                     "<code>method=auto</code> and <code>method=features</code> on a CNN): shown once.</p>"
                     for job, kept in study.merged.items())
    broken = [j for j in jobs if j["state"] != "finished"]
    warn = ""
    if broken or never:
        names = "; ".join(f"{'this run' if j['job'] == '.' else 'job ' + j['job']} {j['state']}: {j['why']}"
                          for j in broken)
        later = f"{'; ' if names else ''}{never} planned job(s) never started" if never else ""
        warn = (f"<p class=warn>Not every run finished: {esc(names)}{esc(later)}. The page shows the images each run "
                "finished (see <a href=\"#runs\">runs</a>).</p>")
    return f"<section id=summary><p class=facts>{' · '.join(facts)}</p>{warn}{merged}</section>"


def series_scores(study: Study, metric: str, ranked: pd.DataFrame, n_boot: int) -> dict[str, pd.DataFrame]:
    """Per series, the layer x head table of ``metric`` (``layer_head_scores``' columns). A series that is
    one (model, method) takes its numbers from the per-image ranking's ``all`` rows, so the heatmap, the
    curves and the ranking print the same mean and CI; other series (several sizes or jobs) get their own."""
    out = {}
    everything = ranked[ranked["category"] == "all"]
    for series in study.series():
        info = study.info(series)
        if series != f"{info['model']}{SEP}{info['method']}":
            out[series] = layer_head_scores(study, series, metric, n_boot=n_boot)
            continue
        table = everything[(everything["model"] == info["model"]) & (everything["method"] == info["method"])]
        table = table[["layer", "head", "mean", "ci_low", "ci_high", "n"]].astype({"layer": int, "head": str})
        order = {h: i for i, h in enumerate(head_order(table["head"]))}
        table = table.sort_values(["layer", "head"], key=lambda c: c.map(order) if c.name == "head" else c)
        table = table.reset_index(drop=True)
        if len(table):
            best = table["mean"].idxmin() if catalog.lower_is_better(metric) else table["mean"].idxmax()
            table["best"] = table.index == best
        else:
            table["best"] = pd.Series(dtype=bool)
        out[series] = table
    return out


def glance_section(study: Study, scores: dict[str, pd.DataFrame], metric: str, series_index: dict[str, int]) -> str:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    tables = {s: t for s, t in scores.items() if not t.empty}
    if not tables:
        return f"<section id=glance><h2>At a glance</h2><p>No {esc(catalog.title(metric))} values.</p></section>"
    values = pd.concat([t["mean"] for t in tables.values()])
    low, high = float(values.min()), float(values.max())
    span = high - low if high > low else 1.0
    m = catalog.get(metric)
    blocks = []
    for series, table in tables.items():
        heads = head_order(table["head"])
        cells = {(int(r.layer), r.head): r for r in table.itertuples()}
        best = table[table["best"]].iloc[0]
        head_kind = axis_word(study.info(series)["method"])
        rows = ["<tr><th></th>" + "".join(f"<th>{esc(h)}</th>" for h in heads) + "</tr>"]
        for layer in sorted(table["layer"].unique()):
            tds = []
            for h in heads:
                r = cells.get((int(layer), h))
                if r is None:
                    tds.append("<td></td>")
                    continue
                rgba = cmap((r.mean - low) / span)
                ci = f" [{fmt(metric, r.ci_low)}, {fmt(metric, r.ci_high)}]" if r.ci_low == r.ci_low else ""
                tip = f"layer {layer} · {head_kind} {h}: {m.title} {fmt(metric, r.mean)}{ci}, {r.n} images"
                mark = " class=best" if r.best else ""
                tds.append(f"<td{mark} style=\"background:{hex_colour(rgba)};color:{ink(rgba)}\" title=\"{esc(tip)}\" "
                           f"data-s={series_index.get(series, -1)} data-layer={int(layer)}>"
                           f"{fmt(metric, r.mean).lstrip('0') or '0'}</td>")
            rows.append(f"<tr><th>L{int(layer)}</th>{''.join(tds)}</tr>")
        ci = (f" [{fmt(metric, best['ci_low'])}, {fmt(metric, best['ci_high'])}]"
              if best["ci_low"] == best["ci_low"] else "")
        blocks.append(f"<div class=hm><h3>{esc(series)}</h3><p class=bestline>best: <b>layer {int(best['layer'])} · "
                      f"{esc(head_kind)} {esc(best['head'])}</b>, {esc(m.title)} {fmt(metric, best['mean'])}{ci}</p>"
                      f"<table class=heat>{''.join(rows)}</table></div>")
    legend = colour_legend(cmap, fmt(metric, low), fmt(metric, high), f"{esc(m.label)}, mean over images; the best "
                           "cell is outlined; hover a cell for its 95% CI, click it to see that layer below")
    return (f"<section id=glance><h2>At a glance: which layer, which head?</h2>{legend}"
            f"<div class=row>{''.join(blocks)}</div></section>")


def _dataset_table(study: Study) -> pd.DataFrame | None:
    files = sorted(study.root.rglob(layout.DATASET_METRICS))
    if not files:
        return None
    frames = []
    for f in files:
        t = read_table(f)
        t["job"] = relpath(f.parent, study.root)
        frames.append(t)
    table = pd.concat(frames, ignore_index=True)
    return table[~table["job"].isin(list(study.merged))]


def ranking_section(study: Study, metric: str, ranked: pd.DataFrame, top: int) -> str:
    from ..analysis.leaderboard import rank_dataset

    m = catalog.get(metric)
    dataset = _dataset_table(study)
    dataset_metric = None
    if dataset is not None:
        try:
            dataset_metric = catalog.dataset_metric(metric)
        except ValueError:  # a per-image-only metric (IoU, entropy): pooled AUPRO beside it
            dataset_metric = "aupro"
        dataset = rank_dataset(dataset, dataset_metric) if dataset_metric in dataset.columns else None
    several = len(ranked[["model", "method"]].drop_duplicates()) > 1 or (
        dataset is not None and len(dataset[["model", "method"]].drop_duplicates()) > 1)
    who_head = "<th>model · method</th>" if several else ""

    def who(model: object, method: object) -> str:
        return f"<td>{esc(model)} · {esc(method)}</td>" if several else ""

    categories = sorted(set(ranked["category"]) | set(dataset["category"] if dataset is not None else []),
                        key=lambda c: (c != "all", c == "good", c))
    cards = []
    for category in categories:
        part = ranked[ranked["category"] == category].head(top)
        rows = "".join(f"<tr><td class=n>{r.rank}</td>{who(r.model, r.method)}<td class=n>{r.layer}</td>"
                       f"<td>{esc(r.head)}</td><td class=n><b>{fmt(metric, r.mean)}</b></td>"
                       f"<td class=ci>[{fmt(metric, r.ci_low)}, {fmt(metric, r.ci_high)}]</td><td class=n>{r.n}</td>"
                       "</tr>" for r in part.itertuples())
        body = (f"<h4>per image: {esc(m.title)}, mean over images, 95% CI</h4><table class=t><thead><tr><th>#</th>"
                f"{who_head}<th>layer</th><th>head</th><th>mean</th><th>95% CI</th><th>images</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>" if len(part) else "<p class=note>no per-image value</p>")
        if dataset is not None:
            d = dataset[dataset["category"] == category].head(top)
            low, high = f"{dataset_metric}_ci_low", f"{dataset_metric}_ci_high"
            has_ci = low in d.columns and d[low].notna().any()
            drows = []
            for r in d.to_dict("records"):
                ci = f"<td class=ci>[{fmt(dataset_metric, r[low])}, {fmt(dataset_metric, r[high])}]</td>" \
                    if has_ci else ""
                drows.append(f"<tr><td class=n>{r['rank']}</td>{who(r['model'], r['method'])}"
                             f"<td class=n>{r['layer']}</td><td>{esc(r['head'])}</td>"
                             f"<td class=n><b>{fmt(dataset_metric, r[dataset_metric])}</b></td>{ci}"
                             f"<td class=n>{fmt('image_auroc', r.get('image_auroc'))}</td></tr>")
            body += (f"<h4>dataset level: pooled {esc(catalog.title(dataset_metric))}, one threshold for all images"
                     f"</h4><table class=t><thead><tr><th>#</th>{who_head}<th>layer</th><th>head</th><th>pooled</th>"
                     f"{'<th>95% CI</th>' if has_ci else ''}<th>image AUROC</th></tr></thead><tbody>{''.join(drows)}"
                     "</tbody></table>")
        cards.append(f"<div class=card><h3>{esc(category or '(no category)')}</h3>{body}</div>")
    single = "" if several else f" ({esc(' · '.join(ranked[['model', 'method']].iloc[0]))})" if len(ranked) else ""
    note = ("" if dataset is not None else "<p class=note>No dataset-level protocol here: <code>layerscope-report "
            "DIR --protocol dataset</code> writes <code>dataset_metrics.csv</code>.</p>")
    return (f"<section id=ranking><h2>Which layer finds it, per defect type{single}</h2><p class=note>Per image: "
            "each image scored on its own, then the mean over images (<code>layerscope-report</code>'s ranking). "
            "Dataset level: every pixel of every image pooled, good images included (MVTec AD's protocol). Both "
            "choose on the images they report on: the held-out choice gives an honest estimate.</p>"
            f"{note}<div class=cards>{''.join(cards)}</div></section>")


def curves_section(study: Study, metric: str, scores: dict[str, pd.DataFrame], n_boot: int, depth: str) -> str:
    colours = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(study.series())}
    metrics = list(dict.fromkeys([metric, *(m for m in catalog.DEFAULT_CURVES)]))
    rows = smallest_threshold(study.df[study.df["head"] != "best"])
    charts, legend = [], {}
    for name in metrics:
        if name not in rows.columns or rows[name].isna().all():
            continue
        lines = []
        for series in study.series():
            part = rows[(rows["series"] == series)].dropna(subset=[name])
            if part.empty:
                continue
            table = scores[series] if name == metric else layer_head_scores(study, series, name, n_boot=n_boot)
            method = study.info(series)["method"]
            head = line_head(part, method, name)
            line = table[table["head"] == head].sort_values("layer")
            depths = relative_depth(line["layer"].to_numpy(), num_layers(part))
            label = f"{series}{SEP}{map_label(method, head)}"
            legend[series] = colours[series]
            lines.append({"label": label, "colour": colours[series],
                          "points": [(int(r.layer), float(d), r.mean, r.ci_low, r.ci_high)
                                     for r, d in zip(line.itertuples(), depths)]})
        if lines:
            chart = line_chart(lines, catalog.title(name), value=lambda v, name=name: fmt(name, v),
                               chance=0.5 if name == "auroc" else None, line_width=1.8, dot_radius=3)
            charts.append(f"<figure class=chartbox><figcaption>{esc(catalog.title(name))} by layer (mean over images,"
                          f" 95% CI)</figcaption>{chart}</figure>")
    if not charts:
        return ""
    keys = "".join(f"<span class=key><i style=\"background:{c}\"></i>{esc(s)}</span>" for s, c in legend.items())
    checked = ("", " checked") if depth == "relative" else (" checked", "")
    switch = (f"<div class=switch>x-axis: <label><input type=radio name=depth value=layer{checked[0]}> layer</label>"
              f"<label><input type=radio name=depth value=relative{checked[1]}> relative depth (0 = first layer, "
              "1 = last: models of different depths on one axis)</label></div>")
    return (f"<section id=curves><h2>By layer</h2>{switch}<div class=keys>{keys}</div><p class=note>One line per "
            "model · method: the head mean for attention, else the map best on average; hover a point for its value."
            f"</p><div class=row>{''.join(charts)}</div></section>")


def _three(value: object) -> str:
    """A held-out value to 3 decimals, or ``–`` where it is undefined (JSON null: e.g. a false-alarm rate
    without a good image)."""
    v = num(value, 17)
    return "<span title=undefined>–</span>" if v is None else f"{v:.3f}"


def choice_section(study: Study) -> str:
    files = sorted(study.root.rglob(layout.CHOICE_GLOB))
    if not files:
        return ""
    blocks = []
    for path in files:
        try:
            r = json.loads(path.read_text())
            c = r["chosen"]
        except (ValueError, KeyError) as e:
            blocks.append(f"<p class=note>{esc(path.name)}: unreadable ({esc(e)})</p>")
            continue
        where = relpath(path.parent, study.root)
        job = "" if c.get("job") in (None, ".") else f" (job {esc(c['job'])})"
        held = "".join(f"<tr><td>{esc(k)}</td><td class=n><b>{_three(v['value'])}</b></td><td class=ci>"
                       f"[{_three(v['ci'][0])}, {_three(v['ci'][1])}]</td></tr>" for k, v in r.get("held_out", {}).items())
        stab = "".join(f"<tr><td>{esc(s['model'])} · {esc(s['method'])}</td><td class=n>{s['layer']}</td>"
                       f"<td>{esc(s['head'])}</td><td class=n>{s['wins']:.2f}</td></tr>" for s in r.get("stability", []))
        econ = r.get("economics", {}).get("verdict", "")
        blocks.append(
            f"<div class=card><h3>{esc(path.name)}{'' if where == '.' else ' in ' + esc(where)}</h3>"
            f"<p>Chosen by pooled <b>{esc(r['metric'])}</b> on {len(r.get('calibration_images', []))} calibration "
            "images "
            f"among {r.get('candidates', '?')} candidates: <b>{esc(c['model'])} · {esc(c['method'])} · layer "
            f"{esc(c['layer'])} · {esc(c['head'])}</b>{job}; threshold {r['threshold']:.4g} ({esc(r['threshold_rule'])})."
            f"</p><h4>on the {len(r.get('held_out_images', []))} held-out images</h4><table class=t><thead><tr>"
            f"<th>metric</th><th>value</th><th>95% CI</th></tr></thead><tbody>{held}</tbody></table>"
            f"<h4>stability: share of {r.get('n_stability', '?')} calibration resamples won</h4><table class=t>"
            f"<thead><tr><th>model · method</th><th>layer</th><th>head</th><th>wins</th></tr></thead><tbody>{stab}"
            f"</tbody></table>{f'<p>{esc(econ)}</p>' if econ else ''}</div>")
    return f"<section id=choice><h2>Held-out choice</h2><div class=cards>{''.join(blocks)}</div></section>"
