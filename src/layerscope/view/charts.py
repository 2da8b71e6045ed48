"""The page's one SVG chart: values against layer and against relative depth, inline, no script.

Used by the curves section (a metric per layer, 95% CI bands) and the comparison section (probe accuracy,
attention distance per head). The page's depth switch shows one of the two x-axes (classes ``xl``, ``xd``).
"""
from __future__ import annotations

from typing import Any, Callable

from .html import esc, finite

WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 400, 230, 44, 12, 10, 34
X_LABELS = {"xl": "layer (0 = first block)", "xd": "relative depth (0 = first layer, 1 = last)"}


def ticks(low: float, high: float, n: int = 5, integer: bool = False) -> list[float]:
    """At most ``n`` round tick values within [low, high] (matplotlib's ``MaxNLocator``)."""
    from matplotlib.ticker import MaxNLocator

    return [float(t) for t in MaxNLocator(n, integer=integer).tick_values(low, high) if low - 1e-9 <= t <= high + 1e-9]


def _auto_range(series: list[dict[str, Any]]) -> tuple[float, float]:
    """The y-range holding every value and CI end, 5% padded."""
    lows = [p[3] if finite(p[3]) else p[2] for s in series for p in s["points"]]
    highs = [p[4] if finite(p[4]) else p[2] for s in series for p in s["points"]]
    y0, y1 = min(lows), max(highs)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    return y0 - pad, y1 + pad


def line_chart(series: list[dict[str, Any]], y_label: str, y_range: tuple[float, float] | None = None,
               value: Callable[[float], str] = lambda v: f"{v:.3f}", chance: float | None = None,
               line_width: float = 1.6, dot_radius: float = 2.6) -> str:
    """One SVG against layer (class ``xl``) and relative depth (class ``xd``).

    Args:
        series: each with ``label``, ``colour``, ``points`` [(layer, depth, value, ci_low, ci_high)] (NaN CI
            ends: no band), and optionally ``line`` (draw a line, default True), ``dots`` (draw points,
            default True), ``level`` (a dashed line in the series' colour, e.g. a probe's chance), ``dash``
            (draw the line dashed), ``band_opacity`` (the band's fill opacity, default 0.16).
        y_label: the y-axis title.
        y_range: (low, high); default every value and CI end, 5% padded.
        value: how a value reads in a point's tooltip.
        chance: a grey dashed line at this value when it falls inside the range (AUROC's 0.5).
        line_width, dot_radius: the lines' and points' size.

    Returns:
        The ``<svg>`` element.
    """
    w, h, left, right, top, bottom = WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM
    y0, y1 = y_range if y_range else _auto_range(series)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    layers = [p[0] for s in series for p in s["points"]]
    axes = {"xl": (min(layers), max(layers) if max(layers) > min(layers) else min(layers) + 1), "xd": (0.0, 1.0)}

    def py(v: float) -> float:
        return top + (h - top - bottom) * (1 - (v - y0) / (y1 - y0))

    out = [f"<svg class=chart viewBox=\"0 0 {w} {h}\" width={w} height={h} role=img>"]
    for t in ticks(y0, y1):
        out.append(f"<line class=gridl x1={left} x2={w - right} y1={py(t):.1f} y2={py(t):.1f} />"
                   f"<text x={left - 4} y={py(t) + 3:.1f} text-anchor=end>{t:g}</text>")
    if chance is not None and y0 < chance < y1:
        out.append(f"<line class=chance x1={left} x2={w - right} y1={py(chance):.1f} y2={py(chance):.1f} />")
    for s in series:
        if s.get("level") is not None:
            out.append(f"<line x1={left} x2={w - right} y1={py(s['level']):.1f} y2={py(s['level']):.1f} "
                       f"stroke=\"{s['colour']}\" stroke-dasharray=\"4 3\"><title>{esc(s['label'])}: chance "
                       f"{s['level']:.3f}</title></line>")
    for cls, (x0, x1) in axes.items():
        def px(v: float, x0=x0, x1=x1) -> float:
            return left + (w - left - right) * (v - x0) / (x1 - x0)

        g = [f"<g class={cls}>"]
        for t in (ticks(x0, x1, 8, integer=True) if cls == "xl" else [0, 0.25, 0.5, 0.75, 1]):
            g.append(f"<text x={px(t):.1f} y={h - bottom + 14} text-anchor=middle>{t:g}</text>")
        g.append(f"<text class=axl x={(left + w - right) / 2} y={h - 4} text-anchor=middle>{X_LABELS[cls]}</text>")
        for s in series:
            pts = [(px(p[0] if cls == "xl" else p[1]), p) for p in s["points"]]
            band = [(x, p[4]) for x, p in pts if finite(p[4])] + [(x, p[3]) for x, p in reversed(pts) if finite(p[3])]
            if band:
                g.append(f"<polygon points=\"{' '.join(f'{x:.1f},{py(v):.1f}' for x, v in band)}\" "
                         f"fill=\"{s['colour']}\" fill-opacity={s.get('band_opacity', 0.16):g} />")
            if s.get("line", True):
                dash = " stroke-dasharray=\"4 3\"" if s.get("dash") else ""
                g.append(f"<polyline points=\"{' '.join(f'{x:.1f},{py(p[2]):.1f}' for x, p in pts)}\" fill=none "
                         f"stroke=\"{s['colour']}\" stroke-width={line_width:g}{dash} />")
            if s.get("dots", True):
                for x, p in pts:
                    ci = f" [{value(p[3])}, {value(p[4])}]" if finite(p[3]) else ""
                    tip = f"{s['label']} · layer {p[0]} (depth {p[1]:.2f}): {value(p[2])}{ci}"
                    g.append(f"<circle cx={x:.1f} cy={py(p[2]):.1f} r={dot_radius:g} fill=\"{s['colour']}\">"
                             f"<title>{esc(tip)}</title></circle>")
        g.append("</g>")
        out += g
    out.append(f"<text class=axl transform=\"translate(11,{(top + h - bottom) / 2}) rotate(-90)\" "
               f"text-anchor=middle>{esc(y_label)}</text></svg>")
    return "".join(out)
