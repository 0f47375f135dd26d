"""`edgecnn export MODEL.onnx`: any ONNX image classifier, wrapped into edgecnn's self-describing wire format.

    images uint8 [N,H,W,C], RGB or gray as on the wire
        -> [Gather: RGB -> BGR, for a model that expects BGR]
        -> [Transpose to NCHW, still uint8, for an NCHW model]
        -> Cast float -> Mul(scale/std) -> Add(-mean/std)   i.e. (x*scale - mean)/std in one Mul and one Add
        -> [Cast to the model's own float type]
        -> the original graph, every name prefixed "original/" (no clash with ours)
        -> logits [N,K] and probabilities [N,K]: a Softmax is added unless the graph ends in one

Then the fp32 graph goes through the same pipeline as a trained run (pipeline.py): variants,
accuracy and parity, the int8 recipe search, timing, staged publishing and the report. The
reference every variant is held to is the original file run by onnxruntime on the same pixels
with the documented preprocessing (``Preprocessing.apply``). Nothing here imports torch.

Bad input is one ExportError sentence, raised before anything is written to OUT_DIR.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.compose
import onnx.version_converter
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgecnn.export import evaluate
from edgecnn.export.metadata import INPUT_NAME, LOGITS, PREFIX as METADATA_PREFIX, PROBABILITIES, ModelMetadata
from edgecnn.export.pipeline import PARITY_TOLERANCE, Log, Source, export_model, select_recipes, staging_dir
from edgecnn.export.report import ExportReport
from edgecnn.export.settings import MODEL_NAME, ExportError, ImportSettings

ORIGINAL = "original/"  # prefix of every name of the imported graph
OURS = "edgecnn/"  # prefix of the nodes and constants the import adds
ARCHITECTURE = "imported"
HOLDOUT_EVERY = 5  # every 5th image of --calibration-data is held out for evaluation, never calibrated on
RANDOM_IMAGES = 64  # parity images without --calibration-data
RANDOM_SEED = 0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FOLD_TOLERANCE = 1e-5  # the folded Mul+Add is kept if it moves no logit more than this (parity allows 1e-4)
# A graph computing in float16 rounds its own logits to about 1e-3 of their size, and onnxruntime runs
# its float16 ops through float32 kernels where the wrapped graph lets it skip a rounding: parity for
# such a graph is 1e-2 of the largest logit (wrong preprocessing still moves logits by far more).
FLOAT16_PARITY = 1e-2
REFERENCE_BATCH = 64
LOG_FLOOR = float(np.finfo(np.float32).tiny)  # logits = log(max(p, this)): finite for p == 0
MIN_OPSET = 8  # broadcasting Mul/Add/Max
INT8_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (their axis attribute)
FLOAT_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}
CPU = ["CPUExecutionProvider"]


# --- what the import found ------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInput:
    """The original graph's image input."""

    name: str
    elem_type: int  # float, float16 or double
    layout: str  # NCHW | NHWC
    height: int
    width: int
    channels: int
    batch: int | None  # the original's fixed batch size; None when dynamic
    declared: str  # its declared shape, for messages: [N, 3, 224, 224]

    @property
    def numpy_type(self) -> type:
        return FLOAT_TYPES[self.elem_type]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The wire image: height, width, channels."""
        return (self.height, self.width, self.channels)


@dataclass(frozen=True)
class Preprocessing:
    """What the graph does to wire pixels before the original model sees them (per model channel)."""

    scale: float
    mean: np.ndarray  # float64 [C], in the model's channel order
    std: np.ndarray
    bgr: bool

    def apply(self, images: np.ndarray, image_input: ImageInput) -> np.ndarray:
        """The documented preprocessing in numpy float32: uint8 RGB NHWC -> the original model's input."""
        x = images[..., ::-1] if self.bgr else images
        x = x.astype(np.float32) * np.float32(self.scale)
        x = (x - self.mean.astype(np.float32)) / self.std.astype(np.float32)
        if image_input.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x.astype(image_input.numpy_type, copy=False))

    def describe(self, image_input: ImageInput, folded: bool) -> str:
        steps = []
        if self.bgr:
            steps.append("RGB wire pixels reordered to BGR")
        if image_input.layout == "NCHW":
            steps.append("transposed to NCHW")
        how = "folded into one Mul and one Add" if folded else "computed as Mul, Sub and Div"
        steps.append(
            f"(x * {self.scale:.6g} - mean) / std per channel, mean {_numbers(self.mean)}, std {_numbers(self.std)}, {how}"
        )
        if image_input.elem_type != TensorProto.FLOAT:
            steps.append(f"cast to {TensorProto.DataType.Name(image_input.elem_type).lower()}")
        return "; ".join(steps)


