"""The run's figures: training curves, the confusion matrix and a grid of labelled test images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from edgecnn.train.files import atomic_path  # noqa: E402


def _save(figure: Any, path: Path) -> None:
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)


def plot_curves(epochs: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch, training and validation."""
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    numbers = [e["epoch"] for e in epochs]
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        for part in ("train", "val"):
            values = [e.get(f"{part}_{metric}") for e in epochs]
            if any(v is not None for v in values):
                axes.plot(numbers, values, marker="o", label="validation" if part == "val" else "training")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.5, 2.5 ticks
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        axes.legend()
    _save(figure, path)


def plot_confusion(confusion: np.ndarray, labels: list[str], path: Path) -> None:
    size = max(4.0, 0.5 * len(labels) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(confusion, cmap="Blues")
    ticks = range(len(labels))
    axes.set_xticks(ticks, labels, rotation=90)
    axes.set_yticks(ticks, labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if len(labels) <= 20:
        threshold = confusion.max() / 2
        for (i, j), count in np.ndenumerate(confusion):
            axes.text(j, i, str(count), ha="center", va="center", fontsize=8,
                      color="white" if count > threshold else "black")
    _save(figure, path)


def plot_samples(
    images: np.ndarray, true: np.ndarray, predicted: np.ndarray, labels: list[str], path: Path, count: int = 25
) -> None:
    """The first ``count`` test images titled "predicted (true)", red where wrong, as the seed notebook shows."""
    count = min(count, len(images))
    columns = 5
    rows = max(1, -(-count // columns))
    figure, grid = plt.subplots(rows, columns, figsize=(2 * columns, 2.2 * rows), squeeze=False)
    for i, axes in enumerate(grid.flat):
        axes.axis("off")
        if i >= count:
            continue
        image = images[i]
        axes.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
        right = predicted[i] == true[i]
        axes.set_title(f"{labels[predicted[i]]} ({labels[true[i]]})", fontsize=9, color="green" if right else "red")
    figure.suptitle("predicted (true) on test images; red: wrong")
    _save(figure, path)
