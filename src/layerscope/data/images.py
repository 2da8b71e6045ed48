"""Reading the user's image and mask files: any common mode to RGB uint8, clear errors otherwise."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 400_000_000  # larger images are refused (decompression bombs), not decoded
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own limit (~89 MP) would refuse images this project accepts
SOFT_LEVELS = 16  # a grey mask with more distinct values than this is soft (anti-aliased) and split at half range


class BadImage(ValueError):
    """An image file that cannot be read; the message names the file and the reason."""


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """High-bit-depth or float pixels to 0..255.

    Integers by their type's range (uint16: 65535, even when the image is dark; a 32-bit
    image of 16-bit data, as Pillow opens some 16-bit PNGs: 65535), floats in [0, 1] as
    they are, other floats by their own min-max.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        if arr.dtype in (np.uint16, np.int16) or (arr.min(initial=0) >= 0 and arr.max(initial=0) <= 65535):
            top = 65535.0
        else:
            low, high = float(arr.min()), float(arr.max())
            return ((arr - low) / (high - low) * 255).round().astype(np.uint8) if high > low else \
                np.zeros(arr.shape, np.uint8)
        return np.clip(arr.astype(np.float64) / top * 255, 0, 255).round().astype(np.uint8)
    arr = np.nan_to_num(arr.astype(np.float64))
    low, high = float(arr.min(initial=0)), float(arr.max(initial=0))
    if low >= 0 and high <= 1:
        return (arr * 255).round().astype(np.uint8)
    return ((arr - low) / (high - low) * 255).round().astype(np.uint8) if high > low else np.zeros(arr.shape, np.uint8)


def _read_tiff(path: Path) -> np.ndarray:
    """A TIFF Pillow cannot decode (RGB float, 16-bit RGB), through tifffile, as RGB uint8."""
    import tifffile

    arr = np.asarray(tifffile.imread(path))
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise ValueError(f"unexpected TIFF shape {arr.shape}")
    return np.ascontiguousarray(_scale_to_uint8(arr[..., :3]))


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """RGB uint8 (H, W, 3) from a PIL image, by the rule ``read_image`` applies to files (and
    ``layerscope.maps`` to PIL objects): EXIF rotation applied; 16-bit, 32-bit and float modes scaled by
    ``_scale_to_uint8`` (not clipped, as ``convert("RGB")`` would); L/LA/P/RGBA/CMYK converted, alpha dropped.
    """
    im = ImageOps.exif_transpose(im)
    im.load()
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        grey = _scale_to_uint8(np.asarray(im))
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if im.mode == "P":
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"))


def array_to_rgb(arr: np.ndarray, what: str) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an image array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), by the rule of
    image files (``_scale_to_uint8``): uint8 as it is, uint16 by 65535 (as a 16-bit PNG), floats in [0, 1]
    times 255; alpha dropped. Other dtypes are refused rather than guessed (an int64 array of 0..255 values
    would otherwise be read as 16-bit, nearly black).

    Raises:
        ValueError: one line naming ``what``: another shape, an empty side, another dtype, floats outside
            [0, 1] or NaN/inf.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        raise ValueError(f"{what}: expected an (H, W), (H, W, 3) or (H, W, 4) image array, got shape {arr.shape}")
    if not arr.shape[0] or not arr.shape[1]:
        raise ValueError(f"{what}: an empty image ({arr.shape[1]}x{arr.shape[0]} pixels)")
    if arr.dtype not in (np.uint8, np.uint16) and not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what}: pixels of dtype {arr.dtype}; expected uint8 (0..255), uint16 (0..65535) or floats "
                         "in [0, 1] (cast it, e.g. arr.astype(np.uint8))")
    if np.issubdtype(arr.dtype, np.floating) and not (np.isfinite(arr).all() and 0 <= arr.min() and arr.max() <= 1):
        raise ValueError(f"{what}: float pixels must be finite and in [0, 1], got "
                         f"{'NaN/inf' if not np.isfinite(arr).all() else f'{arr.min():g}..{arr.max():g}'}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(_scale_to_uint8(arr[..., :3]))


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) from any common file: EXIF rotation applied; L/LA/P/RGBA/CMYK converted
    (alpha dropped); 16-bit and float images scaled to 0..255 (see ``_scale_to_uint8``); TIFFs that
    Pillow cannot decode (RGB float) read with tifffile.

    Raises:
        BadImage: empty, truncated, not an image, or larger than ``MAX_PIXELS``.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                im = Image.open(path)
            except UnidentifiedImageError:
                if path.suffix.lower() in (".tif", ".tiff"):
                    return _read_tiff(path)
                raise
            with im:
                if im.width * im.height > MAX_PIXELS:
                    raise BadImage(f"{path}: {im.width}x{im.height} pixels, more than the {MAX_PIXELS:,} accepted")
                return pil_to_rgb(im)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"{path}: more than the {MAX_PIXELS:,} pixels accepted (a decompression bomb?)") from None
    except UnidentifiedImageError as e:
        raise BadImage(f"{path}: not a readable image ({type(e).__name__})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"{path}: unreadable image ({e})") from None


def check_mask_array(arr: np.ndarray) -> None:
    """Raise ValueError (one line, no name: the caller adds the file or argument) unless ``arr`` is a mask:
    (H, W) or (H, W, C) with C in 1..4 (grey, grey+alpha, RGB, RGBA), of bools, integers or finite floats."""
    if arr.ndim not in (2, 3) or arr.ndim == 3 and not 1 <= arr.shape[-1] <= 4:
        raise ValueError(f"a mask must be (H, W) or (H, W, C) with 1 to 4 channels, got shape {arr.shape}")
    if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"mask values of dtype {arr.dtype}; expected bools, integers or floats")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError("the mask has NaN/inf values; expected 0/1, 0/255 or a soft mask in [0, 1]")


