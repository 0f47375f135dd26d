"""Images to the wire format (uint8, HWC) with Pillow: one codec for training folders and the server."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

_MODES = {1: "L", 3: "RGB"}


# What the server decodes: formats whose decoders are small, common and fuzzed hard. Pillow's others
# (EPS runs Ghostscript, and a dozen rarer formats) never see untrusted bytes here. The one set of formats:
# `predict` sends only these, and `classify` and `bench --images` read only these.
SERVED_FORMATS = ("PNG", "JPEG")
# The file names of SERVED_FORMATS, by which a folder's images are found.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# The accepted formats as help texts name them.
FORMATS_TEXT = f"{' or '.join(SERVED_FORMATS)} ({', '.join(IMAGE_SUFFIXES)})"
# 16 megapixels: a 4,000 x 4,000 photo; 48 MB decoded as RGB.
DEFAULT_MAX_PIXELS = 16_000_000


# Pillow warns past its own limit and refuses past twice it, inside Image.open; the pixel limit
# below is checked right after the header is read, so the warning says nothing new.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageDecodeError(ValueError):
    """Bytes that are not a readable image of an accepted format, or one too large to decode."""


def image_files(folder: str | Path) -> list[Path]:
    """The files under ``folder`` (recursively) whose names end in an IMAGE_SUFFIXES suffix, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def to_array(image: Image.Image, height: int, width: int, channels: int) -> np.ndarray:
    """Convert (mode), resize (bilinear) and return a ``(height, width, channels)`` uint8 array."""
    if channels not in _MODES:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image = image.convert(_MODES[channels])
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array.reshape(height, width, channels)


def decode_image(
    data: bytes,
    height: int,
    width: int,
    channels: int,
    *,
    formats: tuple[str, ...] | None = SERVED_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode encoded image bytes into the model's wire format.

    Only ``formats`` are tried (None: any Pillow reads), and an image of more than ``max_pixels`` is
    refused from its header, before any pixel is decoded. Every failure is an ImageDecodeError:
    Pillow's decoders raise ValueError, EOFError, struct.error, SyntaxError, OSError and more.
    """
    try:
        with Image.open(io.BytesIO(data), formats=formats) as image:
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise ImageDecodeError(
                    f"{image.format} of {image.width}x{image.height} = {pixels:,} pixels is over the limit of "
                    f"{max_pixels:,} (--max-image-pixels)"
                )
            image.load()
            return to_array(image, height, width, channels)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own limit, met inside Image.open
        raise ImageDecodeError(f"image is over the limit of {max_pixels:,} pixels (--max-image-pixels)") from exc
    except UnidentifiedImageError as exc:
        accepted = f"a {' or '.join(formats)} image" if formats else "an image Pillow reads"
        raise ImageDecodeError(f"not {accepted} ({len(data)} bytes)") from exc
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any decoder failure is the input's fault
        raise ImageDecodeError(f"not a decodable image ({len(data)} bytes): {type(exc).__name__}: {exc}") from exc


def decode_images(
    items: list[bytes], height: int, width: int, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode a request's encoded images into one ``(n, height, width, channels)`` uint8 batch."""
    batch = np.empty((len(items), height, width, channels), dtype=np.uint8)
    for i, data in enumerate(items):
        try:
            batch[i] = decode_image(data, height, width, channels, max_pixels=max_pixels)
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"image {i}: {exc}") from exc
    return batch
