"""Images to the wire format (uint8, HWC) with Pillow: one codec for training folders and the server."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

_MODES = {1: "L", 3: "RGB"}


class ImageDecodeError(ValueError):
    """Bytes that are not a readable PNG/JPEG/... image."""


def to_array(image: Image.Image, height: int, width: int, channels: int) -> np.ndarray:
    """Convert (mode), resize (bilinear) and return a ``(height, width, channels)`` uint8 array."""
    if channels not in _MODES:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image = image.convert(_MODES[channels])
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array.reshape(height, width, channels)


def decode_image(data: bytes, height: int, width: int, channels: int) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ...) into the model's wire format."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_array(image, height, width, channels)
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"not an image format Pillow reads ({len(data)} bytes)") from exc
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"not a decodable image ({len(data)} bytes): {exc}") from exc


def decode_images(items: list[bytes], height: int, width: int, channels: int) -> np.ndarray:
    """Decode a request's encoded images into one ``(n, height, width, channels)`` uint8 batch."""
    batch = np.empty((len(items), height, width, channels), dtype=np.uint8)
    for i, data in enumerate(items):
        try:
            batch[i] = decode_image(data, height, width, channels)
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"image {i}: {exc}") from exc
    return batch
