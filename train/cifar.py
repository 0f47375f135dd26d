"""CIFAR-10 in its binary distribution (never the pickled one).

Each record is 3,073 bytes: one label byte, then 1,024 red, 1,024 green and 1,024 blue
pixel bytes of a 32x32 image in row-major order.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from edgecnn.train.files import atomic_write_bytes
from edgecnn.train.imageset import DatasetError

ARCHIVE = "cifar-10-binary.tar.gz"
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILES = ["test_batch.bin"]
META_FILE = "batches.meta.txt"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SIDE = 32
RECORD_BYTES = 1 + 3 * SIDE * SIDE


def read_batches(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (N, 32, 32, 3) and labels as int64 (N,) from binary batch files."""
    images, labels = [], []
    for path in paths:
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except FileNotFoundError:
            raise DatasetError(f"{path} does not exist") from None
        except OSError as exc:
            raise DatasetError(f"{path} cannot be read: {exc.strerror or exc}") from None
        if data.size == 0 or data.size % RECORD_BYTES:
            raise DatasetError(
                f"{path} is {data.size} bytes long, not a whole number of {RECORD_BYTES}-byte CIFAR-10 records: "
                "it is truncated or corrupt"
            )
        records = data.reshape(-1, RECORD_BYTES)
        labels.append(records[:, 0].astype(np.int64))
        images.append(records[:, 1:].reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def read_class_names(directory: Path) -> list[str]:
    path = directory / META_FILE
    if not path.exists():
        return list(CLASS_NAMES)
    names = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if len(names) != len(CLASS_NAMES):
        raise DatasetError(f"{path} names {len(names)} classes, not {len(CLASS_NAMES)}: the file is corrupt")
    return names


def extract_archive(archive: Path, directory: Path) -> None:
    """Unpack only the batch and meta files, flat into ``directory`` (no paths from the archive are trusted)."""
    wanted = set(TRAIN_FILES + TEST_FILES + [META_FILE])
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if member.isfile() and name in wanted:
                    source = tar.extractfile(member)
                    assert source is not None
                    atomic_write_bytes(directory / name, source.read())
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DatasetError(f"{archive} cannot be unpacked ({exc}): it is truncated or corrupt") from None
