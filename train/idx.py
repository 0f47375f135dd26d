"""IDX files (the MNIST and Fashion-MNIST format), gzipped or raw.

Header: two zero bytes, a type byte (0x08 = uint8), the number of dimensions, then one
big-endian uint32 per dimension. The magic number (bytes 0..3 as uint32) is 2051 for
image files and 2049 for label files.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from edgecnn.train.imageset import DatasetError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(f"{path} is not a complete gzip file ({exc}): it is truncated or corrupt") from None
    except OSError as exc:
        raise DatasetError(f"{path} cannot be read: {exc.strerror or exc}") from None


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """The uint8 array stored in ``path``, whose header must carry ``magic``."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"{path} is {len(data)} bytes long, too short to be an IDX file")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        kind = "image" if magic == IMAGES_MAGIC else "label"
        raise DatasetError(f"{path} has magic number {found}, not {magic}: it is not an IDX {kind} file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise DatasetError(
            f"{path} is {len(data)} bytes long but its header {shape} needs {expected}: "
            "the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (N, H, W, 1) and labels as int64 (N,) from one IDX image/label file pair."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC).astype(np.int64)
    if images.ndim != 3:
        raise DatasetError(f"{images_path} holds a {images.ndim}-dimensional array, not N x height x width images")
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return images[..., np.newaxis], labels
