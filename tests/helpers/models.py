"""Real, tiny ONNX classifiers in edgecnn's wire format, built with onnx.helper (no torch).

    images uint8 [N,H,W,C] -> Cast -> Mul(1/255) -> Transpose(NCHW) -> Conv 3x3 -> Relu
        -> GlobalAveragePool -> Flatten -> Gemm -> logits float32 [N,K] -> Softmax -> probabilities [N,K]

Weights come from a fixed seed, so two calls with the same arguments write the same model and
results can be checked against a direct onnxruntime run (``reference_outputs``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from edgecnn.export.metadata import INPUT_NAME, LOGITS, PROBABILITIES, ModelMetadata, write_metadata
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime >= 1.18 the serve extra allows
FILTERS = 4


def write_tiny_model(
    path: str | Path,
    *,
    name: str = "tiny",
    version: str = "1",
    height: int = 8,
    width: int = 8,
    channels: int = 1,
    labels: Sequence[str] = ("zero", "one", "two"),
    variant: str = "fp32",
    seed: int = 0,
) -> Path:
    """Write a tiny classifier with edgecnn metadata to ``path`` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    num_classes = len(labels)
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0.0, 1.0, (FILTERS, channels, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0.0, 0.1, (FILTERS,)).astype(np.float32)
    fc_w = rng.normal(0.0, 2.0, (num_classes, FILTERS)).astype(np.float32)
    fc_b = rng.normal(0.0, 0.1, (num_classes,)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(np.array(1.0 / 255.0, dtype=np.float32), "scale"),
        numpy_helper.from_array(conv_w, "conv_w"),
        numpy_helper.from_array(conv_b, "conv_b"),
        numpy_helper.from_array(fc_w, "fc_w"),
        numpy_helper.from_array(fc_b, "fc_b"),
    ]
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["as_float", "scale"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "fc_w", "fc_b"], [LOGITS], transB=1),
        helper.make_node("Softmax", [LOGITS], [PROBABILITIES], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        f"{name}_v{version}",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", height, width, channels])],
        outputs=[
            helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["N", num_classes]),
            helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["N", num_classes]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgecnn-tests")
    model.ir_version = IR_VERSION
    write_metadata(
        model,
        ModelMetadata(
            name=name,
            version=str(version),
            labels=list(labels),
            height=height,
            width=width,
            channels=channels,
            architecture="tiny",
            variant=variant,
        ),
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def random_images(count: int, height: int = 8, width: int = 8, channels: int = 1, seed: int = 0) -> np.ndarray:
    """``count`` random uint8 NHWC images (deterministic)."""
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, channels), dtype=np.uint8)


def reference_outputs(path: str | Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Logits and probabilities from a direct onnxruntime CPU run: the ground truth for served results."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run([LOGITS, PROBABILITIES], {INPUT_NAME: images})
    return {LOGITS: logits, PROBABILITIES: probabilities}