@dataclass(frozen=True)
class Head:
    """Where logits and probabilities come from in the original graph."""

    kind: str  # add-softmax | softmax-input | log-probabilities
    output: str  # the original output: the class scores
    elem_type: int
    pre_softmax: str = ""  # softmax-input: the Softmax's input
    why: str = ""

    def describe(self) -> str:
        if self.kind == "add-softmax":
            return f"logits: the graph's output {self.output!r}; probabilities: a Softmax added over it ({self.why})"
        if self.kind == "softmax-input":
            return (
                f"the graph ends in a Softmax{self.why}: probabilities are its output {self.output!r}, "
                f"logits the Softmax's input {self.pre_softmax!r} (the pre-softmax scores)"
            )
        return (
            f"probabilities: the graph's output {self.output!r} ({self.why}); "
            f"logits: log of the probabilities, floored at {LOG_FLOOR:.1e}"
        )


@dataclass
class Images:
    """Calibration and held-out images (uint8 NHWC, wire format) and what they are."""

    calibration: np.ndarray | None
    evaluation: np.ndarray
    evaluation_set: str
    classes: list[str | None] = field(default_factory=list)  # each held-out image's class folder, if any
    folder: Path | None = None


# --- the import ----------------------------------------------------------------------------


def import_onnx(
    path: str | Path, out_dir: str | Path, settings: ImportSettings = ImportSettings(), log: Log = lambda _: None
) -> ExportReport:
    """Import the ONNX classifier at ``path`` into ``out_dir`` and write the report; raises ExportError for bad input."""
    settings.check()
    recipes = select_recipes(settings.int8_recipes)
    path, out_dir = Path(path), Path(out_dir)
    original = load_model(path)
    notes: list[str] = []
    original = _ensure_opset(original, settings, notes)
    image_input = find_image_input(original.graph, settings)
    preprocessing = make_preprocessing(settings, image_input)
    head = find_head(original, settings)
    images = load_images(settings, image_input)

    # Everything up to the parity check may refuse the model: progress is logged once it has passed,
    # so a refusal is the only line printed.
    runner = _Original(original, image_input, preprocessing, head, settings.threads)
    reference = runner.logits(images.evaluation)
    classes = reference.shape[1]
    labels, label_source = read_labels(settings, original, classes, path)
    truth, accuracy_basis, true_classes = _truth(images, labels, reference)
    tolerance = parity_tolerance(image_input, head, reference)
    wrapped, folded, parity = _wrap_faithfully(
        original, image_input, preprocessing, head, classes, images, reference, path, tolerance
    )

    if settings.labels_file is None and settings.labels_key is None:
        log(f"warning: no --labels or --labels-key: the labels are the class indices 0..{classes - 1}")
    log(
        f"wrapped {path.name} (uint8 NHWC in, preprocessing inside, logits and probabilities out): "
        f"max |logit difference| {parity.max_abs_logit_diff:.2e} and top-1 agreement {parity.top1_agreement:.2%} "
        f"vs the original on {len(images.evaluation)} {images.evaluation_set}"
    )
    notes = [
        f"original input {image_input.name!r} {image_input.declared} "
        f"({image_input.layout}, {TensorProto.DataType.Name(image_input.elem_type).lower()}), "
        f"served at {image_input.height}x{image_input.width}x{image_input.channels}",
        head.describe(),
        f"labels: {label_source}",
        *notes,
        f"parity before publishing: max |logit difference| {parity.max_abs_logit_diff:.2e} (at most {tolerance:.1e}"
        f"{' as the graph computes in float16' if tolerance > PARITY_TOLERANCE else ''}), "
        f"top-1 agreement {parity.top1_agreement:.2%} vs the original on the same pixels",
    ]
    if images.calibration is not None:
        notes.append(f"int8 calibration: {len(images.calibration)} images of {images.folder} (the held-out ones excluded)")
    metadata = ModelMetadata(
        name=settings.name or default_name(path),
        version=settings.version,
        labels=labels,
        height=image_input.height,
        width=image_input.width,
        channels=image_input.channels,
        architecture=ARCHITECTURE,
        source_run=str(path.resolve()),
        test_accuracy=evaluate.accuracy(reference, truth) if true_classes else None,
    )
    source = Source(
        kind="onnx",
        path=path,
        metadata=metadata,
        calibration_images=images.calibration,
        evaluation_images=images.evaluation,
        evaluation_labels=truth,
        evaluation_set=images.evaluation_set,
        reference_logits=reference,
        reference="the original",
        preprocessing=preprocessing.describe(image_input, folded),
        accuracy_basis=accuracy_basis,
        notes=notes,
        parity_tolerance=tolerance,
    )
    with staging_dir(out_dir) as staging:
        return export_model(wrapped, source, out_dir, staging, settings, recipes, log)


