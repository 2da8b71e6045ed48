"""Image ids that are safe as file names inside a run folder."""
from __future__ import annotations

import hashlib
import re
from typing import Sequence


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
        cleaned = cleaned[:MAX_ID - 9] + "-" + _short_hash(name)
    return cleaned


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def path_id(parts: Sequence[str]) -> str:
    """The id of a file from its path below a folder: the parts joined by ``__`` (``sub/x`` -> ``sub__x``).

    The joined name is decoded in one way only when no part holds ``__`` and, below the top level, no part
    starts or ends with ``_`` (a run of exactly two underscores is then always a separator). Any other
    path gets a short hash of the path itself appended (a top-level ``sub__x.png`` becomes ``sub__x-<hash>``),
    so two files of one folder never share an id, and the id of a file does not depend on which other
    files are there (a resumed run keeps its ids when files are added).

    Args:
        parts: the path's components below the folder, the last one the file name (with or without
            its suffix, as the id should show it).
    """
    parts = [str(p) for p in parts]
    joined = "__".join(parts)
    ambiguous = any("__" in p for p in parts) or (
        len(parts) > 1 and any(p.startswith("_") or p.endswith("_") for p in parts))
    return f"{joined}-{_short_hash('/'.join(parts))}" if ambiguous else joined
