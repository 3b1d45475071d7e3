"""Robust image reading: any common file and pixel format in, an upright 8-bit RGB image out."""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from fgir.config import DataConfig
from fgir.errors import FgirError

WHITE = (255, 255, 255)
# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPS_AXES = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
# Images over data.max_image_pixels are refused before decoding; Pillow's warning for those over its
# own 89 MP (its error above 179 MP stays) would only add a line to that message or to a raised limit.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageReadError(FgirError, OSError):
    """An image file that is missing or cannot be decoded; the message names the file and why."""


def read_image(path: str | os.PathLike, min_size: tuple[int, int] | None = None,
               max_pixels: int = DataConfig.max_image_pixels) -> Image.Image:
    """Decode `path` into an RGB image with its EXIF orientation applied.

    Transparent images are composited on white; 16-bit images are scaled (not clipped) to 8 bits.
    With `min_size=(w, h)`, a JPEG much larger than that is decoded at a reduced scale (1/2, 1/4
    or 1/8) that stays at least `min_size` after orientation - far cheaper than a full decode
    followed by a resize. A file of more than `max_pixels` pixels is refused before decoding.
    """
    try:
        with Image.open(path) as image:
            too_large = too_many_pixels(image.size, max_pixels)
            if too_large:
                raise ImageReadError(f"cannot read image {path}: {too_large}")
            if min_size is not None and image.format == "JPEG":
                _draft(image, min_size)
            image.load()  # decode now, so a truncated file fails here and not in a worker later
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"cannot read image {path}: file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # Pillow raises SyntaxError for some malformed files (e.g. broken PNG chunks).
        reason = "file is empty (0 bytes)" if _is_empty(path) else f"{type(err).__name__}: {err}"
        raise ImageReadError(f"cannot read image {path}: {reason}") from err


def too_many_pixels(size: tuple[int, int], max_pixels: int) -> str | None:
    """Why an image of `size` (width, height) is refused, or None when it is within `max_pixels`."""
    width, height = size
    if width * height <= max_pixels:
        return None
    return (f"{width} x {height} = {width * height / 1e6:.1f} megapixels, over the limit of {max_pixels / 1e6:g} megapixels "
            f"(data.max_image_pixels={max_pixels}; raise it to read this image)")


def _draft(image: Image.Image, min_size: tuple[int, int]) -> None:
    width, height = min_size
    if image.getexif().get(_EXIF_ORIENTATION) in _SWAPS_AXES:
        width, height = height, width  # min_size is for the upright image; the file is stored turned
    image.draft("RGB", (width, height))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's convert("L") clips 16-bit values at 255; scale the 0..65535 range instead.
        sixteen_bit = np.asarray(image).astype(np.float32)
        image = Image.fromarray(np.clip(np.rint(sixteen_bit / 257), 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _is_empty(path: str | os.PathLike) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False
