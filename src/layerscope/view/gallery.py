"""The page's images: the pictures of every saved image (written beside the page) and the data the page's
script shows them from (series, images, per-map metric values), and the gallery section around them."""
from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from PIL import Image

from ..results import catalog, layout
from ..analysis.saved import Study, relative_depth, smallest_threshold
from .html import esc, num, slug, url
from .pictures import inferno_palette, map_sprite, outline_path, thumbnail

TABLE_METRICS = tuple(m.name for m in catalog.PER_IMAGE.values() if m.shown)  # the per-map table's columns
THUMB = 112  # thumbnail side (px)
INPUT = 224  # input picture side in the detail view (px; shown at 150)
MAX_TILE = 64  # a map larger than this is area-averaged down to it in the grid picture


def gallery_data(study: Study, files: Path, prefix: str, metric: str, scores: dict[str, pd.DataFrame],
                 series_index: dict[str, int]) -> dict[str, Any]:
    """Write the pictures under ``files`` (served as ``prefix/``) and return the page's data (series,
    images, metric columns); fills ``series_index`` (series -> its index in the data)."""
    palette = inferno_palette()
    saved = study.images[study.images["saved"]]
    rows = smallest_threshold(study.df[study.df["head"] != "best"])
    columns = [m for m in TABLE_METRICS if m in rows.columns and rows[m].notna().any()]
    if metric not in columns and metric in rows.columns:
        columns.insert(0, metric)
    values: dict[str, dict] = {}
    for series, part in rows.groupby("series"):
        values[series] = {key: [num(v) for v in vals] for key, vals in
                          zip(zip(part["image"], part["layer"].astype(int), part["head"]),
                              part[columns].to_numpy(float).tolist())}
    order = saved.sort_values(["category", "image"])[["image", "category"]].drop_duplicates("image")
    images: dict[str, dict[str, Any]] = {}
    series_data = []
    for series in study.series():
        info = study.info(series)
        ids = saved.loc[saved["series"] == series, "image"].drop_duplicates().tolist()
        if not ids:
            continue
        first = study.load(series, ids[0])
        layers = sorted(first["maps"])
        names = max((list(first["names"][layer]) for layer in layers), key=len)
        side = int(min(MAX_TILE, max(max(first["maps"][layer].shape[1:]) for layer in layers)))
        table = scores.get(series)
        best = table[table["best"]].iloc[0] if table is not None and not table.empty else None
        n_layers = first["meta"].get("num_layers") or layers[-1] + 1
        si = len(series_data)
        series_index[series] = si
        series_data.append({
            "label": series, "model": info["model"], "method": info["method"], "layers": layers, "names": names,
            "depth": [round(float(d), 3) for d in relative_depth(np.array(layers), n_layers)], "tile": side,
            "best": None if best is None or int(best["layer"]) not in layers else
            [layers.index(int(best["layer"])), names.index(best["head"]) if best["head"] in names else -1],
        })
        folder = files / "grid" / f"{si}-{slug(series)}"  # the index keeps two series that slug alike apart
        folder.mkdir(parents=True, exist_ok=True)
        vals = values.get(series, {})
        for image in ids:
            d = first if image == ids[0] else study.load(series, image)
            stem = layout.image_stem(image)  # one naming rule for every file named after an image id
            path = folder / f"{stem}.png"
            map_sprite(d["maps"], layers, len(names), side, palette).save(path, optimize=False, compress_level=6)
            entry = images.get(image)
            if entry is None:
                thumb = files / "thumb" / f"{stem}.jpg"
                big = files / "input" / f"{stem}.jpg"
                thumb.parent.mkdir(parents=True, exist_ok=True)
                big.parent.mkdir(parents=True, exist_ok=True)
                thumbnail(d["image"], d["mask"], THUMB).save(thumb, quality=82)
                Image.fromarray(d["image"]).convert("RGB").resize((INPUT, INPUT), Image.BILINEAR).save(big, quality=85)
                entry = images[image] = {"id": image, "cat": str(d["meta"].get("category") or ""),
                                         "thumb": url(thumb, files, prefix), "input": url(big, files, prefix),
                                         "o": outline_path(d["mask"]), "s": {}}
            entry["s"][str(si)] = {"g": url(path, files, prefix),
                                   "v": [vals.get((image, layer, name)) for layer in layers for name in names]}
    ordered = [images[i] for i in order["image"] if i in images]
    metrics = [{"name": m, "title": catalog.title(m), "lo": catalog.lower_is_better(m),
                "d": 2 if catalog.get(m).fmt == ".2f" else 3 if catalog.get(m).fmt == ".3f" else 0} for m in columns]
    return {"metric": metric, "metrics": metrics, "series": series_data, "images": ordered}


def gallery_section(data: dict[str, Any]) -> str:
    if not data["images"]:
        return ("<section id=gallery><h2>Images</h2><p class=note>No saved maps (<code>save_maps=false</code>?): "
                "nothing to show per image.</p></section>")
    categories = sorted({im["cat"] for im in data["images"]})
    options = "".join(f"<option value=\"{esc(c)}\">{esc(c or '(none)')}</option>" for c in categories)
    thumbs = "".join(f"<a class=th href=\"#image={quote(im['id'])}\" data-id=\"{esc(im['id'])}\" "
                     f"data-cat=\"{esc(im['cat'])}\"><img loading=lazy src=\"{esc(im['thumb'])}\" width={THUMB} "
                     f"height={THUMB} alt=\"{esc(im['id'])}\"><span>{esc(im['id'])}</span></a>" for im in data["images"])
    return (f"<section id=gallery><h2>Images</h2><div class=gbar>{len(data['images'])} images · defect type "
            f"<select id=catsel><option value=\"*\">all</option>{options}</select> <label><input type=checkbox "
            "id=olsel checked> mask outline on the maps</label> <span class=note>click an image; ← → step through "
            "layers</span></div><div class=gal><div id=thumbs class=thumbs>"
            f"{thumbs}</div><div id=detail class=detail></div></div></section>")
