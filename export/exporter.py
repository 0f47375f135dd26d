"""`edgecnn export RUN_DIR`: a trainer run -> the fp32 wire-format ONNX model -> the shared pipeline.

This is the run-directory source: it loads the trained model and its dataset, wraps the model
in the wire format (graph.py) and exports it with torch.onnx; pipeline.py does the rest (variants,
accuracy and parity against PyTorch, timing, staged publishing, the report), exactly as it does
for an imported ONNX classifier (importer.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecnn.export import quantize
from edgecnn.export.graph import export_onnx, wrap_for_export
from edgecnn.export.metadata import ModelMetadata
from edgecnn.export.pipeline import OUTPUT_FILES, PARITY_TOLERANCE, Log, Source, export_model, select_recipes, staging_dir
from edgecnn.export.report import ExportReport
from edgecnn.export.settings import ExportError, ExportSettings
from edgecnn.train.checkpoint import RUN_JSON, RunDirError, load_run
from edgecnn.train.data import DatasetError
from edgecnn.train.evaluate import load_run_splits
from edgecnn.train.normalisation import Normalisation

__all__ = ["OUTPUT_FILES", "PARITY_TOLERANCE", "ExportInputs", "export_run", "pytorch_logits", "select_recipes"]

PYTORCH_BATCH = 256
FOLD_DESCRIPTIONS = {
    "weights+bias": "(x/255 - mean)/std folded into the first conv's weights and bias; the graph feeds it raw pixels",
    "weights": "1/(255*std) folded into the first conv's weights; the graph subtracts 255*mean (the conv pads)",
    "none": "(x/255 - mean)/std computed in the graph (the model does not start with a foldable conv)",
}


@dataclass
class ExportInputs:
    """What an export needs, loaded: the trained model, its run record, and real images."""

    model: nn.Module
    info: dict[str, Any]
    run_dir: Path
    calibration_images: np.ndarray  # uint8 NHWC training images
    test_images: np.ndarray  # uint8 NHWC
    test_labels: np.ndarray
    test_set: str  # where the test images come from, in words

    @property
    def image_shape(self) -> tuple[int, int, int]:
        shape = self.info["input"]
        return int(shape["height"]), int(shape["width"]), int(shape["channels"])


def export_run(
    run_dir: str | Path, out_dir: str | Path, settings: ExportSettings = ExportSettings(), log: Log = lambda _: None
) -> ExportReport:
    """Export ``run_dir`` to ``out_dir`` and write the report there; raises ExportError for bad input."""
    settings.check()
    recipes = select_recipes(settings.int8_recipes)
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    loaded = _load_run(run_dir)
    with staging_dir(out_dir) as staging:
        inputs = _load_images(loaded.model, loaded.info, run_dir, settings)
        return _export(inputs, out_dir, staging, settings, recipes, log)


# --- loading ------------------------------------------------------------------------------


def _load_run(run_dir: Path):
    try:
        return load_run(run_dir)
    except RunDirError as exc:
        raise ExportError(str(exc)) from None


def _load_images(model: nn.Module, info: dict[str, Any], run_dir: Path, settings: ExportSettings) -> ExportInputs:
    if "dataset" not in info:  # load_run has checked everything else the export needs
        raise ExportError(f"{run_dir / RUN_JSON} does not record its dataset: train it again")
    try:
        train, test = load_run_splits(info)
    except DatasetError as exc:
        raise ExportError(f"cannot load the run's dataset for calibration and evaluation: {exc}") from None
    order = np.random.default_rng(0).permutation(len(train))[: settings.calibration_size]
    evaluated = slice(0, settings.evaluation_size)
    return ExportInputs(
        model=model,
        info=info,
        run_dir=run_dir,
        calibration_images=np.ascontiguousarray(train.images[np.sort(order)]),
        test_images=np.ascontiguousarray(test.images[evaluated]),
        test_labels=test.labels[evaluated],
        test_set=test.source,
    )


# --- the export ---------------------------------------------------------------------------


def _export(
    inputs: ExportInputs,
    out_dir: Path,
    staging: Path,
    settings: ExportSettings,
    recipes: tuple[quantize.Int8Recipe, ...],
    log: Log,
) -> ExportReport:
    info = inputs.info
    normalisation = Normalisation.from_json(info["normalisation"])
    reference = pytorch_logits(inputs.model, normalisation, inputs.test_images)

    log(f"exporting {info['architecture']} to ONNX (opset {settings.opset})")
    wrapper = wrap_for_export(inputs.model, normalisation, inputs.image_shape)
    fp32_model = export_onnx(wrapper, inputs.image_shape, settings.opset)
    height, width, channels = inputs.image_shape
    metadata = ModelMetadata(
        name=settings.name or info["architecture"],
        version=settings.version,
        labels=list(info["labels"]),
        height=height,
        width=width,
        channels=channels,
        architecture=info["architecture"],
        source_run=str(inputs.run_dir.resolve()),
        test_accuracy=info.get("test_accuracy"),
    )
    source = Source(
        kind="run",
        path=inputs.run_dir,
        metadata=metadata,
        calibration_images=inputs.calibration_images,
        evaluation_images=inputs.test_images,
        evaluation_labels=inputs.test_labels,
        evaluation_set=inputs.test_set,
        reference_logits=reference,
        reference="PyTorch",
        preprocessing=FOLD_DESCRIPTIONS[wrapper.folded],
    )
    return export_model(fp32_model, source, out_dir, staging, settings, recipes, log)


@torch.no_grad()
def pytorch_logits(model: nn.Module, normalisation: Normalisation, images: np.ndarray) -> np.ndarray:
    """The trained model's logits on uint8 NHWC images, preprocessed exactly as the trainer does."""
    model.eval()
    parts = []
    for start in range(0, len(images), PYTORCH_BATCH):
        batch = torch.tensor(images[start : start + PYTORCH_BATCH]).permute(0, 3, 1, 2)  # a copy: may be read-only
        parts.append(model(normalisation.model_input(batch)).numpy())
    return np.concatenate(parts)
