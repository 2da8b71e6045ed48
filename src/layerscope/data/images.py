"""Reading the user's image and mask files: any common mode to RGB uint8, clear errors otherwise."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 400_000_000  # larger images are refused (decompression bombs), not decoded


class BadImage(ValueError):
    """An image file that cannot be read; the message names the file and the reason."""


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """High-bit-depth or float pixels to 0..255: integers by their type's range, floats in [0, 1] as is,
    other floats by their own min-max."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        top = 65535 if arr.max(initial=0) > 255 else 255
        return np.clip(arr.astype(np.float64) / top * 255, 0, 255).round().astype(np.uint8)
    arr = np.nan_to_num(arr.astype(np.float64))
    low, high = float(arr.min(initial=0)), float(arr.max(initial=0))
    if low >= 0 and high <= 1:
        return (arr * 255).round().astype(np.uint8)
    return ((arr - low) / (high - low) * 255).round().astype(np.uint8) if high > low else np.zeros(arr.shape, np.uint8)


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) from any common file: EXIF rotation applied; L/LA/P/RGBA/CMYK converted
    (alpha dropped); 16-bit and float images scaled to 0..255 (see ``_scale_to_uint8``).

    Raises:
        BadImage: empty, truncated, not an image, or larger than ``MAX_PIXELS``.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise BadImage(f"{path}: {im.width}x{im.height} pixels, more than the {MAX_PIXELS:,} accepted")
                im = ImageOps.exif_transpose(im)
                im.load()
                if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                    grey = _scale_to_uint8(np.asarray(im))
                    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
                if im.mode == "P":
                    im = im.convert("RGBA")
                return np.asarray(im.convert("RGB"))
    except BadImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"{path}: not a readable image ({type(e).__name__})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"{path}: unreadable image ({e})") from None


def read_mask(path: Path) -> np.ndarray:
    """Bool (H, W) from a mask file.

    Rule: a mask whose values are all 0 or 1 is taken as is; otherwise a pixel is foreground
    when its value is above half its type's range (> 127 for 8-bit, > 32767 for 16-bit), so
    anti-aliased edges split at the middle. Colour masks are converted to grey first.

    Raises:
        BadImage: the file cannot be read.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA", "P", "LA", "CMYK"):
                im = im.convert("L")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"{path}: unreadable mask ({type(e).__name__}: {e})") from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.dtype == bool or arr.max(initial=0) <= 1:
        return arr.astype(bool)
    half = 32767 if arr.max() > 255 else 127
    return arr > half
