"""Fixtures of the export tests: one short real training run on real MNIST digits, and its export.

The run trains fashion-cnn for three epochs on 1,000 embedded MNIST images and is tested on 500
others, so quantised accuracy is checked on a real model in seconds. The export goes through
the `edgecnn export` command itself, with a single timing round to stay short.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from edgecnn.train.data import EMBEDDED_DIR
from edgecnn.train.idx import read_idx_pair

from tests.helpers.datasets import write_idx_pair
from tests.helpers.exporting import ACCURACY_BOUND, FAST_TIMING, run_export

TRAIN_IMAGES = 1000
TEST_IMAGES = 500


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    """An MNIST-layout folder of real digits: 1,000 training and 500 (held-out) test images."""
    images, labels = read_idx_pair(EMBEDDED_DIR / "t10k-images-idx3-ubyte.gz", EMBEDDED_DIR / "t10k-labels-idx1-ubyte.gz")
    directory = tmp_path_factory.mktemp("mnist")
    splits = {"train": slice(0, TRAIN_IMAGES), "t10k": slice(8000, 8000 + TEST_IMAGES)}
    for split, rows in splits.items():
        write_idx_pair(directory, split, images[rows][..., 0], labels[rows], gz=True)
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


@pytest.fixture(scope="session")
def exported(tmp_path_factory, run_dir: Path) -> Path:
    """The run exported with every variant, through the CLI; the output folder."""
    out_dir = tmp_path_factory.mktemp("exported")
    result = run_export(
        run_dir, "-o", out_dir, "--quantize", "int8,fp16,dynamic", "--max-accuracy-drop", ACCURACY_BOUND, *FAST_TIMING
    )
    assert result.exit_code == 0, result.output
    return out_dir
