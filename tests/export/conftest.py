"""Fixtures of the export tests: one short real training run on real MNIST digits, and its export.

The run trains fashion-cnn for three epochs on 1,000 embedded MNIST images and is tested on 500
others, so quantised accuracy is checked on a real model in seconds. The export goes through
the `edgecnn export` command itself, with a single timing round to stay short.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgecnn.serve.cli import app
from edgecnn.train.data import EMBEDDED_DIR
from edgecnn.train.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx_pair

TRAIN_IMAGES = 1000
TEST_IMAGES = 500
FAST_TIMING = ["--timing-rounds", "1", "--throughput-batch", "16"]
# 500 test images make one image 0.2 points: a short run's model is held to 2 points, not the default 0.5.
ACCURACY_BOUND = 0.02


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()))


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    """An MNIST-layout folder of real digits: 1,000 training and 500 (held-out) test images."""
    images, labels = read_idx_pair(EMBEDDED_DIR / "t10k-images-idx3-ubyte.gz", EMBEDDED_DIR / "t10k-labels-idx1-ubyte.gz")
    directory = tmp_path_factory.mktemp("mnist")
    splits = {"train": slice(0, TRAIN_IMAGES), "t10k": slice(8000, 8000 + TEST_IMAGES)}
    for split, rows in splits.items():
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", images[rows][..., 0], IMAGES_MAGIC)
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", labels[rows], LABELS_MAGIC)
    return directory


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, mnist_dir: Path) -> Path:
    """A real, short training run of fashion-cnn (three epochs: about 90% test accuracy)."""
    from edgecnn.train.settings import TrainSettings
    from edgecnn.train.trainer import train

    settings = TrainSettings(
        dataset="mnist", data_dir=str(mnist_dir), download=False, model="fashion-cnn", epochs=3,
        val_split=0.0, run_dir=str(tmp_path_factory.mktemp("runs") / "fashion"),
    )
    return train(settings, progress=False)


def run_export(*args: str):
    """`edgecnn export ...` in this process; returns the click Result."""
    return CliRunner().invoke(app, ["export", *map(str, args)])


@pytest.fixture(scope="session")
def exported(tmp_path_factory, run_dir: Path) -> Path:
    """The run exported with every variant, through the CLI; the output folder."""
    out_dir = tmp_path_factory.mktemp("exported")
    result = run_export(
        run_dir, "-o", out_dir, "--quantize", "int8,fp16,dynamic", "--max-accuracy-drop", ACCURACY_BOUND, *FAST_TIMING
    )
    assert result.exit_code == 0, result.output
    return out_dir