def parity_tolerance(image_input: ImageInput, head: Head, reference: np.ndarray) -> float:
    """1e-4, or for a float16 graph 1e-2 of its largest logit (FLOAT16_PARITY)."""
    if TensorProto.FLOAT16 not in (image_input.elem_type, head.elem_type):
        return PARITY_TOLERANCE
    return max(PARITY_TOLERANCE, FLOAT16_PARITY * float(np.abs(reference).max()))


def default_name(path: Path) -> str:
    """The file's stem as a model name: 'resnet 50.onnx' -> 'resnet-50'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).lstrip("._-")
    return name if MODEL_NAME.fullmatch(name) else ARCHITECTURE


# --- reading the original -------------------------------------------------------------------


def load_model(path: Path) -> onnx.ModelProto:
    """The ONNX file at ``path`` with its external weights, or an ExportError naming what is wrong with it."""
    if not path.exists():
        raise ExportError(f"SOURCE {path}: no such file")
    if not path.is_file():
        raise ExportError(f"SOURCE {path}: a folder, not an ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
        raise ExportError(f"SOURCE {path} is not an ONNX model ({_first_line(exc)})") from None
    missing = missing_external_data(model, path.parent)
    if missing:
        raise ExportError(
            f"{path} refers to external weights in {missing}, which is missing: copy it beside {path.name}"
        )
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except OSError as exc:
        raise ExportError(f"cannot read the external weights of {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - onnx's checks of a location (outside the folder, not a file)
        raise ExportError(f"cannot read the external weights of {path}: {_first_line(exc)}") from None
    if not model.graph.node or not model.graph.output:
        raise ExportError(f"SOURCE {path} is not an ONNX model (no graph in it)")
    if any(p.key.startswith(METADATA_PREFIX) for p in model.metadata_props):
        raise ExportError(f"{path} is already an edgecnn export: serve it as it is")
    return model


def missing_external_data(model: onnx.ModelProto, folder: Path) -> str:
    """The first external data file (as the model names it, e.g. model.onnx.data) that ``model``'s tensors
    refer to and ``folder`` lacks; "" when every one is there (or the weights are inside the file)."""
    for tensor in _tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = {entry.key: entry.value for entry in tensor.external_data}.get("location", "")
        if location and not (folder / location).is_file():
            return location
    return ""


def _tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every tensor of ``graph`` that can hold weights: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            yield from ([attribute.t] if attribute.HasField("t") else [])
            yield from attribute.tensors
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _tensors(subgraph)


def find_image_input(graph: onnx.GraphProto, settings: ImportSettings) -> ImageInput:
    """The one image input: float, rank 4, 1 or 3 channels, its layout and size known or given."""
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if not inputs:
        raise ExportError("the graph has no input: it is not an image classifier")
    value = _pick(inputs, settings.input_name, "input", "the image input with --input-name")
    others = [i.name for i in inputs if i is not value]
    if others:
        raise ExportError(
            f"besides its image input {value.name!r} the graph needs {', '.join(others)}, which an image classifier is not fed"
        )
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or tensor.elem_type not in FLOAT_TYPES:
        kind = TensorProto.DataType.Name(tensor.elem_type).lower() if value.type.HasField("tensor_type") else "not a tensor"
        raise ExportError(f"input {value.name!r} is {kind}; import takes a model whose image input is float")
    if not tensor.HasField("shape"):
        raise ExportError(f"input {value.name!r} declares no shape: an image classifier takes [N, C, H, W] or [N, H, W, C]")
    dims: list[int | None] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
    names = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
    declared = "[" + ", ".join(names) + "]"
    if len(dims) != 4:
        raise ExportError(
            f"input {value.name!r} has rank {len(dims)} {declared}, not 4: "
            "an image classifier takes [N, C, H, W] or [N, H, W, C]"
        )
    layout = _layout(value.name, dims, declared, settings.layout)
    channel_axis, (height_axis, width_axis) = (1, (2, 3)) if layout == "NCHW" else (3, (1, 2))
    channels = dims[channel_axis]
    if channels is None:
        raise ExportError(f"input {value.name!r} {declared} leaves its channels dynamic; edgecnn serves 1 (gray) or 3 (RGB)")
    if channels not in (1, 3):
        raise ExportError(
            f"input {value.name!r} {declared} has {channels} channels ({layout}); edgecnn serves 1 (gray) or 3 (RGB)"
        )
    height, width = dims[height_axis], dims[width_axis]
    if settings.image_size is not None:
        asked = settings.image_size
        if (height is not None and height != asked[0]) or (width is not None and width != asked[1]):
            raise ExportError(
                f"--image-size {asked[0]}x{asked[1]} does not match input {value.name!r} {declared} ({layout})"
            )
        height, width = asked
    elif height is None or width is None:
        raise ExportError(
            f"input {value.name!r} {declared} leaves height and width dynamic: give --image-size HxW "
            "(the size the model expects)"
        )
    return ImageInput(value.name, tensor.elem_type, layout, height, width, channels, dims[0], declared)


def _layout(name: str, dims: list[int | None], declared: str, asked: str | None) -> str:
    """--layout, or the one of axis 1 (NCHW) and axis 3 (NHWC) that holds 1 or 3 channels."""
    if asked is not None:
        return asked.upper()
    candidates = [layout for layout, axis in (("NCHW", 1), ("NHWC", 3)) if dims[axis] in (1, 3)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates and dims[1] is not None and dims[3] is not None:
        raise ExportError(
            f"input {name!r} {declared} has neither 1 nor 3 channels on axis 1 (NCHW) or 3 (NHWC); "
            "edgecnn serves 1 (gray) or 3 (RGB)"
        )
    fit = "both" if candidates else "neither"
    raise ExportError(
        f"cannot tell whether input {name!r} {declared} is NCHW or NHWC ({fit} of axes 1 and 3 fit): "
        "give --layout nchw or --layout nhwc"
    )


def make_preprocessing(settings: ImportSettings, image_input: ImageInput) -> Preprocessing:
    channels = image_input.channels
    kind = "gray" if channels == 1 else "RGB"
    values = {}
    for flag, given, default in (("--mean", settings.mean, 0.0), ("--std", settings.std, 1.0)):
        if given and len(given) != channels:
            raise ExportError(
                f"{flag} takes {channels} value{'s' * (channels > 1)} for this {kind} model "
                f"(one per channel, in the model's channel order), not {len(given)}"
            )
        values[flag] = np.array(given or [default] * channels, dtype=np.float64)
    bgr = settings.channel_order == "bgr"
    if bgr and channels != 3:
        raise ExportError("--channel-order bgr needs a 3-channel model; this one takes gray images")
    return Preprocessing(settings.scale, values["--mean"], values["--std"], bgr)


def _pick(values: list, wanted: str | None, kind: str, how: str):
    """The graph input or output named ``wanted``, or the only one; else one sentence saying how to choose."""
    names = ", ".join(v.name for v in values)
    if wanted is not None:
        chosen = [v for v in values if v.name == wanted]
        if not chosen:
            raise ExportError(f"the graph has no {kind} named {wanted!r} (its {kind}s: {names})")
        return chosen[0]
    if len(values) > 1:
        raise ExportError(f"the graph has {len(values)} {kind}s ({names}): name {how}")
    return values[0]


def find_head(model: onnx.ModelProto, settings: ImportSettings) -> Head:
    """The class-score output, and whether the graph already ends in a Softmax."""
    graph = model.graph
    value = _pick(list(graph.output), settings.output_name, "output", "the class scores with --output-name")
    tensor = value.type.tensor_type
    if tensor.elem_type not in FLOAT_TYPES:
        raise ExportError(
            f"output {value.name!r} is {TensorProto.DataType.Name(tensor.elem_type).lower()}; import takes float class scores"
        )
    if tensor.HasField("shape") and len(tensor.shape.dim) != 2:
        raise ExportError(
            f"output {value.name!r} has rank {len(tensor.shape.dim)}, not 2: an image classifier gives [N, classes]"
        )
    softmax, direct, path = _softmax_behind(graph, value.name, _opset(model))
    then = f" then {', '.join(path)}" if path else ""
    if settings.softmax == "yes":
        why = "--softmax yes" + (f", although the graph ends in a Softmax{then}" if softmax else "")
        return Head("add-softmax", value.name, tensor.elem_type, why=why)
    if softmax is not None and direct:
        identity = " (then Identity)" if softmax.output[0] != value.name else ""
        return Head("softmax-input", value.name, tensor.elem_type, pre_softmax=softmax.input[0], why=identity)
    if softmax is not None:
        why = f"a Softmax{then}, so the pre-softmax scores are not [N, classes] in the graph"
        return Head("log-probabilities", value.name, tensor.elem_type, why=why)
    if settings.softmax == "no":
        return Head("log-probabilities", value.name, tensor.elem_type, why="--softmax no: taken as probabilities")
    return Head("add-softmax", value.name, tensor.elem_type, why="the graph does not end in a Softmax")


def _softmax_behind(graph: onnx.GraphProto, name: str, opset: int) -> tuple[onnx.NodeProto | None, bool, list[str]]:
    """The Softmax producing output ``name``, through Identity (direct) or shape-only ops (not direct)."""
    producers = {output: node for node in graph.node for output in node.output}
    path: list[str] = []
    while (node := producers.get(name)) is not None:
        if node.op_type == "Softmax" and node.domain in ("", "ai.onnx"):
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
            direct = all(op == "Identity" for op in path)
            if direct and axis not in (1, -1):
                return None, False, []  # not over the classes of [N, classes]
            return node, direct, [op for op in reversed(path) if op != "Identity"]
        if node.op_type == "Identity" or node.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            path.append(node.op_type)
            name = node.input[0]
            continue
        break
    return None, False, []


def read_labels(settings: ImportSettings, model: onnx.ModelProto, classes: int, path: Path) -> tuple[list[str], str]:
    """The class names, from --labels FILE, from --labels-key in the model's metadata, or 0..K-1."""
    if settings.labels_file is not None:
        labels_path = Path(settings.labels_file)
        try:
            text = labels_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ExportError(f"cannot read --labels {labels_path}: {getattr(exc, 'strerror', None) or exc}") from None
        labels = [line.strip() for line in text.splitlines() if line.strip()]
        where, source = f"--labels {labels_path}", f"{labels_path} (one per line)"
    elif settings.labels_key is not None:
        props = {p.key: p.value for p in model.metadata_props}
        if settings.labels_key not in props:
            keys = ", ".join(sorted(props)) or "none"
            raise ExportError(f"{path.name} has no metadata key {settings.labels_key!r} for --labels-key (its keys: {keys})")
        where = f"metadata key {settings.labels_key!r}"
        labels = parse_labels(props[settings.labels_key], where)
        source = f"the model's {where}"
    else:
        return [str(i) for i in range(classes)], f"class indices 0..{classes - 1} (no --labels or --labels-key given)"
    if len(labels) != classes:
        raise ExportError(f"{where} holds {len(labels)} labels but the model gives {classes} classes")
    return labels, source


