"""Accuracy, per-class accuracy and the confusion matrix of a model on a dataset split."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecnn.train.checkpoint import RUN_JSON, RunDirError, load_run
from edgecnn.train.data import DatasetError, DatasetSpec, load_splits
from edgecnn.train.imageset import ImageSet
from edgecnn.train.normalisation import Normalisation
from edgecnn.train.settings import SettingsError
from edgecnn.train.tensors import DeviceImages

EVAL_BATCH = 256


@torch.no_grad()
def predict(model: nn.Module, data: DeviceImages) -> tuple[np.ndarray, float]:
    """(predicted labels, mean cross-entropy loss) of ``model`` in eval mode over ``data``."""
    model.eval()
    predictions, total_loss = [], 0.0
    for images, labels in data.batches(EVAL_BATCH):
        logits = model(images)
        total_loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        predictions.append(logits.argmax(1).cpu())
    return torch.cat(predictions).numpy(), total_loss / max(len(data), 1)


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j]: images of class i predicted as class j."""
    flat = true.astype(np.int64) * num_classes + predicted.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def summarize(confusion: np.ndarray, labels: list[str]) -> dict[str, Any]:
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {
        "accuracy": float(confusion.diagonal().sum() / max(confusion.sum(), 1)),
        "count": int(confusion.sum()),
        "per_class_accuracy": {label: float(acc) for label, acc in zip(labels, per_class)},
        "labels": list(labels),
        "confusion_matrix": confusion.tolist(),
    }


def evaluate_run(
    run_dir: str | Path, spec: DatasetSpec | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Evaluate the best weights of ``run_dir`` on the test split of ``spec`` (default: the run's own dataset)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise SettingsError("--device cuda was asked for but this torch has no usable CUDA device: use --device cpu")
    loaded = load_run(run_dir, device=device)
    info = loaded.info
    if spec is None and "dataset" not in info:
        raise RunDirError(f"{Path(run_dir) / RUN_JSON} does not name its dataset: pass --dataset")
    spec = spec or DatasetSpec.from_json(info["dataset"])
    _, test = load_run_splits(info, spec)
    data = DeviceImages(test, Normalisation.from_json(info["normalisation"]), torch.device(device))
    predicted, loss = predict(loaded.model, data)
    result = summarize(confusion_matrix(test.labels, predicted, len(info["labels"])), info["labels"])
    return {"run_dir": str(run_dir), "dataset": spec.name, "source": test.source, "loss": loss, **result}


def load_run_splits(info: dict[str, Any], spec: DatasetSpec | None = None) -> tuple[ImageSet, ImageSet]:
    """(train, test) images for a run's model: its own dataset unless ``spec`` is given, folder images
    decoded at the model's input size, and a DatasetError unless the images and classes fit the model."""
    spec = spec or DatasetSpec.from_json(info["dataset"])
    shape = info["input"]
    if spec.name == "folder":
        spec = dataclasses.replace(spec, image_size=(shape["height"], shape["width"]), channels=shape["channels"])
    train, test = load_splits(spec)
    _check_fits(test, info)
    return train, test


def _check_fits(test: ImageSet, info: dict[str, Any]) -> None:
    shape = info["input"]
    expected = (shape["height"], shape["width"], shape["channels"])
    found = (test.height, test.width, test.channels)
    if found != expected:
        raise DatasetError(
            f"{test.source} holds {'x'.join(map(str, found))} images but the model takes {'x'.join(map(str, expected))}"
        )
    if len(test.class_names) != len(info["labels"]):
        raise DatasetError(
            f"{test.source} has {len(test.class_names)} classes but the model predicts {len(info['labels'])}"
        )
