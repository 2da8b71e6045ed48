"""Image ids that are safe as file names inside a run folder."""
from __future__ import annotations

import hashlib
import re


MAX_ID = 200  # characters: the longest file name made from an id (".<id>_grid.tmp.png") stays under 255 bytes


def safe_name(name: str) -> str:
    """An image id usable as a file name inside the run folder: no separators, no '..', no hidden files.

    A name that has to be changed to be safe gets a short hash of the original appended
    (``a b`` -> ``a_b-1c7e9d2f``), so two names that clean to the same text (``a b`` and ``a_b``,
    ``sub/x`` and ``sub_x``, two names in another script) stay two ids, the same on every run. So
    does a name longer than ``MAX_ID``, cut to fit: the files named after it (``<id>.npz``,
    ``<id>_grid.png`` and their temporary names) fit any file system, whatever the image's name.
    """
    name = str(name)
    parts = [p for p in re.split(r"[\\/]+", name) if p not in ("", ".", "..")]
    cleaned = re.sub(r"[^A-Za-z0-9._=+-]+", "_", "_".join(parts)).replace("..", "_").lstrip(".") or "_"
    if cleaned != name or len(cleaned) > MAX_ID:
        cleaned = cleaned[:MAX_ID - 9] + "-" + hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return cleaned