def parse_labels(text: str, where: str = "the labels") -> list[str]:
    """A JSON list, a JSON (or Python-literal) dict of index -> label, or comma/newline-separated labels."""
    stripped = text.strip()
    value: Any = None
    if stripped[:1] in ("[", "{"):
        try:
            value = json.loads(stripped)
        except ValueError:
            try:
                value = ast.literal_eval(stripped)  # e.g. "{0: 'person', 1: 'bicycle'}": literals only, never code
            except Exception:  # noqa: BLE001 - not a literal: read it as separated labels
                value = None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, dict):
        try:
            by_index = {int(k): str(v) for k, v in value.items()}
        except (TypeError, ValueError):
            raise ExportError(f"{where} is a mapping whose keys are not class indices 0, 1, ...") from None
        if sorted(by_index) != list(range(len(by_index))):
            raise ExportError(
                f"{where} maps indices {sorted(by_index)[:5]}...; it needs every index from 0 to {len(by_index) - 1}"
            )
        return [by_index[i] for i in range(len(by_index))]
    separator = "\n" if "\n" in stripped else ","
    return [part.strip() for part in stripped.split(separator) if part.strip()]


# --- images -----------------------------------------------------------------------------------


def load_images(settings: ImportSettings, image_input: ImageInput) -> Images:
    """Calibration and held-out images from --calibration-data, or seeded random images for parity alone."""
    shape = image_input.shape
    if settings.calibration_data is None:
        count = min(RANDOM_IMAGES, settings.evaluation_size or RANDOM_IMAGES)
        pixels = np.random.default_rng(RANDOM_SEED).integers(0, 256, (count, *shape), dtype=np.uint8)
        return Images(None, pixels, f"random images (seed {RANDOM_SEED})")
    from edgecnn.serve.images import ImageDecodeError, decode_image

    folder = Path(settings.calibration_data)
    if not folder.is_dir():
        raise ExportError(f"--calibration-data {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < HOLDOUT_EVERY:
        raise ExportError(
            f"--calibration-data {folder} holds {len(files)} PNG/JPEG images; it needs at least {HOLDOUT_EVERY} "
            f"(every {HOLDOUT_EVERY}th is held out to check the exported models)"
        )
    decoded = np.empty((len(files), *shape), dtype=np.uint8)
    for i, file in enumerate(files):
        try:
            decoded[i] = decode_image(file.read_bytes(), *shape, formats=None)
        except (ImageDecodeError, OSError) as exc:
            raise ExportError(f"cannot read calibration image {file}: {exc}") from None
    held_out = np.arange(len(files)) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    evaluation = np.flatnonzero(held_out)[: settings.evaluation_size]
    calibration = np.flatnonzero(~held_out)
    if len(calibration) > settings.calibration_size:
        picked = np.random.default_rng(0).permutation(len(calibration))[: settings.calibration_size]
        calibration = calibration[np.sort(picked)]
    classes = [_class_folder(files[i], folder) for i in evaluation]
    return Images(
        calibration=np.ascontiguousarray(decoded[calibration]),
        evaluation=np.ascontiguousarray(decoded[evaluation]),
        evaluation_set=f"held-out images of {folder} (every {HOLDOUT_EVERY}th)",
        classes=classes,
        folder=folder,
    )


def _class_folder(file: Path, folder: Path) -> str | None:
    parts = file.relative_to(folder).parts
    return parts[0] if len(parts) > 1 else None


def _truth(images: Images, labels: list[str], reference: np.ndarray) -> tuple[np.ndarray, str, bool]:
    """True classes when the held-out images sit in sub-folders named as the labels; else the original's top-1.

    Returns the classes, what accuracy therefore means, and whether they are true classes.
    """
    agreement = reference.argmax(axis=1)
    if images.folder is None:
        return agreement, (
            "top-1 agreement with the original model on random pixels: without --calibration-data the export "
            "checks parity only"
        ), False
    index = {label: i for i, label in enumerate(labels)}
    if images.classes and all(c is not None and c in index for c in images.classes):
        truth = np.array([index[c] for c in images.classes], dtype=np.int64)  # type: ignore[index]
        return truth, (
            f"true top-1 accuracy on the held-out images: {images.folder} has one sub-folder per class, named as the labels"
        ), True
    why = (
        "some images are not in a class sub-folder"
        if any(c is None for c in images.classes)
        else "its sub-folders are not named as the model's labels"
    )
    return agreement, f"top-1 agreement with the original model on the held-out images of {images.folder} ({why})", False


# --- running the original ---------------------------------------------------------------------


class _Original:
    """The original file under onnxruntime, fed the documented preprocessing: the reference logits."""

    def __init__(
        self, model: onnx.ModelProto, image_input: ImageInput, preprocessing: Preprocessing, head: Head, threads: int
    ):
        self.image_input, self.preprocessing, self.head = image_input, preprocessing, head
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        if head.kind == "softmax-input" and head.pre_softmax not in {o.name for o in probe.graph.output}:
            probe.graph.output.append(helper.make_tensor_value_info(head.pre_softmax, head.elem_type, None))
        self.fetch = [head.pre_softmax if head.kind == "softmax-input" else head.output]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(probe.SerializeToString(), options, providers=CPU)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types; one sentence either way
            raise ExportError(f"onnxruntime cannot load the model: {_first_line(exc)}") from None

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Reference logits [N, K] (float32) for uint8 NHWC wire images."""
        batch = self.image_input.batch or REFERENCE_BATCH
        parts = []
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            count = len(chunk)
            if self.image_input.batch and count < batch:  # a fixed batch axis: pad with copies, keep the real rows
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - count, axis=0)])
            feed = {self.image_input.name: self.preprocessing.apply(chunk, self.image_input)}
            try:
                (scores,) = self.session.run(self.fetch, feed)
            except Exception as exc:  # noqa: BLE001
                raise ExportError(f"onnxruntime cannot run the model on {self._shape(feed)} input: {_first_line(exc)}") from None
            if scores.ndim != 2 or scores.shape[0] != len(chunk):
                raise ExportError(
                    f"output {self.fetch[0]!r} is {list(scores.shape)} for a batch of {len(chunk)} images: "
                    "an image classifier gives [N, classes]"
                )
            parts.append(scores[:count])
        scores = np.concatenate(parts).astype(np.float32)
        if scores.shape[1] < 2:
            raise ExportError(
                f"output {self.fetch[0]!r} gives {scores.shape[1]} score per image; a classifier gives one per class"
            )
        if self.head.kind == "log-probabilities":
            return np.log(np.maximum(scores, np.float32(LOG_FLOOR)))
        return scores

    def _shape(self, feed: dict[str, np.ndarray]) -> str:
        return str(list(next(iter(feed.values())).shape))


# --- the wrapped graph ------------------------------------------------------------------------


def wrap(
    original: onnx.ModelProto,
    image_input: ImageInput,
    preprocessing: Preprocessing,
    head: Head,
    classes: int,
    *,
    fold: bool = True,
) -> onnx.ModelProto:
    """The original graph behind edgecnn's wire format: uint8 NHWC ``images`` in, ``logits``/``probabilities`` out."""
    graph = onnx.compose.add_prefix_graph(original.graph, ORIGINAL)
    for i, node in enumerate(graph.node):
        if not node.name:  # quantisation excludes nodes by name: every node gets one
            node.name = f"{ORIGINAL}{node.op_type}_{i}"
    initializers: list[onnx.TensorProto] = []
    before = _preprocessing_nodes(image_input, preprocessing, fold, initializers)
    before[-1].output[0] = ORIGINAL + image_input.name  # the last step feeds the original input's name
    after = _head_nodes(graph, head, initializers, _opset(original))

    nodes = [*before, *graph.node, *after]
    wrapped_graph = helper.make_graph(
        nodes,
        graph.name or "imported",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", *image_input.shape])],
        outputs=[helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", classes]) for name in (LOGITS, PROBABILITIES)],
        initializer=[*initializers, *graph.initializer],
        sparse_initializer=list(graph.sparse_initializer),
    )
    _prune(wrapped_graph)
    model = helper.make_model(wrapped_graph, opset_imports=list(original.opset_import), functions=list(original.functions))
    model.ir_version = max(original.ir_version, 4)  # initializers need not be graph inputs from IR 4 on
    model.producer_name, model.producer_version = "edgecnn import", original.producer_version
    model.doc_string = original.doc_string
    for prop in original.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    return model


def _preprocessing_nodes(
    image_input: ImageInput, pre: Preprocessing, fold: bool, initializers: list[onnx.TensorProto]
) -> list[onnx.NodeProto]:
    nodes: list[onnx.NodeProto] = []
    current = INPUT_NAME
    channels_shape = [1, image_input.channels, 1, 1] if image_input.layout == "NCHW" else [image_input.channels]

    def add(op: str, step: str, *constants: tuple[str, np.ndarray], **attributes: Any) -> None:
        nonlocal current
        inputs = [current]
        for name, value in constants:
            initializers.append(numpy_helper.from_array(value, OURS + name))
            inputs.append(OURS + name)
        nodes.append(helper.make_node(op, inputs, [OURS + step], name=OURS + step, **attributes))
        current = OURS + step

    def per_channel(values: np.ndarray) -> np.ndarray:
        return values.astype(np.float32).reshape(channels_shape)

    if pre.bgr:
        add("Gather", "bgr", ("bgr_order", np.array([2, 1, 0], np.int64)), axis=3)
    if image_input.layout == "NCHW":
        add("Transpose", "nchw", perm=[0, 3, 1, 2])  # on uint8: a quarter of the bytes of float
    add("Cast", "pixels", to=TensorProto.FLOAT)
    if fold:
        multiplier, offset = pre.scale / pre.std, -pre.mean / pre.std  # float64, rounded once to float32
        if np.any(multiplier != 1):
            add("Mul", "scaled", ("multiplier", per_channel(multiplier)))
        if np.any(offset != 0):
            add("Add", "normalised", ("offset", per_channel(offset)))
    else:  # exactly the documented float32 steps
        if pre.scale != 1:
            add("Mul", "scaled", ("scale", np.array(pre.scale, np.float32)))
        if np.any(pre.mean != 0):
            add("Sub", "centred", ("mean", per_channel(pre.mean)))
        if np.any(pre.std != 1):
            add("Div", "normalised", ("std", per_channel(pre.std)))
    if image_input.elem_type != TensorProto.FLOAT:
        add("Cast", "model_type", to=image_input.elem_type)
    return nodes


def _head_nodes(graph: onnx.GraphProto, head: Head, initializers: list[onnx.TensorProto], opset: int) -> list[onnx.NodeProto]:
    """Nodes (and renames in ``graph``) that give ``logits`` and ``probabilities`` as float32 [N, K]."""
    nodes: list[onnx.NodeProto] = []

    def expose(tensor: str, name: str) -> None:
        """``tensor`` of the original graph becomes graph output ``name``: renamed, or cast to float32."""
        if head.elem_type == TensorProto.FLOAT:
            _rename(graph, tensor, name)
        else:
            nodes.append(helper.make_node("Cast", [tensor], [name], name=OURS + name, to=TensorProto.FLOAT))

    output = ORIGINAL + head.output
    if head.kind == "add-softmax":
        expose(output, LOGITS)
        nodes.append(helper.make_node("Softmax", [LOGITS], [PROBABILITIES], name=OURS + "softmax", axis=1))
    elif head.kind == "softmax-input":
        expose(ORIGINAL + head.pre_softmax, LOGITS)
        expose(output, PROBABILITIES)
    else:
        expose(output, PROBABILITIES)
        initializers.append(numpy_helper.from_array(np.array(LOG_FLOOR, np.float32), OURS + "log_floor"))
        nodes.append(helper.make_node("Max", [PROBABILITIES, OURS + "log_floor"], [OURS + "floored"], name=OURS + "floor"))
        nodes.append(helper.make_node("Log", [OURS + "floored"], [LOGITS], name=OURS + "log"))
    return nodes


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` in every node, subgraphs included (they may read outer names)."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
        for attribute in node.attribute:
            if attribute.HasField("g"):
                _rename(attribute.g, old, new)
            for subgraph in attribute.graphs:
                _rename(subgraph, old, new)


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers the outputs do not need (the original's other outputs, say)."""
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
            needed.update(_subgraph_reads(node))
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    used = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for attribute in node.attribute:
        for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in subgraph.node:
                names.update(inner.input)
                names.update(_subgraph_reads(inner))
    return names


def _wrap_faithfully(
    original: onnx.ModelProto,
    image_input: ImageInput,
    preprocessing: Preprocessing,
    head: Head,
    classes: int,
    images: Images,
    reference: np.ndarray,
    path: Path,
    tolerance: float = PARITY_TOLERANCE,
) -> tuple[onnx.ModelProto, bool, Any]:
    """The wrapped model, folded when the fold moves no logit more than FOLD_TOLERANCE; checked and at parity."""
    tried = []
    for fold in (True, False):
        model = wrap(original, image_input, preprocessing, head, classes, fold=fold)
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as exc:  # noqa: BLE001 - onnx's ValidationError or an inference error
            raise ExportError(f"the wrapped graph fails onnx's checker: {_first_line(exc)}") from None
        logits = _run_wrapped(model, images.evaluation, image_input)
        parity = evaluate.parity(logits, reference)
        tried.append((parity.max_abs_logit_diff, fold, model, parity))
        if parity.max_abs_logit_diff <= FOLD_TOLERANCE and parity.top1_agreement == 1.0:
            break
    best_diff, folded, model, parity = min(tried, key=lambda t: (t[0], not t[1]))
    if best_diff > tolerance or parity.top1_agreement < 1.0:
        raise ExportError(
            f"the wrapped model does not reproduce {path.name} on the same pixels: max |logit difference| "
            f"{best_diff:.2e} (at most {tolerance:.1e} allowed), top-1 agreement {parity.top1_agreement:.2%} "
            f"on {len(images.evaluation)} {images.evaluation_set}"
        )
    return model, folded, parity


def _run_wrapped(model: onnx.ModelProto, images: np.ndarray, image_input: ImageInput) -> np.ndarray:
    """The wrapped model's logits; first a batch of 2, so a graph that only runs at batch 1 says so now."""
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=CPU)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"onnxruntime cannot load the wrapped graph: {_first_line(exc)}") from None
    pair = np.ascontiguousarray(images[np.arange(2) % len(images)])
    try:
        session.run([LOGITS], {INPUT_NAME: pair})
    except Exception as exc:  # noqa: BLE001
        if image_input.batch is not None:
            raise ExportError(
                f"the graph fixes its batch size at {image_input.batch} (input {image_input.name!r} "
                f"{image_input.declared}) and does not run on a batch of 2: export it again with a dynamic batch axis "
                f"(onnxruntime: {_first_line(exc)})"
            ) from None
        raise ExportError(f"onnxruntime cannot run the wrapped graph: {_first_line(exc)}") from None
    starts = range(0, len(images), REFERENCE_BATCH)
    parts = [session.run([LOGITS], {INPUT_NAME: images[s : s + REFERENCE_BATCH]})[0] for s in starts]
    return np.concatenate(parts)


# --- opset ------------------------------------------------------------------------------------


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _ensure_opset(model: onnx.ModelProto, settings: ImportSettings, notes: list[str]) -> onnx.ModelProto:
    """Keep the model's opset; raise it only where the wrapping or per-channel int8 needs a newer one."""
    opset = _opset(model)
    needed = INT8_OPSET if "int8" in settings.quantize else MIN_OPSET
    if opset >= needed:
        notes.append(f"opset {opset}, the model's own")
        return model
    why = "per-channel int8 needs its QuantizeLinear axis" if needed == INT8_OPSET else "the preprocessing broadcasts"
    try:
        converted = onnx.version_converter.convert_version(model, needed)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(
            f"the model's opset {opset} is too old ({why}) and onnx cannot convert it to {needed}: {_first_line(exc)}"
        ) from None
    notes.append(f"opset raised from {opset} to {needed}: {why}")
    return converted


def _numbers(values: np.ndarray) -> str:
    return ",".join(f"{v:.6g}" for v in values)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
