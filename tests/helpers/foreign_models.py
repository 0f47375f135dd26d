"""Tiny ONNX image classifiers as other tools write them (float input, no edgecnn metadata), built with onnx.helper.

    x float [N,C,H,W] (or [N,H,W,C] -> Transpose) -> Conv 3x3 -> Relu -> GlobalAveragePool -> Flatten
        -> Gemm -> scores [N,K] [-> Softmax -> probabilities]

and the documented preprocessing the import promises, so a test can run the ORIGINAL file with
onnxruntime on exactly the pixels the wrapped model sees. Weights come from a fixed seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
FILTERS = 4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def write_classifier(
    path: Path,
    *,
    layout: str = "NCHW",
    channels: int = 3,
    size: tuple[int, int] = (8, 8),
    classes: int = 3,
    dynamic_size: bool = False,
    batch: int | str = "batch",
    ending: str = "scores",  # scores | softmax | softmax-flatten
    seed: int = 0,
    conv_weights: np.ndarray | None = None,
    fc_weights: np.ndarray | None = None,
    metadata: dict[str, str] | None = None,
    opset: int = OPSET,
) -> Path:
    """Write a classifier with input ``x`` and one output ``y``; returns ``path``."""
    rng = np.random.default_rng(seed)
    height, width = ("height", "width") if dynamic_size else size
    conv_w = conv_weights if conv_weights is not None else rng.normal(0, 1, (FILTERS, channels, 3, 3)).astype(np.float32)
    filters = conv_w.shape[0]
    fc_w = fc_weights if fc_weights is not None else rng.normal(0, 2, (classes, filters)).astype(np.float32)
    initializers = {
        "conv_w": conv_w,
        "conv_b": rng.normal(0, 0.1, (filters,)).astype(np.float32),
        "fc_w": fc_w.astype(np.float32),
        "fc_b": rng.normal(0, 0.1, (classes,)).astype(np.float32),
    }
    nodes = []
    image = "x"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], name="to_nchw", perm=[0, 3, 1, 2]))
        image = "x_nchw"
    nodes += [
        helper.make_node("Conv", [image, "conv_w", "conv_b"], ["conv"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"], name="pool"),
    ]
    if ending == "softmax-flatten":  # class scores as [N,K,1,1], a Softmax over axis 1, then Flatten
        initializers["head_w"] = initializers.pop("fc_w").reshape(classes, filters, 1, 1)
        initializers["head_b"] = initializers.pop("fc_b")
        nodes += [
            helper.make_node("Conv", ["pooled", "head_w", "head_b"], ["scores4d"], name="head", kernel_shape=[1, 1]),
            helper.make_node("Softmax", ["scores4d"], ["probs4d"], name="softmax", axis=1),
            helper.make_node("Flatten", ["probs4d"], ["y"], name="flatten", axis=1),
        ]
    else:
        scores = "y" if ending == "scores" else "scores"
        nodes += [
            helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1),
            helper.make_node("Gemm", ["features", "fc_w", "fc_b"], [scores], name="fc", transB=1),
        ]
        if ending == "softmax":
            nodes.append(helper.make_node("Softmax", ["scores"], ["y"], name="softmax", axis=-1))
    shape = [batch, channels, height, width] if layout == "NCHW" else [batch, height, width, channels]
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(value, name) for name, value in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="some-other-tool")
    model.ir_version = IR_VERSION
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def preprocess(
    images: np.ndarray,
    *,
    scale: float = 1 / 255,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    bgr: bool = False,
    layout: str = "NCHW",
) -> np.ndarray:
    """The import's documented preprocessing, written out: wire uint8 RGB NHWC -> the original model's float input."""
    channels = images.shape[-1]
    x = images[..., ::-1] if bgr else images
    x = x.astype(np.float32) * np.float32(scale)
    x = (x - np.array(mean or [0.0] * channels, np.float32)) / np.array(std or [1.0] * channels, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if layout == "NCHW" else x)


def run_original(path: Path, model_input: np.ndarray, outputs: Sequence[str] = ("y",)) -> list[np.ndarray]:
    """The ORIGINAL file under onnxruntime (extra outputs, e.g. the pre-softmax scores, exposed on request)."""
    model = onnx.load(str(path))
    declared = {o.name for o in model.graph.output}
    for name in outputs:
        if name not in declared:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(list(outputs), {"x": model_input})


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