def mask_foreground(arr: np.ndarray) -> np.ndarray:
    """Bool foreground of a mask array (H, W) or (H, W, C): the rule every mask reader follows.

    - colour masks (H, W, C): a pixel is foreground when any colour channel is non-zero
      (a red (255, 0, 0) outline counts; alpha is ignored);
    - hard masks, at most ``SOFT_LEVELS`` distinct values (0/1, 0/255, 0/100, label images
      0/1/2...): non-zero is foreground;
    - soft masks, more distinct values (anti-aliased edges, float masks in (0, 1)): above half
      the range (> 127 for 8-bit, > 32767 for 16-bit, > 0.5 for floats in [0, 1]).

    Raises:
        ValueError: not a mask (see ``check_mask_array``): another shape, a non-numeric dtype, NaN/inf.
    """
    check_mask_array(arr)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
    if arr.dtype == bool:
        return arr.copy()
    values = np.unique(arr)
    if len(values) <= SOFT_LEVELS:
        return arr != 0
    if np.issubdtype(arr.dtype, np.floating):
        half = 0.5 if float(values[-1]) <= 1 else float(values[-1]) / 2
    else:
        half = 32767 if arr.max() > 255 else 127
    return arr > half


def _pil_mask_array(im: Image.Image) -> np.ndarray:
    """A PIL mask's pixels, EXIF rotation applied, palette/alpha/CMYK modes as RGB (judged by colour)."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("P", "RGBA", "LA", "CMYK"):
        im = im.convert("RGB")  # a palette index of 0 may still be a colour: judge the colours
    return np.asarray(im)


def as_mask(value: object, what: str) -> np.ndarray:
    """Bool (H, W) from a mask given as a path, a PIL image or an array (NumPy, or a CPU tensor), by the rule of
    ``read_mask`` (see ``mask_foreground``): the reader of ``layerscope.score`` and of mask files alike.

    Raises:
        BadImage: an unreadable mask file. ValueError: one line naming ``what``, for an array that is not a
            mask (shape, dtype, NaN/inf; see ``check_mask_array``).
    """
    if isinstance(value, (str, Path)):
        return read_mask(Path(value))
    arr = _pil_mask_array(value) if isinstance(value, Image.Image) else np.asarray(value)
    try:
        return mask_foreground(arr)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def read_mask(path: Path) -> np.ndarray:
    """Bool (H, W) from a mask file; see ``mask_foreground`` for which pixels count.

    EXIF rotation is applied, as ``read_image`` does to images: a mask saved with its image's
    orientation tag stays on the same pixels.

    Raises:
        BadImage: the file cannot be read.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = _pil_mask_array(im)
    except UnidentifiedImageError:
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise BadImage(f"{path}: unreadable mask (not an image)") from None
        import tifffile

        arr = np.asarray(tifffile.imread(path))
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"{path}: unreadable mask ({type(e).__name__}: {e})") from None
    try:
        return mask_foreground(arr)
    except ValueError as e:
        raise BadImage(f"{path}: {e}") from None
