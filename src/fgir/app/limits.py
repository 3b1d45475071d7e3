"""What a web upload may be, checked before anything decodes it: an image of a common type, at most
10 MB on disk and at most the checkpoint's `data.max_image_pixels` (a small PNG can decode into
gigabytes), the limit every other verb applies too."""

from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

from fgir.config import DataConfig
from fgir.data import ImageReadError, read_image
from fgir.errors import FgirError

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


class UploadError(FgirError):
    """An upload the demo refuses; the message is shown on the page as it is."""


def open_upload(path: str | os.PathLike, name: str, max_pixels: int = DataConfig.max_image_pixels) -> Image.Image:
    """The upload at `path` as an RGB image; `name` (what the user picked) is used in the errors."""
    size = os.path.getsize(path)
    if size > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name} is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB")
    accepted = ", ".join(ACCEPTED_FORMATS)
    megapixels = f"{max_pixels / 1e6:g} megapixels"
    try:
        with Image.open(path) as header:  # reads the header only: format and size, no pixels
            kind, (width, height) = header.format, header.size
    except Image.DecompressionBombError:  # Pillow's own limit, far above the default one
        raise UploadError(f"{name} has over {megapixels}, the limit") from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise UploadError(f"{name} is not an image file that can be read (accepted: {accepted})") from None
    # MPO, what many phone cameras write, is a JPEG followed by more pictures: its first one is read.
    if kind not in ACCEPTED_FORMATS and kind != "MPO":
        raise UploadError(f"{name} is a {kind} image; accepted: {accepted}")
    if width * height > max_pixels:
        raise UploadError(f"{name} is {width} x {height} pixels; the limit is {megapixels}")
    try:
        return read_image(path, max_pixels=max_pixels)
    except ImageReadError as err:  # e.g. a truncated file whose header was fine
        raise UploadError(f"{name} cannot be decoded: {err.__cause__ or err}") from err
