"""The page's few-shot section: for a sweep over ``method.n_references`` and ``seed``, a shots x layer table of
the page's metric (mean over reference seeds and its 95% t-interval across seeds, ``analysis.fewshot``) per
(model, method, map), and the held-out choice of layer per shot count when ``layerscope-report --calibration``
wrote it (``fewshot_choice_<metric>_summary.csv``)."""
from __future__ import annotations

import pandas as pd

from ..analysis import fewshot
from ..results import catalog, layout
from ..analysis.saved import Study
from ..results.table import read_table
from .html import esc, fmt


def _cell(metric: str, r: dict | None, best: bool) -> str:
    if r is None:
        return "<td></td>"
    ci = f"<br><span class=ci>[{fmt(metric, r['ci_low'])}, {fmt(metric, r['ci_high'])}]</span>" \
        if r["ci_low"] == r["ci_low"] else ""
    value = fmt(metric, r["mean"])
    return f"<td class=n>{'<b>' + value + '</b>' if best else value}{ci}</td>"


def _shots_table(metric: str, block: pd.DataFrame) -> str:
    layers = sorted(block["layer"].unique())
    lower = catalog.lower_is_better(metric)
    rows = []
    for shots, row in block.groupby(fewshot.SHOTS, sort=False):
        by_layer = {int(r["layer"]): r for r in row.to_dict("records")}
        best = (min if lower else max)(by_layer, key=lambda layer: by_layer[layer]["mean"])
        rows.append(f"<tr><td class=n>{esc(shots)}</td><td class=n>{int(row['n_seeds'].max())}</td>"
                    + "".join(_cell(metric, by_layer.get(layer), layer == best) for layer in layers) + "</tr>")
    head = "".join(f"<th>layer {layer}</th>" for layer in layers)
    return (f"<table class=t><thead><tr><th>shots</th><th>seeds</th>{head}</tr></thead><tbody>{''.join(rows)}"
            "</tbody></table>")


def _choice_cards(study: Study) -> str:
    cards = []
    for path in sorted(study.root.glob(f"{layout.FEWSHOT_CHOICE}*_summary.csv")):
        try:
            table = read_table(path)
        except (ValueError, OSError) as e:
            cards.append(f"<p class=note>{esc(path.name)}: unreadable ({esc(e)})</p>")
            continue
        metric = path.name[len(layout.FEWSHOT_CHOICE):-len("_summary.csv")]
        for (model, method), part in table.groupby(["model", "method"], sort=False):
            def ci(r: dict, name: str) -> str:
                low, high = r.get(f"{name}_ci_low"), r.get(f"{name}_ci_high")
                band = f" <span class=ci>[{low:.3f}, {high:.3f}]</span>" if low == low and low is not None else ""
                return f"<td class=n>{r[name]:.3f}{band}</td>"
            rows = "".join(f"<tr><td class=n>{esc(r[fewshot.SHOTS])}</td><td>{esc(r['chosen_layers'])}</td>"
                           f"{ci(r, 'held_out')}<td>{esc(r['best_layers'])}</td>{ci(r, 'best_held_out')}"
                           f"{ci(r, 'gap')}{ci(r, 'last_held_out')}</tr>" for r in part.to_dict("records"))
            cards.append(f"<div class=card><h3>held-out choice by pooled {esc(metric)}: {esc(model)} · "
                         f"{esc(method)}</h3><table class=t><thead><tr><th>shots</th><th>layers chosen (per seed)</th>"
                         "<th>held-out</th><th>best in hindsight</th><th>its value</th><th>gap</th><th>last layer</th>"
                         f"</tr></thead><tbody>{rows}</tbody></table></div>")
    return "".join(cards)


def _pooled_cards(study: Study) -> list[str]:
    """The dataset-level shots x layer tables ``layerscope-report`` wrote (``fewshot_dataset_<metric>.csv``)."""
    cards = []
    for path in sorted(study.root.glob(f"{layout.fewshot_stem('*', 'dataset')}.csv")):
        metric = path.stem[len(layout.fewshot_stem("", "dataset")):]
        try:
            table = read_table(path)
        except (ValueError, OSError) as e:
            cards.append(f"<p class=note>{esc(path.name)}: unreadable ({esc(e)})</p>")
            continue
        table = table[table["category"] == "all"]
        for (model, method, head), block in table.groupby(["model", "method", "head"], sort=False):
            cards.append(f"<div class=card><h3>dataset level, pooled {esc(metric)}: {esc(model)} · {esc(method)} · "
                         f"{esc(head)}</h3>{_shots_table(metric, block)}</div>")
    return cards


def fewshot_section(study: Study, metric: str) -> str:
    """The section, or "" when the folder's jobs do not vary the shot count or the seed."""
    settings = fewshot.job_settings(study.root)
    if not fewshot.is_sweep(settings) or metric not in study.df.columns:
        return ""
    table = fewshot.across_seeds(fewshot.per_image_values(study.df, metric), settings)
    table = table[table["category"] == "all"]
    cards = [f"<div class=card><h3>{esc(model)} · {esc(method)} · {esc(head)}</h3>{_shots_table(metric, block)}</div>"
             for (model, method, head), block in table.groupby(["model", "method", "head"], sort=False)]
    cards += _pooled_cards(study)
    return (f"<section id=fewshot><h2>Few-shot: by shots and layer</h2><p class=note>Per image "
            f"{esc(catalog.title(metric))}, all images: mean over reference seeds and its 95% t-interval across seeds "
            "(the seeds draw the normal reference images); the best layer of each shot count in bold. "
            "<code>layerscope-report DIR --calibration 0.5</code> adds the pooled (dataset-level) tables and the "
            "held-out choice of layer per shot count."
            f"</p><div class=cards>{''.join(cards)}{_choice_cards(study)}</div></section>")
