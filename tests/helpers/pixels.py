"""The tiny model's input worked out by Pillow alone, never by edgecnn's decoder, so decoding is checked
against an independent answer."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def pillow_grey_8x8(source: bytes | Path) -> np.ndarray | None:
    """Encoded bytes or a file decoded by Pillow, converted to grey (ITU-R 601-2 luma, alpha dropped), then
    resized bilinearly to 8x8, as (8, 8, 1) uint8; None where Pillow reads no image."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return np.asarray(image.convert("L").resize((8, 8), Image.BILINEAR), dtype=np.uint8)[..., None]
    except OSError:
        return None
