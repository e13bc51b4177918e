"""Image input: turn bytes, a path, a file object, a PIL image or a numpy array into an RGB image.

Every failure is an `ImageInputError` with one sentence a user can act on. Transparent images are
composited on white (parts are photographed on light backgrounds; black would read as a defect).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xai.errors import UserError

MAX_PIXELS = 40_000_000  # ~ a 6300 x 6300 photo; larger inputs are refused before decoding
MAX_BYTES = 25 * 1024 * 1024  # files are checked against this before they are read (the app's upload limit)
MIN_SIDE = 8  # smaller images carry no inspectable detail
# Cheap to send, dear to decode: a 117 KB 16-bit TIFF of 40 megapixels cost 3.3 s and 670 MB to decode. Photos
# of parts hold a few pixels per byte (JPEG 2-10, PNG under 1, flat backgrounds a few tens); past FREE_PIXELS a
# file may expand to at most PIXELS_PER_BYTE pixels for each of its bytes.
FREE_PIXELS = 4_000_000
PIXELS_PER_BYTE = 100
# The formats we document; PIL is never asked to identify anything else, so EPS, PDF and friends never reach an
# external interpreter (Ghostscript) or a rarely exercised decoder.
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF")
# the file names taken for pictures wherever a folder, a zip or an upload is read: the FORMATS' suffixes
PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"})

ImageSource = str | os.PathLike | bytes | bytearray | BinaryIO | Image.Image | np.ndarray


class ImageInputError(UserError, ValueError):
    """An input that cannot be used as an image; the message says why in plain words."""


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale an integer or float array to uint8 (16-bit by its full range, floats as 0..1)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0:
            raise ImageInputError("The image has negative pixel values; expected unsigned intensities.")
        top = 255 if array.max() <= 255 else 65535
        return (array.astype(np.float64) * (255.0 / top) + 0.5).clip(0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageInputError("The image contains NaN or infinite values.")
        if array.min() < 0 or array.max() > 1:
            raise ImageInputError("A float image must hold values between 0 and 1.")
        return (array * 255.0 + 0.5).astype(np.uint8)
    raise ImageInputError(f"Unsupported array type {array.dtype}.")


def _from_array(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageInputError(
            f"An image array must be H x W, H x W x 3 or H x W x 4; got shape {tuple(array.shape)}."
        )
    _check_size(array.shape[1], array.shape[0])
    return Image.fromarray(np.ascontiguousarray(_to_uint8(array)))


def _check_size(width: int, height: int, max_pixels: int = MAX_PIXELS) -> None:
    if width * height > max_pixels:
        raise ImageInputError(
            f"The image is too large ({width} x {height} = {width * height / 1e6:.0f} megapixels); "
            f"the limit is {max_pixels / 1e6:.0f} megapixels."
        )
    if min(width, height) < MIN_SIDE:
        raise ImageInputError(
            f"The image is too small ({width} x {height}); each side must be at least {MIN_SIDE} pixels."
        )


def _check_expansion(image: Image.Image) -> None:
    """Refuse a small file that would decode into a large picture (see PIXELS_PER_BYTE)."""
    fp = getattr(image, "fp", None)
    pixels = image.size[0] * image.size[1]
    if not isinstance(fp, io.BytesIO) or pixels <= FREE_PIXELS:
        return
    size = fp.getbuffer().nbytes
    if pixels > PIXELS_PER_BYTE * size:
        raise ImageInputError(
            f"The image would expand to {pixels / 1e6:.0f} megapixels from a {size / 1e3:.0f} kB file (more than "
            f"{PIXELS_PER_BYTE} pixels a byte, which no photo of a part needs); send the picture as photographed.")


def _check_bytes(size: int) -> None:
    if size > MAX_BYTES:
        raise ImageInputError(f"The file is too large ({size / 2**20:.0f} MB); "
                              f"the limit is {MAX_BYTES / 2**20:.0f} MB.")


def _open(source: ImageSource) -> Image.Image:
    """Open (lazily) a path, bytes or file object with PIL, turning every failure into ImageInputError."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageInputError(f"No image file at {path}.")
        size = path.stat().st_size
        if size == 0:
            raise ImageInputError(f"The file {path.name} is empty (0 bytes).")
        _check_bytes(size)
        fh: BinaryIO = io.BytesIO(path.read_bytes())
    elif isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise ImageInputError("The upload is empty (0 bytes).")
        _check_bytes(len(source))
        fh = io.BytesIO(source)
    elif hasattr(source, "read"):
        data = source.read(MAX_BYTES + 1)
        if not data:
            raise ImageInputError("The upload is empty (0 bytes).")
        _check_bytes(len(data))
        fh = io.BytesIO(data)
    else:
        raise ImageInputError(f"Cannot read an image from a {type(source).__name__}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(fh, formats=FORMATS)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        fh.close()
        if isinstance(exc, UnidentifiedImageError):
            raise ImageInputError(
                "The file is not an image in a format we read (PNG, JPEG, TIFF, BMP, WebP or GIF)."
            ) from None
        raise ImageInputError(f"The image is too large to decode safely ({exc}).") from None
    except OSError as exc:
        fh.close()
        raise ImageInputError(f"The image file is corrupt: {exc}.") from None
    return image


def _decode(image: Image.Image, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode fully (first frame), apply EXIF orientation; truncated/corrupt data -> ImageInputError."""
    _check_size(*image.size, max_pixels=max_pixels)
    _check_expansion(image)
    try:
        image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image) or image
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageInputError(f"The image file is {reason} and cannot be decoded ({exc}).") from None
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16/32-bit and float scaled to 8 bits, alpha composited on white."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image)
        if mode == "F":
            lo, hi = float(array.min()), float(array.max())
            array = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
        return Image.fromarray(_to_uint8(array)).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: ImageSource, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode and validate any supported input into an RGB PIL image, or raise ImageInputError."""
    if isinstance(source, np.ndarray):
        return _to_rgb(_from_array(source))
    if isinstance(source, Image.Image):
        return _to_rgb(_decode(source, max_pixels))
    image = _open(source)
    try:
        return _to_rgb(_decode(image, max_pixels))
    finally:
        image.close()
