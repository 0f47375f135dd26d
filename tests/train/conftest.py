"""Fixtures of the train/ tests: real MNIST digits from the embedded set, in small folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edgecnn.train.data import EMBEDDED_DIR
from edgecnn.train.idx import read_idx_pair

from tests.helpers.datasets import write_idx_pair


@pytest.fixture(scope="session")
def real_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The embedded MNIST images (N, 28, 28) and labels."""
    images, labels = read_idx_pair(
        EMBEDDED_DIR / "t10k-images-idx3-ubyte.gz", EMBEDDED_DIR / "t10k-labels-idx1-ubyte.gz"
    )
    return images[..., 0], labels


@pytest.fixture(scope="session")
def small_mnist_dir(tmp_path_factory: pytest.TempPathFactory, real_mnist: tuple[np.ndarray, np.ndarray]) -> Path:
    """A full MNIST-layout folder of real digits (read-only): 600 training and 200 test images, gzipped."""
    images, labels = real_mnist
    directory = tmp_path_factory.mktemp("data") / "mnist"
    write_idx_pair(directory, "train", images[:600], labels[:600], gz=True)
    write_idx_pair(directory, "t10k", images[8000:8200], labels[8000:8200], gz=True)
    return directory
