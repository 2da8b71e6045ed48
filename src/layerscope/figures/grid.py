"""The classic picture: one image, every layer (rows) by every head or map (columns).

One mosaic (numpy + PIL) serves both renderers: ``layer_head_grid`` labels it with PIL and writes the
run's per-image PNG (no matplotlib: a run draws up to ``figures.max_images`` of them), and
``grid_figure`` wraps it in a matplotlib ``Figure`` for the paper figures.
"""
from __future__ import annotations

import struct
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 96  # pixels per map in the mosaic
GAP = 4
PAD = 6  # around the labels of the PIL picture
FONT_SIZE = 12

# matplotlib's "inferno", 256 entries as 8-bit RGB hex, exactly (matplotlib.colormaps["inferno"](i)[:3] * 255)
# truncated to uint8 as the matplotlib renderer did, so both renderers colour maps the same without importing it
_INFERNO = (
    "00000300000400000601000701010901010b02010e02021003021204031404031605041806041b07051d08061f090621"
    "0a07230b07260d08280e082a0f092d10092f120a32130a34140b36160b39170b3b190b3e1a0b401c0c431d0c451f0c47"
    "200c4a220b4c240b4e260b50270b52290b542b0a562d0a582e0a5a300a5c32095d34095f3509603709613909623b0964"
    "3c09653e0966400966410967430a68450a69460a69480b6a4a0b6a4b0c6b4d0c6b4f0d6c500d6c520e6c530e6d550f6d"
    "570f6d58106d5a116d5b116e5d126e5f126e60136e62146e63146e65156e66156e68166e6a176e6b176e6d186e6e186e"
    "70196e72196d731a6d751b6d761b6d781c6d7a1c6d7b1d6c7d1d6c7e1e6c801f6b811f6b83206b85206a86216a88216a"
    "8922698b22698d23698e24689024689125679325679526669626669827659928649b28649c29639e2963a02a62a12b61"
    "a32b61a42c60a62c5fa72d5fa92e5eab2e5dac2f5cae305baf315bb1315ab23259b43358b53357b73456b83556ba3655"
    "bb3754bd3753be3852bf3951c13a50c23b4fc43c4ec53d4dc73e4cc83e4bc93f4acb4049cc4148cd4247cf4446d04544"
    "d14643d24742d44841d54940d64a3fd74b3ed94d3dda4e3bdb4f3adc5039dd5238de5337df5436e05634e25733e35832"
    "e45a31e55b30e65c2ee65e2de75f2ce8612be9622aea6428eb6527ec6726ed6825ed6a23ee6c22ef6d21f06f1ff0701e"
    "f1721df2741cf2751af37719f37918f47a16f57c15f57e14f68012f68111f78310f7850ef8870df8880cf88a0bf98c09"
    "f98e08f99008fa9107fa9306fa9506fa9706fb9906fb9b06fb9d06fb9e07fba007fba208fba40afba60bfba80dfbaa0e"
    "fbac10fbae12fbb014fbb116fbb318fbb51afbb71cfbb91efabb21fabd23fabf25fac128f9c32af9c52cf9c72ff8c931"
    "f8cb34f8cd37f7cf3af7d13cf6d33ff6d542f5d745f5d948f4db4bf4dc4ff3de52f3e056f3e259f2e45df2e660f1e864"
    "f1e968f1eb6cf1ed70f1ee74f1f079f1f27df2f381f2f485f3f689f4f78df5f891f6fa95f7fb99f9fc9dfafda0fcfea4"
)


@lru_cache(maxsize=1)
def colormap() -> np.ndarray:
    """The (256, 3) uint8 inferno lookup table."""
    return np.frombuffer(bytes.fromhex(_INFERNO), dtype=np.uint8).reshape(256, 3)


def _colorize(maps: np.ndarray) -> np.ndarray:
    """(K, h, w) float -> (K, CELL, CELL, 3) uint8, each map min-max scaled on its own, nearest upsampled.

    The bin of a value is matplotlib's: ``floor(x * 256)``, 1.0 in the last bin. All maps of a layer at
    once, with the values and upsampling of a per-map PIL rendering (NEAREST's pixel choice, from PIL).
    """
    low, high = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    span = (high.astype(np.float64) - low).astype(maps.dtype)  # as float(high) - float(low), then the map's dtype
    flat = high <= low
    scaled = np.where(flat, 0, (maps - low) / np.where(flat, 1, span))
    index = np.clip((scaled * 256).astype(np.int64), 0, 255)
    rows, cols = _nearest_index(maps.shape[1], maps.shape[2])
    return colormap()[index].take(rows, axis=1).take(cols, axis=2)  # coloured on the map's grid, then upsampled


@lru_cache(maxsize=32)
def _nearest_index(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The source row and column of each pixel of PIL's NEAREST resize of (h, w) to (CELL, CELL)."""
    grid = np.arange(h * w, dtype=np.int32).reshape(h, w)
    picked = np.asarray(Image.fromarray(grid).resize((CELL, CELL), Image.NEAREST))
    return picked[:, 0] // w, picked[0, :] % w


def _mosaic(image: np.ndarray, mask: np.ndarray | None, maps: Mapping[int, np.ndarray]) -> np.ndarray:
    """The unlabelled grid, (rows * (CELL + GAP), cols * (CELL + GAP), 3) uint8 on white."""
    layers = sorted(maps)
    cols = max(m.shape[0] for m in maps.values()) + 1
    canvas = np.full((len(layers) * (CELL + GAP), cols * (CELL + GAP), 3), 255, np.uint8)

    def put(r: int, c: int, tile: np.ndarray) -> None:
        y, x = r * (CELL + GAP), c * (CELL + GAP)
        canvas[y:y + CELL, x:x + CELL] = tile

    thumb = np.asarray(Image.fromarray(image).resize((CELL, CELL), Image.BILINEAR))
    put(0, 0, thumb)
    if mask is not None and len(layers) > 1:
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((CELL, CELL), Image.NEAREST)) > 127
        inner = np.zeros_like(small)
        inner[1:-1, 1:-1] = small[1:-1, 1:-1] & small[:-2, 1:-1] & small[2:, 1:-1] & small[1:-1, :-2] & small[1:-1, 2:]
        overlay = thumb.copy()
        overlay[small & ~inner] = (0, 208, 255)  # outline only, the defect stays visible
        put(1, 0, overlay)
    for r, layer in enumerate(layers):
        for k, tile in enumerate(_colorize(np.asarray(maps[layer]))):
            put(r, k + 1, tile)
    return canvas


