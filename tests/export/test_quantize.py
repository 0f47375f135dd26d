"""Graph edits of the quantisation recipes, on tiny ONNX models (no torch, no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgecnn.export import quantize
from onnx import TensorProto, helper, numpy_helper

from tests.helpers.models import random_images, write_tiny_model


def run(model: onnx.ModelProto | Path, images: np.ndarray) -> list[np.ndarray]:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"images": images})


def conv_relu_pool_model() -> onnx.ModelProto:
    """images uint8 [N,8,8,1] -> Conv -> Relu -> MaxPool -> Conv -> Flatten -> logits -> Softmax."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.normal(0, 1, (4, 1, 3, 3)).astype(np.float32),
        "w2": rng.normal(0, 1, (3, 4, 4, 4)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Transpose", ["images"], ["nchw"], name="t", perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["nchw"], ["x"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", kernel_shape=[4, 4]),
        helper.make_node("Flatten", ["c2"], ["logits"], name="flatten"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 8, 8, 1])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("logits", "probabilities")],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime the project allows can read
    return model


def test_pool_before_relu_computes_the_same_function():
    model = conv_relu_pool_model()
    images = random_images(4)
    before = run(model, images)
    stem = quantize._stem_nodes(model.graph)
    assert stem == ["t", "cast", "conv1", "relu1", "pool1"]
    assert quantize._pool_before_relu(model.graph, stem)
    assert [n.op_type for n in model.graph.node][2:5] == ["Conv", "MaxPool", "Relu"]
    onnx.checker.check_model(model, full_check=True)
    for a, b in zip(before, run(model, images)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_every_recipe_quantises_and_keeps_logits_float(tmp_path: Path):
    fp32 = write_tiny_model(tmp_path / "tiny.onnx")
    preprocessed = quantize.preprocess_for_quantisation(fp32, tmp_path / "pre.onnx")
    images = random_images(64)
    reference = run(fp32, images)[0]
    for recipe in quantize.INT8_RECIPES:
        if recipe.pixel_input:  # the tiny model scales its pixels in the graph: no conv reads them raw
            with pytest.raises(ValueError, match="raw pixels"):
                quantize.quantize_int8(preprocessed, tmp_path / f"{recipe.name}.onnx", images, recipe, "minmax")
            continue
        path = quantize.quantize_int8(preprocessed, tmp_path / f"{recipe.name}.onnx", images, recipe, "minmax")
        model = onnx.load(str(path))
        producers = {out: node.op_type for node in model.graph.node for out in node.output}
        if not recipe.qoperator:
            assert producers["logits"] != "DequantizeLinear", recipe.name
        logits = run(path, images)[0]
        assert logits.shape == reference.shape
        assert (logits.argmax(1) == reference.argmax(1)).mean() > 0.8, recipe.name


def test_pixel_input_feeds_the_uint8_image_to_the_first_conv(tmp_path: Path):
    fp32 = tmp_path / "conv.onnx"
    onnx.save(conv_relu_pool_model(), str(fp32))
    preprocessed = quantize.preprocess_for_quantisation(fp32, tmp_path / "pre.onnx")
    images = random_images(64)
    recipe = quantize.RECIPES_BY_NAME["u8s8-pixel-input"]
    path = quantize.quantize_int8(preprocessed, tmp_path / "pixels.onnx", images, recipe, "minmax")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    assert "Cast" not in ops  # the uint8 pixels are the first conv's quantised input: no Cast, no QuantizeLinear
    first_quantised = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("nchw"))
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert values[first_quantised.input[1]] == 1 and values[first_quantised.input[2]] == 0
    weight = values["w1_quantized"]
    assert weight.shape == (4, 4, 3, 3) and not weight[:, 1:].any()  # 1 channel padded to 4 with zero weights
    reference, logits = run(fp32, images)[0], run(path, images)[0]
    assert (logits.argmax(1) == reference.argmax(1)).mean() > 0.9


def test_calibration_reader_walks_batches_and_ranges():
    images = random_images(40)
    reader = quantize.CalibrationImages(images, batch_size=16)
    assert len(reader) == 3
    sizes = []
    while (feed := reader.get_next()) is not None:
        sizes.append(len(feed["images"]))
    assert sizes == [16, 16, 8]
    reader.set_range(1, 2)
    assert len(reader.get_next()["images"]) == 16 and reader.get_next() is None


def test_fp16_keeps_the_interface(tmp_path: Path):
    fp32 = onnx.load(str(write_tiny_model(tmp_path / "tiny.onnx")))
    half = quantize.convert_fp16(fp32)
    onnx.checker.check_model(half, full_check=True)
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in half.graph.output)
    assert all(i.data_type != TensorProto.FLOAT for i in half.graph.initializer)
    images = random_images(8)
    np.testing.assert_allclose(run(half, images)[0], run(fp32, images)[0], atol=0.05, rtol=0.01)
