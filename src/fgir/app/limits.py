"""What a web upload may be, checked before anything decodes it: an image of a common type, at most
10 MB on disk and 40 megapixels (a small PNG can decode into gigabytes)."""

from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

from fgir.data import ImageReadError, read_image
from fgir.errors import FgirError

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


class UploadError(FgirError):
    """An upload the demo refuses; the message is shown on the page as it is."""


def open_upload(path: str | os.PathLike, name: str) -> Image.Image:
    """The upload at `path` as an RGB image; `name` (what the user picked) is used in the errors."""
    size = os.path.getsize(path)
    if size > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name} is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB")
    accepted = ", ".join(ACCEPTED_FORMATS)
    try:
        with Image.open(path) as header:  # reads the header only: format and size, no pixels
            kind, (width, height) = header.format, header.size
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours
        raise UploadError(f"{name} has over {MAX_PIXELS // 10**6} megapixels, the limit") from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise UploadError(f"{name} is not an image file that can be read (accepted: {accepted})") from None
    if kind not in ACCEPTED_FORMATS:
        raise UploadError(f"{name} is a {kind} image; accepted: {accepted}")
    if width * height > MAX_PIXELS:
        raise UploadError(f"{name} is {width} x {height} pixels; the limit is {MAX_PIXELS // 10**6} megapixels")
    try:
        return read_image(path)
    except ImageReadError as err:  # e.g. a truncated file whose header was fine
        raise UploadError(f"{name} cannot be decoded: {err.__cause__ or err}") from err