def _labels(mask: np.ndarray | None, maps: Mapping[int, np.ndarray],
            names: Mapping[int, Sequence[str]]) -> tuple[list[str], list[str]]:
    """Column titles (input, then the longest layer's map names) and row titles."""
    layers = sorted(maps)
    first = max((names[layer] for layer in layers), key=len)
    return ["input" if mask is None else "input / mask", *map(str, first)], [f"layer {layer}" for layer in layers]


def grid_image(image: np.ndarray, mask: np.ndarray | None, maps: Mapping[int, np.ndarray],
               names: Mapping[int, Sequence[str]], title: str) -> Image.Image:
    """The layer x head grid with its title and labels, drawn with PIL only.

    Each map is min-max scaled on its own (colours compare places within a map, not across
    maps) and shown on its patch grid without smoothing; the input is in the first column, with
    the mask outline below it.

    Args:
        image: (S, S, 3) uint8.
        mask: (S, S) bool or None.
        maps: layer -> (K, h, w) float.
        names: layer -> K column titles.
        title: the picture's title (image id and model).

    Returns:
        An RGB image: the mosaic, unscaled, below the title and column titles, right of the row titles.
    """
    canvas = _mosaic(image, mask, maps)
    columns, rows = _labels(mask, maps, names)
    font = ImageFont.load_default(size=FONT_SIZE)
    line = FONT_SIZE + 4
    left = max(int(font.getlength(r)) for r in rows) + 2 * PAD
    top = 2 * line + 2 * PAD
    width = max(left + canvas.shape[1] + PAD, int(font.getlength(title)) + 2 * PAD)
    out = Image.new("RGB", (width, top + canvas.shape[0] + PAD), "white")
    out.paste(Image.fromarray(canvas), (left, top))
    draw = ImageDraw.Draw(out)
    step = CELL + GAP
    draw.text((width / 2, PAD), title, fill="black", font=font, anchor="mt")
    for c, text in enumerate(columns):
        draw.text((left + c * step + CELL / 2, top - PAD / 2), text, fill="black", font=font, anchor="md")
    for r, text in enumerate(rows):
        draw.text((left - PAD, top + r * step + CELL / 2), text, fill="black", font=font, anchor="rm")
    return out


def layer_head_grid(image: np.ndarray, mask: np.ndarray | None, maps: Mapping[int, np.ndarray],
                    names: Mapping[int, Sequence[str]], title: str, path: Path) -> None:
    """Write ``grid_image`` to ``path`` (a run's per-image grid); the suffix picks the format (.png, .pdf).

    Written to a temporary name and renamed, so a picture on disk is always whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        picture = grid_image(image, mask, maps, names, title)
        if path.suffix.lower() == ".png":
            tmp.write_bytes(png_bytes(np.asarray(picture)))
        else:
            picture.save(tmp)
        tmp.replace(path)
    except OSError as e:  # a full disk: no half picture is left, and the message names the file
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None


def png_bytes(rgb: np.ndarray, level: int = 1) -> bytes:
    """A PNG file of an (H, W, 3) uint8 picture, rows unfiltered, deflated at ``level``.

    Half PIL's time at its fastest level (which tries five row filters per row) and smaller files for
    these pictures (runs of equal pixels: 235 vs 298 kB for a 12 x 7 grid); the same pixels.
    """
    h, w, _ = rgb.shape
    raw = np.empty((h, 1 + 3 * w), np.uint8)
    raw[:, 0] = 0  # each row: filter type 0 (none), then its bytes
    raw[:, 1:] = rgb.reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(memoryview(raw), level))
            + chunk(b"IEND", b""))


def grid_figure(image: np.ndarray, mask: np.ndarray | None, maps: Mapping[int, np.ndarray],
                names: Mapping[int, Sequence[str]], title: str):
    """The layer x head grid as a matplotlib ``Figure`` (no pyplot state), for the paper figures.

    The same mosaic as ``grid_image``, with matplotlib's tick labels and title (vector text in a PDF).

    Args:
        image: (S, S, 3) uint8.
        mask: (S, S) bool or None.
        maps: layer -> (K, h, w) float.
        names: layer -> K column titles.
        title: figure title (image id and model).
    """
    from matplotlib.figure import Figure

    canvas = _mosaic(image, mask, maps)
    columns, rows = _labels(mask, maps, names)
    step = CELL + GAP
    width, height = canvas.shape[1] / 100 + 0.6, canvas.shape[0] / 100 + 0.45
    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_axes((0.6 / width, 0, canvas.shape[1] / 100 / width, canvas.shape[0] / 100 / height))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([CELL / 2 + c * step for c in range(len(columns))], columns, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([CELL / 2 + r * step for r in range(len(rows))], rows, fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(title, fontsize=9, y=1.0, va="bottom")
    return fig
