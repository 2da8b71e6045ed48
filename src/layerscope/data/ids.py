"""Image ids that are safe as file names inside a run folder."""
from __future__ import annotations

import re


def safe_name(name: str) -> str:
    """An image id usable as a file name inside the run folder: no separators, no '..', no hidden files."""
    parts = [p for p in re.split(r"[\\/]+", str(name)) if p not in ("", ".", "..")]
    cleaned = re.sub(r"[^A-Za-z0-9._=+-]+", "_", "_".join(parts)).replace("..", "_").lstrip(".")
    return cleaned or "_"
