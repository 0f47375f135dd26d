"""The quantised variants: static int8 recipes, dynamic int8 and fp16, with onnxruntime and onnx only.

Static int8 (QDQ, per-channel weights) is the fast path for CNNs on CPU. Which recipe is
fastest depends on the CPU and the model, so `INT8_RECIPES` is a small set the exporter
tries, keeping the fastest one whose accuracy holds. Dynamic quantisation is offered because
users ask for it, but it turns Conv into ConvInteger, which is several times *slower* than
fp32 for CNNs: it is never a default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edgecnn.export.metadata import INPUT_NAME
from edgecnn.export.quiet import quiet_logger

CALIBRATION_BATCH = 16
PIXEL_CHANNEL_MULTIPLE = 4  # onnxruntime's fast (symmetric, channels-last) int8 conv needs 4k input channels


@dataclass(frozen=True)
class Int8Recipe:
    """One static-quantisation configuration: quantize_static's options plus which ops stay float."""

    name: str
    why: str
    activations: str = "uint8"  # uint8 | int8; weights are always int8, symmetric, per channel
    reduce_range: bool = False
    qoperator: bool = False
    float_stem: bool = False  # leave every node before the second Conv in float
    pixel_input: bool = False  # the first conv reads the uint8 image itself as its quantised input


INT8_RECIPES: tuple[Int8Recipe, ...] = (
    Int8Recipe("u8s8", "uint8 activations, int8 per-channel weights: onnxruntime's fastest x86 kernels"),
    Int8Recipe(
        "u8s8-reduce-range",
        "7-bit weights: no overflow in the u8*s8 pair sums of AVX2 CPUs without VNNI",
        reduce_range=True,
    ),
    Int8Recipe("s8s8", "int8 activations and weights: onnxruntime's default QDQ recipe", activations="int8"),
    Int8Recipe("u8s8-qoperator", "QOperator format: fused QLinearConv/QGemm written into the file", qoperator=True),
    Int8Recipe(
        "u8s8-float-stem",
        "first conv block in float: onnxruntime's fast int8 conv needs a multiple of 4 input channels, images have 1 or 3",
        float_stem=True,
    ),
    Int8Recipe(
        "u8s8-pixel-input",
        "all int8, the uint8 image fed straight to the first conv (scale 1, zero point 0) and padded to 4 channels "
        "for onnxruntime's fast int8 conv: no float stem, no Cast, no QuantizeLinear",
        pixel_input=True,
    ),
)
RECIPES_BY_NAME = {recipe.name: recipe for recipe in INT8_RECIPES}


class CalibrationImages:
    """onnxruntime's CalibrationDataReader over uint8 NHWC images, in fixed-size batches.

    ``__len__`` and ``set_range`` (in batches) let quantize_static calibrate one batch at a
    time (CalibStridedMinMax), so memory holds one batch of feature maps, not all of them.
    """

    def __init__(self, images: np.ndarray, batch_size: int = CALIBRATION_BATCH):
        self._images = images
        self._batch_size = batch_size
        self._batches: Iterator[np.ndarray] = iter(())
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return -(-len(self._images) // self._batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        starts = range(start_index * self._batch_size, min(end_index, len(self)) * self._batch_size, self._batch_size)
        self._batches = (self._images[start : start + self._batch_size] for start in starts)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def preprocess_for_quantisation(fp32_path: Path, out_path: Path) -> Path:
    """quant_pre_process: shape inference and graph clean-up, recommended before quantize_static."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path))
    return out_path


def quantize_int8(
    preprocessed_path: Path,
    out_path: Path,
    calibration_images: np.ndarray,
    recipe: Int8Recipe,
    calibration_method: str,
) -> Path:
    """Static int8 quantisation of a preprocessed fp32 model with one recipe; writes ``out_path``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(preprocessed_path))
    # Softmax stays float: probabilities in 256 levels would lose the ranking of near ties.
    excluded = [node.name for node in model.graph.node if node.op_type == "Softmax"]
    source: onnx.ModelProto | str = str(preprocessed_path)
    overrides = {}
    if recipe.pixel_input:
        pixels = _pad_pixels_to_4_channels(model.graph)
        # uint8 pixels are a quantised tensor already: scale 1, zero point 0 represent them exactly
        overrides[pixels] = [{"scale": np.array(1.0, np.float32), "zero_point": np.array(0, np.uint8)}]
        source = model
    if recipe.float_stem:
        stem = _stem_nodes(model.graph)
        excluded += stem
        if _pool_before_relu(model.graph, stem):
            source = model
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with quiet_logger(None):
        quantize_static(
            source,
            str(out_path),
            CalibrationImages(calibration_images),
            quant_format=QuantFormat.QOperator if recipe.qoperator else QuantFormat.QDQ,
            per_channel=True,
            reduce_range=recipe.reduce_range,
            activation_type=QuantType.QUInt8 if recipe.activations == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=methods[calibration_method],
            calibration_providers=["CPUExecutionProvider"],
            extra_options={
                "CalibStridedMinMax": 1,  # calibrate batch by batch: bounded memory
                "TensorQuantOverrides": overrides,
            },
        )
    quantised = onnx.load(str(out_path))
    if recipe.pixel_input:
        _feed_pixels_directly(quantised.graph, pixels)
    if not recipe.qoperator:
        keep_outputs_float(quantised)
    drop_unused_opset_imports(quantised)
    onnx.save(quantised, str(out_path))
    return out_path


