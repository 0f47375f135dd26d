"""Every tunable of `edgecnn export`, with its default: the CLI options read their defaults here.

Torch-free, so `edgecnn export --help` is instant.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from edgecnn.train.commandline import parse_image_size as image_size

VARIANTS = ("int8", "fp16", "dynamic")  # what --quantize may ask for; fp32 is always exported
# Options that take one of a few values are Literal types: `--help` lists the choices and typer refuses others.
CalibrationMethod = Literal["minmax", "entropy", "percentile"]
ChannelOrder = Literal["rgb", "bgr"]
Layout = Literal["nchw", "nhwc"]
SoftmaxMode = Literal["auto", "yes", "no"]
CALIBRATION_METHODS = get_args(CalibrationMethod)
MIN_OPSET = 18  # the torch.onnx dynamo exporter's floor
MAX_OPSET = 21  # newest opset onnxruntime >= 1.18 (the serve extra's floor) runs and quantises
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
CHANNEL_ORDERS = get_args(ChannelOrder)
LAYOUTS = get_args(Layout)
SOFTMAX_MODES = get_args(SoftmaxMode)


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
    timing_rounds: int = 5  # interleaved timing windows per variant and batch size: the search's, then fp32 vs the chosen int8's

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


@dataclass(frozen=True)
class ImportSettings(ExportSettings):
    """`edgecnn export MODEL.onnx`: everything an export takes, plus how to read a foreign classifier.

    The preprocessing the wrapped graph applies to the wire's uint8 RGB (or gray) pixels, per channel
    in the model's own channel order: ``(pixels * scale - mean) / std``.
    """

    quantize: tuple[str, ...] = ()  # int8 needs calibration_data; the CLI asks for int8 when a folder is given
    labels_file: str | None = None  # one label per line
    labels_key: str | None = None  # a key of the model's own metadata_props holding the labels
    scale: float = 1 / 255
    mean: tuple[float, ...] = ()  # () = 0 for every channel
    std: tuple[float, ...] = ()  # () = 1 for every channel
    channel_order: str = "rgb"  # what the model expects; the wire is always RGB (or gray)
    layout: str | None = None  # nchw | nhwc; None = read from the graph
    image_size: tuple[int, int] | None = None  # (height, width); None = read from the graph
    input_name: str | None = None  # the graph's image input, when it has several inputs
    output_name: str | None = None  # the graph's class scores, when it has several outputs
    softmax: str = "auto"  # auto | yes | no: whether the graph's output still needs a Softmax
    calibration_data: str | None = None  # folder of PNG/JPEG images: int8 calibration and held-out evaluation

    def check(self) -> None:
        super().check()
        if self.labels_file is not None and self.labels_key is not None:
            raise ExportError("give --labels FILE or --labels-key KEY, not both")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ExportError(f"--scale must be a positive number (1/255 = {1 / 255:.6f} maps 255 to 1), not {self.scale}")
        if not all(math.isfinite(m) for m in self.mean):
            raise ExportError(f"--mean takes finite numbers, not {_numbers(self.mean)}")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ExportError(f"--std takes positive numbers (they divide), not {_numbers(self.std)}")
        choices = {"--channel-order": (self.channel_order, CHANNEL_ORDERS), "--softmax": (self.softmax, SOFTMAX_MODES)}
        if self.layout is not None:
            choices["--layout"] = (self.layout, LAYOUTS)
        for flag, (value, allowed) in choices.items():
            if value not in allowed:
                raise ExportError(f"{flag} takes {' or '.join(allowed)}, not {value!r}")
        if self.image_size is not None and min(self.image_size) < 1:
            raise ExportError(f"--image-size takes a positive HEIGHTxWIDTH, not {self.image_size[0]}x{self.image_size[1]}")
        if "int8" in self.quantize and self.calibration_data is None:
            raise ExportError(
                "--quantize int8 needs --calibration-data FOLDER (PNG/JPEG images to calibrate on and to check "
                "the int8 model against the original with)"
            )


def parse_numbers(flag: str, text: str) -> tuple[float, ...]:
    """'0.485,0.456,0.406' -> (0.485, 0.456, 0.406); ExportError naming ``flag`` otherwise."""
    parts = [part.strip() for part in text.split(",")]
    try:
        return tuple(float(part) for part in parts)
    except ValueError:
        raise ExportError(f"{flag} takes comma-separated numbers such as 0.485,0.456,0.406, not {text!r}") from None


def parse_scale(text: str) -> float:
    """A number or a fraction: '0.00392', '1/255'."""
    numerator, slash, denominator = text.partition("/")
    try:
        value = float(numerator) / float(denominator) if slash else float(text)
    except (ValueError, ZeroDivisionError):
        raise ExportError(f"--scale takes a number or a fraction such as 1/255, not {text!r}") from None
    return value


def parse_image_size(text: str) -> tuple[int, int]:
    """'224x224', '224*224' or '224' -> (height, width); ImportSettings checks that both are positive."""
    try:
        return image_size(text.replace("*", "x"))
    except ValueError:
        raise ExportError(f"--image-size takes HEIGHTxWIDTH such as 224x224, not {text!r}") from None


def _numbers(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)
