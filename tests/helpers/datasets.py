"""Tiny dataset files written by the tests themselves, in every format the trainer reads."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from edgecnn.train import cifar
from edgecnn.train.idx import IMAGES_MAGIC, LABELS_MAGIC
from PIL import Image

from tests.helpers.models import random_images


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_pair(directory: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    """``{split}-images-idx3-ubyte[.gz]`` and ``{split}-labels-idx1-ubyte[.gz]`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for kind, array, magic in (("images-idx3", images, IMAGES_MAGIC), ("labels-idx1", labels, LABELS_MAGIC)):
        data = idx_bytes(array, magic)
        name = f"{split}-{kind}-ubyte"
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)


def write_cifar_batches(directory: Path, per_file: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All six CIFAR-10 binary batch files with ``per_file`` random records each; returns what was written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, name in enumerate(cifar.TRAIN_FILES + cifar.TEST_FILES):
        images = random_images(per_file, 32, 32, 3, seed=i)
        labels = np.arange(per_file, dtype=np.uint8) % 10
        records = np.concatenate([labels[:, None], images.transpose(0, 3, 1, 2).reshape(per_file, -1)], axis=1)
        (directory / name).write_bytes(records.astype(np.uint8).tobytes())
        written[name] = (images, labels.astype(np.int64))
    return written


def write_image_folder(
    directory: Path, classes: dict[str, int], size: tuple[int, int] = (12, 10), mode: str = "RGB"
) -> None:
    """``directory/<class>/<i>.png|jpg`` with ``classes[name]`` images each (PNG and JPEG alternate)."""
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (directory / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size[0], size[1], 3) if mode == "RGB" else size
            image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
            image.save(directory / name / (f"{i}.png" if i % 2 == 0 else f"{i}.jpg"))