def quantize_dynamic_int8(preprocessed_path: Path, out_path: Path) -> Path:
    """Dynamic int8: weights quantised ahead of time, activations per call (ConvInteger: slow for CNNs)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_logger(None):  # onnxruntime's ConvInteger takes uint8 weights only
        quantize_dynamic(str(preprocessed_path), str(out_path), weight_type=QuantType.QUInt8)
    quantised = onnx.load(str(out_path))
    drop_unused_opset_imports(quantised)
    onnx.save(quantised, str(out_path))
    return out_path


def convert_fp16(fp32_model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and arithmetic for the CUDA provider; the io types stay uint8 in, float32 out.

    Float initializers and constants become float16, the input's Cast casts to float16, and a
    Cast back to float32 in front of each graph output keeps the interface clients know.
    """
    model = onnx.ModelProto()
    model.CopyFrom(fp32_model)
    graph = model.graph
    for initializer in graph.initializer:
        if initializer.data_type == TensorProto.FLOAT:
            initializer.CopyFrom(_as_float16(initializer))
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
                attribute.t.CopyFrom(_as_float16(attribute.t))
    outputs = {output.name: output.name + "_fp16" for output in graph.output}
    for node in graph.node:
        node.input[:] = [outputs.get(name, name) for name in node.input]
        node.output[:] = [outputs.get(name, name) for name in node.output]
    for name, half in outputs.items():
        graph.node.append(onnx.helper.make_node("Cast", [half], [name], name=f"{name}_to_float32", to=TensorProto.FLOAT))
    del graph.value_info[:]  # the float32 shapes recorded by the exporter no longer hold
    return model


