"""Text of the page: escaping, number formats, URLs and colours shared by its sections (no I/O)."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote

import numpy as np

from ..results import catalog


def esc(text: object) -> str:
    """``text`` as HTML text or attribute value (quotes escaped too)."""
    return html.escape(str(text), quote=True)


def num(value: object, digits: int = 4) -> float | None:
    """A JSON number with ``digits`` significant digits, None for NaN / missing."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if not math.isfinite(v) else float(f"{v:.{digits}g}")


def fmt(metric: str, value: object) -> str:
    """``value`` formatted as the metric table says (either protocol), ``–`` when missing."""
    m = catalog.PER_IMAGE.get(metric) or catalog.DATASET.get(metric)
    v = num(value, 17)
    return "–" if v is None else m.format(v) if m else f"{v:.3g}"


def url(path: Path, folder: Path, prefix: str) -> str:
    """The page's relative URL of ``path`` (written under ``folder``, served as ``prefix/...``)."""
    return "/".join(quote(part) for part in (prefix, *path.relative_to(folder).parts))


def slug(text: str) -> str:
    """``text`` as a file name: letters, digits and ._- kept, the rest as -."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in str(text)).strip("-") or "x"


def script_json(data: Any) -> str:
    """``data`` as JSON safe inside ``<script type="application/json">``: ``<``, ``>`` and ``&`` written as
    ``\\u003c``, ``\\u003e``, ``\\u0026`` (the same JSON), so no name (``<!--<script>``, ``</script>``) ends or
    comments out the block."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def hex_colour(rgba: Sequence[float]) -> str:
    """An RGB(A) colour in 0..1 as ``#rrggbb``."""
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgba[:3])


def ink(rgba: Sequence[float]) -> str:
    """Black or white text, whichever reads on the background ``rgba``."""
    return "#000" if 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] > 0.55 else "#fff"


def colour_legend(cmap: Callable[[float], Sequence[float]], low: str, high: str, text: str) -> str:
    """A colour bar of ``cmap`` from ``low`` to ``high`` (HTML), followed by ``text`` (HTML)."""
    stops = ", ".join(hex_colour(cmap(x)) for x in np.linspace(0, 1, 6))
    return (f"<div class=legend><span>{low}</span><span class=bar style=\"background:linear-gradient(90deg,{stops})\">"
            f"</span><span>{high}</span> {text}</div>")


def relpath(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, ``.`` for the root itself."""
    return "." if path == root else str(path.relative_to(root))


def finite(value: object) -> bool:
    """Whether ``value`` is a finite number."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
