"""Export helpers: `edgecnn export` in this process, a colour dataset with a classifier that really reads it,
and scripted int8-vs-fp32 timings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from edgecnn.export.evaluate import compare_rounds
from edgecnn.export.report import Int8Speed
from edgecnn.serve.cli import app
from PIL import Image
from typer.testing import CliRunner

from tests.helpers.foreign_models import write_classifier

FAST_TIMING = ["--timing-rounds", "1", "--throughput-batch", "16"]
# 500 test images make one image 0.2 points: a short run's model is held to 2 points, not the default 0.5.
ACCURACY_BOUND = 0.02


def run_export(*args: str):
    """`edgecnn export ...` in this process; returns the click Result."""
    return CliRunner().invoke(app, ["export", *map(str, args)])


COLOURS = ("red", "green", "blue")


def colour_folder(root: Path, per_class: int = 10, size: int = 16) -> Path:
    """One sub-folder per class of PNGs: the class's channel bright, the others dark."""
    rng = np.random.default_rng(9)
    for c, colour in enumerate(COLOURS):
        (root / colour).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            pixels[..., c] = rng.integers(150, 256, (size, size), dtype=np.uint8)
            Image.fromarray(pixels).save(root / colour / f"{i:02d}.png")
    return root


def colour_classifier(path: Path) -> Path:
    """A classifier that really works on colour_folder: filter k averages channel k, the head reads them."""
    conv = np.zeros((6, 3, 3, 3), np.float32)
    for k in range(3):
        conv[k, k] = 1 / 9
    conv[3:] = np.random.default_rng(10).normal(0, 0.1, (3, 3, 3, 3))
    head = np.zeros((3, 6), np.float32)
    head[:, :3] = 4 * np.eye(3)
    return write_classifier(path, size=(16, 16), conv_weights=conv, fc_weights=head)


MS = 1e-3


def rounds_of(*milliseconds: float, calls: int = 5) -> list[np.ndarray]:
    """One array of ``calls`` equal samples (seconds) per round."""
    return [np.full(calls, ms * MS) for ms in milliseconds]


def int8_speed(latency_int8_ms: tuple[float, ...], throughput_int8_ms: tuple[float, ...]) -> Int8Speed:
    fp32 = (10.0,) * len(latency_int8_ms)
    latency = compare_rounds(1, rounds_of(*fp32), rounds_of(*latency_int8_ms))
    throughput = compare_rounds(64, rounds_of(*fp32), rounds_of(*throughput_int8_ms))
    return Int8Speed(
        recipe="u8s8", cpu_path="avx2", rounds=len(fp32), latency=latency, throughput=throughput,
        never_slower=latency.never_slower and throughput.never_slower,
    )