def keep_outputs_float(model: onnx.ModelProto) -> None:
    """Drop the QuantizeLinear/DequantizeLinear pair in front of each graph output, in place.

    quantize_static rounds the logits to 256 levels too; without the pair, onnxruntime fuses
    the last Gemm into a QGemm with a float output, which is as fast and keeps the logits exact.
    """
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    for graph_output in graph.output:
        dequantize = producers.get(graph_output.name)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        quantize = producers.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear":
            continue
        if sum(quantize.output[0] in node.input for node in graph.node) != 1:
            continue
        source = producers[quantize.input[0]]
        source.output[:] = [graph_output.name if name == quantize.input[0] else name for name in source.output]
        graph.node.remove(quantize)
        graph.node.remove(dequantize)
    used = {name for node in graph.node for name in node.input}
    kept = [initializer for initializer in graph.initializer if initializer.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def drop_unused_opset_imports(model: onnx.ModelProto) -> None:
    """quant_pre_process declares every onnxruntime domain; keep the ones the graph uses, so the file says
    honestly what a runtime must support."""
    used = {node.domain for node in model.graph.node} | {""}
    kept = [opset for opset in model.opset_import if opset.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _stem_nodes(graph: onnx.GraphProto) -> list[str]:
    """Every node before the second Conv: the first conv block, which a float-stem recipe leaves float."""
    convs_seen = 0
    stem: list[str] = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        convs_seen += node.op_type == "Conv"
        if convs_seen == 2:
            return stem
        stem.append(node.name)
    return []  # a single-conv model has no stem worth keeping float


def _pool_before_relu(graph: onnx.GraphProto, stem: list[str]) -> bool:
    """Rewrite the stem's Relu -> MaxPool as MaxPool -> Relu (the same function: max commutes with relu).

    Why: with the Relu last, the stem ends in Relu -> QuantizeLinear, which onnxruntime folds
    into one quantisation. Left as MaxPool -> QuantizeLinear, onnxruntime moves the quantisation
    in front of the pool and runs a uint8 MaxPool in NCHW layout, up to 25x slower than the
    float one. Returns whether the graph changed.
    """
    nodes = [node for node in graph.node if node.name in stem]
    consumers = {name: sum(name in n.input for n in graph.node) for node in nodes for name in node.output}
    for relu, pool in zip(nodes, nodes[1:]):
        if relu.op_type != "Relu" or pool.op_type != "MaxPool" or pool.input[0] != relu.output[0]:
            continue
        if consumers[relu.output[0]] != 1 or len(pool.output) != 1:
            continue
        pre_activation, activated, pooled = relu.input[0], relu.output[0], pool.output[0]
        pool.input[0], pool.output[0] = pre_activation, activated
        relu.input[0], relu.output[0] = activated, pooled
        reordered = list(graph.node)
        i, j = reordered.index(relu), reordered.index(pool)
        reordered[i], reordered[j] = reordered[j], reordered[i]
        del graph.node[:]
        graph.node.extend(reordered)
        del graph.value_info[:]  # the swapped tensors have new shapes; shape inference redoes them
        return True
    return False


def _pad_pixels_to_4_channels(graph: onnx.GraphProto) -> str:
    """Make the first conv read raw pixels over a multiple of 4 channels; returns the float pixels' name.

    The recipe needs the graph to start uint8 NHWC images -> Transpose -> Cast float -> Conv, i.e.
    the normalisation folded into the conv's weights and bias (graph.py's "weights+bias" fold),
    so the conv's float input is the pixel values 0..255 themselves. Channels are padded with
    zeros (a uint8 Pad before the Cast, zero weights for the new channels): onnxruntime's fast
    int8 conv kernel needs a multiple of 4 input channels.
    """
    producers = {output: node for node in graph.node for output in node.output}
    initializers = {initializer.name: initializer for initializer in graph.initializer}
    conv = next((node for node in graph.node if node.op_type == "Conv"), None)
    cast = producers.get(conv.input[0]) if conv is not None else None
    transpose = producers.get(cast.input[0]) if cast is not None and cast.op_type == "Cast" else None
    if (
        transpose is None
        or transpose.op_type != "Transpose"
        or list(onnx.helper.get_node_attr_value(transpose, "perm")) != [0, 3, 1, 2]
        or transpose.input[0] != graph.input[0].name
        or conv.input[1] not in initializers
    ):
        raise ValueError("the first conv does not read raw pixels (Cast of the uint8 image); use another recipe")
    if sum(cast.output[0] in node.input for node in graph.node) != 1:
        raise ValueError("the image's Cast feeds more than the first conv; use another recipe")
    weight = numpy_helper.to_array(initializers[conv.input[1]])
    missing = -weight.shape[1] % PIXEL_CHANNEL_MULTIPLE
    if missing:
        padded = np.pad(weight, ((0, 0), (0, missing), (0, 0), (0, 0)))
        initializers[conv.input[1]].CopyFrom(numpy_helper.from_array(padded, conv.input[1]))
        padded_name = cast.input[0] + "_padded"
        pad_nodes = _channel_pad_nodes(cast.input[0], padded_name, missing, _height(graph), graph)
        cast.input[0] = padded_name
        nodes = list(graph.node)
        nodes[nodes.index(cast) : nodes.index(cast)] = pad_nodes
        del graph.node[:]
        graph.node.extend(nodes)
        del graph.value_info[:]  # the padded tensors have new shapes; shape inference redoes them
    return cast.output[0]


def _channel_pad_nodes(pixels: str, padded: str, missing: int, height: int, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Zero channels appended to the uint8 NCHW ``pixels``, padded as [N, C, H*W] between two Reshapes.

    Why the Reshapes: onnxruntime's transpose optimiser moves the NHWC -> NCHW Transpose
    below a Pad, so the Pad would run on the channels-last axis, byte by byte (about 1 ms for
    64 32x32x3 images). It cannot move a Transpose through a Reshape, so the Pad stays on NCHW
    planes (a few block copies) and only the padded tensor is transposed back to channels-last.
    """
    name = "pixel_channel_pad"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0, 0, -1], np.int64), f"{name}_planes"),
            numpy_helper.from_array(np.array([0, 0, 0, 0, missing, 0], np.int64), f"{name}_pads"),
            numpy_helper.from_array(np.array([0, 0, height, -1], np.int64), f"{name}_images"),
        ]
    )
    helper = onnx.helper
    return [
        helper.make_node("Reshape", [pixels, f"{name}_planes"], [f"{name}_planes_out"], name=f"{name}_planes"),
        helper.make_node("Pad", [f"{name}_planes_out", f"{name}_pads"], [f"{name}_out"], name=name),
        helper.make_node("Reshape", [f"{name}_out", f"{name}_images"], [padded], name=f"{name}_images"),
    ]


def _height(graph: onnx.GraphProto) -> int:
    """The image height: the second axis of the NHWC input."""
    height = graph.input[0].type.tensor_type.shape.dim[1]
    if not height.HasField("dim_value"):
        raise ValueError("the image height is not fixed in the graph's input; use another recipe")
    return height.dim_value


def _feed_pixels_directly(graph: onnx.GraphProto, pixels: str) -> None:
    """Remove Cast -> QuantizeLinear(scale 1, zero point 0) on the pixels, in place: an identity on uint8."""
    producers = {output: node for node in graph.node for output in node.output}
    initializers = {initializer.name: numpy_helper.to_array(initializer) for initializer in graph.initializer}
    cast = producers[pixels]
    quantize = [node for node in graph.node if pixels in node.input]
    if len(quantize) != 1 or quantize[0].op_type != "QuantizeLinear":
        raise ValueError(f"expected one QuantizeLinear on {pixels}, found {[n.op_type for n in quantize]}")
    (quantize,) = quantize
    scale, zero_point = initializers[quantize.input[1]], initializers[quantize.input[2]]
    if scale != 1 or zero_point != 0 or zero_point.dtype != np.uint8:
        raise ValueError(f"the pixels were quantised with scale {scale} and zero point {zero_point}, not 1 and 0")
    for node in graph.node:
        node.input[:] = [cast.input[0] if name == quantize.output[0] else name for name in node.input]
    graph.node.remove(quantize)
    graph.node.remove(cast)


def _as_float16(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name)
