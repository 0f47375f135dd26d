"""Every tunable of `edgecnn export`, with its default: the CLI options read their defaults here.

Torch-free, so `edgecnn export --help` is instant.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

VARIANTS = ("int8", "fp16", "dynamic")  # what --quantize may ask for; fp32 is always exported
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
MIN_OPSET = 18  # the torch.onnx dynamo exporter's floor
MAX_OPSET = 21  # newest opset onnxruntime >= 1.18 (the serve extra's floor) runs and quantises
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ExportError(Exception):
    """Bad input to an export (run dir, settings, output folder); the message is one sentence."""


@dataclass(frozen=True)
class ExportSettings:
    quantize: tuple[str, ...] = ("int8",)  # int8 is what a CPU user wants; fp16 only pays on CUDA
    opset: int = 20
    calibration_size: int = 256  # training images the int8 calibration sees
    calibration_method: str = "minmax"
    max_accuracy_drop: float = 0.005  # a variant losing more accuracy than this (vs PyTorch) fails
    name: str | None = None  # model name in the metadata; None = the architecture
    version: str = "1"
    int8_recipes: tuple[str, ...] = ()  # int8 recipes to try; () = all of export.quantize.INT8_RECIPES
    evaluation_size: int | None = None  # test images to evaluate on; None = the whole test split
    threads: int = 0  # onnxruntime intra-op threads for evaluation and timing; 0 = onnxruntime's default
    latency_batch: int = 1
    throughput_batch: int = 64
    timing_rounds: int = 5  # interleaved timing windows per variant and batch size

    def check(self) -> None:
        """Raise ExportError for values out of range."""
        unknown = [v for v in self.quantize if v not in VARIANTS]
        if unknown:
            raise ExportError(f"--quantize takes {', '.join(VARIANTS)} (comma-separated), not {', '.join(unknown)}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ExportError(
                f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)}, not {self.calibration_method!r}"
            )
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ExportError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET}, not {self.opset}")
        if not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise ExportError(f"--max-accuracy-drop is a fraction in [0, 1] (0.005 = half a point), not {self.max_accuracy_drop}")
        counts = {
            "--calibration-size": self.calibration_size,
            "--latency-batch": self.latency_batch,
            "--throughput-batch": self.throughput_batch,
            "--timing-rounds": self.timing_rounds,
        }
        for flag, value in counts.items():
            if value < 1:
                raise ExportError(f"{flag} must be at least 1, not {value}")
        if self.evaluation_size is not None and self.evaluation_size < 1:
            raise ExportError(f"--evaluation-size must be at least 1, not {self.evaluation_size}")
        if self.threads < 0:
            raise ExportError(f"--threads must be 0 (onnxruntime's default) or more, not {self.threads}")
        if not self.version.strip():
            raise ExportError("--version must not be empty")
        if self.name is not None and not MODEL_NAME.fullmatch(self.name):
            raise ExportError(f"--name takes letters, digits, '.', '_' and '-' (it names the model to clients), not {self.name!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
