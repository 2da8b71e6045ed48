"""Maps that survive model-parameter randomisation: flagged in the report and the page.

A run with ``metrics.randomisation`` writes ``mprt_spearman`` per map (``metrics.randomisation``); a candidate map
(model, method, layer, head) whose mean over images is at least ``FLAG`` ranks the cells nearly as the trained
model's map did after the weights were re-initialised: it does not depend on the learned weights
(Adebayo et al. 2018). This module imports no torch.
"""
from __future__ import annotations

import html

import pandas as pd

from ..results.catalog import CANDIDATE
from .fewshot import t_interval

FLAG = 0.5  # the same value as metrics.randomisation.FLAG (kept here so the report needs no torch)
NOTE = "does not depend on the learned weights"


def weight_independent(rows: pd.DataFrame, flag: float = FLAG) -> pd.DataFrame:
    """Candidates whose mean ``mprt_spearman`` over images is >= ``flag``.

    Args:
        rows: ``results.csv`` rows (any thresholds; ``best`` rows are left out).

    Returns:
        Columns ``model, method, layer, head, mprt_spearman, ci_low, ci_high, mprt_ssim, n_images`` (the mean's
        95% Student-t interval over the images with a value; NaN for one image), highest first; empty without
        the column or its values.
    """
    columns = [*CANDIDATE, "mprt_spearman", "ci_low", "ci_high", "mprt_ssim", "n_images"]
    if "mprt_spearman" not in rows.columns:
        return pd.DataFrame(columns=columns)
    r = rows[(rows["head"].astype(str) != "best") & rows["mprt_spearman"].notna()]
    if r.empty:
        return pd.DataFrame(columns=columns)
    per_image = r.drop_duplicates([*CANDIDATE, "image"])  # one row per image (thresholds repeat the value)
    table = per_image.groupby(list(CANDIDATE), as_index=False).agg(
        mprt_spearman=("mprt_spearman", "mean"), ci_low=("mprt_spearman", lambda v: t_interval(v)[0]),
        ci_high=("mprt_spearman", lambda v: t_interval(v)[1]), mprt_ssim=("mprt_ssim", "mean"),
        n_images=("image", "nunique"))
    flagged = table[table["mprt_spearman"] >= flag].sort_values("mprt_spearman", ascending=False)
    return flagged[columns].reset_index(drop=True)


def _interval(r) -> str:
    """``[low, high]`` (95% t-interval over images), or ``[no interval: 1 image]``."""
    if pd.isna(r.ci_low):
        return "[no interval: 1 image]"
    return f"[{r.ci_low:.2f}, {r.ci_high:.2f}]"


def flags_markdown(table: pd.DataFrame, flag: float = FLAG) -> str:
    """A markdown paragraph naming every flagged map (empty string when none)."""
    if table.empty:
        return ""
    lines = [f"\n**Maps that survive weight randomisation** (mean MPRT Spearman >= {flag:g}, 95% t-interval over "
             f"images; {NOTE}):\n"]
    for r in table.itertuples():
        lines.append(f"- {r.model} {r.method} layer {r.layer} head {r.head}: MPRT Spearman {r.mprt_spearman:.2f} "
                     f"{_interval(r)}, SSIM {r.mprt_ssim:.2f} over {r.n_images} images: {NOTE}")
    return "\n".join(lines) + "\n"


def flags_section(rows: pd.DataFrame, flag: float = FLAG) -> str:
    """The page's ``<section id=sanity>`` listing flagged maps; empty string when the runs did not measure it."""
    if "mprt_spearman" not in rows.columns or rows["mprt_spearman"].isna().all():
        return ""
    table = weight_independent(rows, flag)
    if table.empty:
        body = f"<p>No map survives weight randomisation (every mean MPRT Spearman &lt; {flag:g}).</p>"
    else:
        items = "".join(f"<li>{html.escape(str(r.model))} {html.escape(str(r.method))} layer {r.layer} head "
                        f"{html.escape(str(r.head))}: MPRT Spearman {r.mprt_spearman:.2f} {_interval(r)}, "
                        f"SSIM {r.mprt_ssim:.2f} "
                        f"over {r.n_images} images: <b>{NOTE}</b></li>" for r in table.itertuples())
        body = (f"<p>Mean MPRT Spearman &gt;= {flag:g} (Adebayo et al. 2018), 95% t-interval over images:</p>"
                f"<ul>{items}</ul>")
    return f"<section id=sanity><h2>Weight randomisation</h2>{body}</section>"
