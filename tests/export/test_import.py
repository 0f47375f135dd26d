"""`edgecnn export MODEL.onnx`: a classifier built elsewhere, imported, served, and equal to the original.

Every model is built here (foreign_models.py: onnx.helper; one with torch.onnx.export), imported
through the `edgecnn export` command, served over gRPC, and compared with onnxruntime running
the ORIGINAL file on the same pixels with the documented preprocessing.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgecnn.export.importer import parse_labels
from edgecnn.export.metadata import read_metadata
from edgecnn.serve.client import InferenceClient
from edgecnn.serve.server import start_server
from onnx import TensorProto, helper, numpy_helper

from tests.helpers.exporting import COLOURS, colour_classifier, colour_folder, run_export
from tests.helpers.foreign_models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    preprocess,
    run_original,
    softmax,
    write_classifier,
)
from tests.helpers.models import write_tiny_model
from tests.helpers.serving import settings_for

FAST = ["--timing-rounds", "1", "--throughput-batch", "8"]
PARITY = 1e-4


def assert_one_line_error(result, *fragments: str) -> None:
    """Exit 1, and the whole output is one line, `error: ...`, holding every fragment."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, result.output)


def imported(*args) -> Path:
    """`edgecnn export ARGS...`, which must succeed; the output folder."""
    result = run_export(*args, *FAST)
    assert result.exit_code == 0, result.output
    return Path(args[args.index("-o") + 1])


@contextlib.contextmanager
def served(path: Path):
    """`edgecnn serve PATH` in this process; a client to it."""
    with start_server(settings_for(path)) as running:
        with InferenceClient(running.address, timeout=20) as client:
            yield client


def wire_images(count: int, height: int = 8, width: int = 8, channels: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, channels), dtype=np.uint8)


def report_of(out_dir: Path) -> dict:
    return json.loads((out_dir / "report.json").read_text())


def assert_parity_reported(report: dict) -> None:
    fp32 = report["variants"][0]
    assert fp32["variant"] == "fp32" and fp32["status"] == "ok"
    assert fp32["max_abs_logit_diff"] <= PARITY and fp32["top1_agreement"] == 1.0


# --- 1. float NCHW RGB with ImageNet mean/std ---------------------------------------------------


def test_float_nchw_rgb_model_with_imagenet_mean_and_std(tmp_path: Path):
    original = write_classifier(tmp_path / "resnet-ish.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    out_dir = imported(
        original, "-o", tmp_path / "models" / "mine",
        "--mean", ",".join(map(str, IMAGENET_MEAN)), "--std", ",".join(map(str, IMAGENET_STD)),
        "--labels", labels, "--quantize", "fp16",
    )
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.fp16.onnx", "model.onnx", "report.json", "report.md"]

    meta = read_metadata(out_dir / "model.onnx")
    assert (meta.name, meta.version, meta.labels) == ("resnet-ish", "1", ["cat", "dog", "bird"])
    assert (meta.height, meta.width, meta.channels) == (8, 8, 3)
    assert (meta.input_name, meta.layout, meta.input_datatype) == ("images", "NHWC", "UINT8")
    assert (meta.architecture, meta.variant, meta.source_run) == ("imported", "fp32", str(original.resolve()))
    model = onnx.load(str(out_dir / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    (image_input,) = model.graph.input
    dims = image_input.type.tensor_type.shape.dim
    assert image_input.type.tensor_type.elem_type == TensorProto.UINT8
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [8, 8, 3]
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]
    assert {o.domain for o in model.opset_import} == {""} and model.opset_import[0].version == 17  # the model's own

    report = report_of(out_dir)
    assert report["source"] == "onnx" and report["reference"] == "the original"
    assert "random images" in report["test_set"] and "agreement" in report["accuracy_basis"]
    assert_parity_reported(report)
    assert [(v["variant"], v["status"]) for v in report["variants"]] == [("fp32", "ok"), ("fp16", "ok")]

    images = wire_images(5)
    (reference,) = run_original(original, preprocess(images, mean=IMAGENET_MEAN, std=IMAGENET_STD))
    with served(out_dir / "model.onnx") as client:
        result = client.infer("resnet-ish", images)
        single = client.infer("resnet-ish", images[:1], top_k=1)
    np.testing.assert_allclose(result.outputs["logits"], reference, atol=PARITY)
    np.testing.assert_allclose(result.outputs["probabilities"], softmax(reference), atol=1e-5)
    assert single.top_k[0][0].label == ["cat", "dog", "bird"][int(reference[0].argmax())]


# --- 2. a BGR model (NHWC, detected) -----------------------------------------------------------


def test_bgr_model_gets_its_channels_reversed_inside_the_graph(tmp_path: Path):
    original = write_classifier(tmp_path / "caffe-ish.onnx", layout="NHWC", seed=1)
    mean_bgr, std_bgr = (0.406, 0.456, 0.485), (0.225, 0.224, 0.229)  # the model's own channel order: B, G, R
    out_dir = imported(
        original, "-o", tmp_path / "out", "--channel-order", "bgr", "--scale", "1/255",
        "--mean", ",".join(map(str, mean_bgr)), "--std", ",".join(map(str, std_bgr)),
    )
    report = report_of(out_dir)
    assert_parity_reported(report)
    assert "BGR" in report["normalisation_fold"] and "NCHW" not in report["normalisation_fold"]  # NHWC kept
    assert any("NHWC" in note for note in report["notes"])

    images = wire_images(6, seed=2)
    (reference,) = run_original(original, preprocess(images, mean=mean_bgr, std=std_bgr, bgr=True, layout="NHWC"))
    (as_rgb,) = run_original(original, preprocess(images, mean=mean_bgr, std=std_bgr, bgr=False, layout="NHWC"))
    assert np.abs(reference - as_rgb).max() > 0.01  # the channel order matters to this model
    with served(out_dir / "model.onnx") as client:
        result = client.infer("caffe-ish", images)
    np.testing.assert_allclose(result.outputs["logits"], reference, atol=PARITY)


# --- 3. a model ending in Softmax --------------------------------------------------------------


def test_model_ending_in_softmax_gives_its_pre_softmax_scores_as_logits(tmp_path: Path):
    labels = {"0": "zero", "1": "one", "2": "two"}
    original = write_classifier(
        tmp_path / "gray.onnx", channels=1, ending="softmax", seed=3, metadata={"classes": json.dumps(labels)}
    )
    out_dir = imported(original, "-o", tmp_path / "out", "--labels-key", "classes", "--mean", "0.5", "--std", "0.25")
    report = report_of(out_dir)
    assert_parity_reported(report)
    head = next(note for note in report["notes"] if "Softmax" in note)
    assert "pre-softmax" in head
    assert read_metadata(out_dir / "model.onnx").labels == ["zero", "one", "two"]
    model = onnx.load(str(out_dir / "model.onnx"))
    assert sum(node.op_type == "Softmax" for node in model.graph.node) == 1  # the graph's own, none added

    images = wire_images(5, channels=1)
    probabilities, scores = run_original(original, preprocess(images, mean=[0.5], std=[0.25]), outputs=("y", "scores"))
    with served(out_dir / "model.onnx") as client:
        result = client.infer("gray", images)
    np.testing.assert_allclose(result.outputs["logits"], scores, atol=PARITY)
    np.testing.assert_allclose(result.outputs["probabilities"], probabilities, atol=1e-6)


def test_softmax_behind_a_flatten_gives_log_probabilities_as_logits(tmp_path: Path):
    original = write_classifier(tmp_path / "flat.onnx", ending="softmax-flatten", seed=4, metadata={"names": "a, b, c"})
    out_dir = imported(original, "-o", tmp_path / "out", "--labels-key", "names")
    report = report_of(out_dir)
    assert_parity_reported(report)
    assert any("log of the probabilities" in note for note in report["notes"])
    assert read_metadata(out_dir / "model.onnx").labels == ["a", "b", "c"]

    images = wire_images(4, seed=5)
    (probabilities,) = run_original(original, preprocess(images))
    with served(out_dir / "model.onnx") as client:
        result = client.infer("flat", images)
    np.testing.assert_allclose(result.outputs["probabilities"], probabilities, atol=1e-6)
    np.testing.assert_allclose(result.outputs["logits"], np.log(probabilities), atol=PARITY)


# --- 4. dynamic height and width ---------------------------------------------------------------


def test_dynamic_height_and_width_take_image_size(tmp_path: Path):
    original = write_classifier(tmp_path / "anysize.onnx", dynamic_size=True, seed=6)
    out_dir = imported(original, "-o", tmp_path / "out", "--image-size", "12x10", "--name", "sized", "--version", "3")
    meta = read_metadata(out_dir / "model.onnx")
    assert (meta.name, meta.version, meta.height, meta.width, meta.channels) == ("sized", "3", 12, 10, 3)
    assert_parity_reported(report_of(out_dir))

    images = wire_images(3, height=12, width=10, seed=7)
    (reference,) = run_original(original, preprocess(images))
    with served(out_dir / "model.onnx") as client:
        result = client.infer("sized", images)
    np.testing.assert_allclose(result.outputs["logits"], reference, atol=PARITY)


def test_output_name_picks_the_class_scores_among_several_outputs(tmp_path: Path):
    path = write_classifier(tmp_path / "two-heads.onnx", seed=8)
    model = onnx.load(str(path))
    model.graph.output.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 4, 1, 1]))
    onnx.save(model, str(path))
    out_dir = imported(path, "-o", tmp_path / "out", "--output-name", "y")
    assert_parity_reported(report_of(out_dir))
    pruned = onnx.load(str(out_dir / "model.onnx"))
    assert [o.name for o in pruned.graph.output] == ["logits", "probabilities"]


def test_float16_model_is_held_to_its_own_precision(tmp_path: Path):
    """A graph computing in float16 rounds its own logits; parity is 1e-2 of the largest logit, noted in the report."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(str(write_classifier(tmp_path / "f32.onnx", seed=12))), keep_io_types=False)
    original = tmp_path / "half.onnx"
    onnx.save(half, str(original))
    out_dir = imported(original, "-o", tmp_path / "out")
    report = report_of(out_dir)
    assert report["variants"][0]["status"] == "ok" and report["variants"][0]["top1_agreement"] == 1.0
    assert any("computes in float16" in note for note in report["notes"])
    assert "cast to float16" in report["normalisation_fold"]

    images = wire_images(4, seed=13)
    (reference,) = run_original(original, preprocess(images).astype(np.float16))
    with served(out_dir / "model.onnx") as client:
        result = client.infer("half", images)
    assert result.outputs["logits"].dtype == np.float32
    np.testing.assert_allclose(result.outputs["logits"], reference, atol=1e-2 * np.abs(reference).max())


def test_an_old_opset_is_raised_only_for_int8(tmp_path: Path):
    original = write_classifier(tmp_path / "old.onnx", opset=11, size=(16, 16), seed=14)
    fp32_only = imported(original, "-o", tmp_path / "fp32")
    assert [o.version for o in onnx.load(str(fp32_only / "model.onnx")).opset_import] == [11]
    folder = colour_folder(tmp_path / "images", per_class=3)
    with_int8 = imported(
        original, "-o", tmp_path / "int8", "--calibration-data", folder, "--int8-recipes", "u8s8", "--max-accuracy-drop", "1"
    )
    assert any("opset raised from 11 to 13" in note for note in report_of(with_int8)["notes"])
    assert [o.version for o in onnx.load(str(with_int8 / "model.int8.onnx")).opset_import if o.domain == ""] == [13]


# --- 5. int8 from --calibration-data, within its bound ----------------------------------------


def test_int8_of_an_imported_model_stays_within_its_bound(tmp_path: Path):
    original = colour_classifier(tmp_path / "colours.onnx")
    folder = colour_folder(tmp_path / "images")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(COLOURS) + "\n")
    out_dir = imported(
        original, "-o", tmp_path / "out", "--labels", labels, "--calibration-data", folder,
        "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--int8-recipes", "u8s8,s8s8,u8s8-float-stem",
    )  # int8 is the default with a calibration folder
    report = report_of(out_dir)
    assert report["accuracy_basis"].startswith("true top-1 accuracy")
    assert report["test_images"] == 6  # every 5th of 30
    assert report["pytorch_accuracy"] == 1.0  # the original on its held-out images
    assert_parity_reported(report)
    int8 = next(v for v in report["variants"] if v["variant"] == "int8")
    assert int8["status"] == "ok" and int8["recipe"] == report["chosen_recipe"]
    assert int8["accuracy_change"] >= -report["settings"]["max_accuracy_drop"]
    assert read_metadata(out_dir / "model.int8.onnx").test_accuracy == 1.0

    files = sorted(folder.rglob("*.png"))
    held_out = [f for i, f in enumerate(files) if i % 5 == 4]
    truth = np.array([COLOURS.index(f.parent.name) for f in held_out])
    with served(out_dir / "model.int8.onnx") as client:
        result = client.infer("colours-int8", [f.read_bytes() for f in held_out], top_k=1)  # PNGs, decoded by the server
    predicted = np.array([classes[0].index for classes in result.top_k])
    assert (predicted == truth).mean() >= report["pytorch_accuracy"] - report["settings"]["max_accuracy_drop"]


def test_folders_not_named_as_the_labels_measure_agreement(tmp_path: Path):
    original = colour_classifier(tmp_path / "colours.onnx")
    folder = colour_folder(tmp_path / "images", per_class=2)
    out_dir = imported(original, "-o", tmp_path / "out", "--calibration-data", folder, "--quantize", "none")
    report = report_of(out_dir)
    assert report["accuracy_basis"].startswith("top-1 agreement") and "not named as the model's labels" in report["accuracy_basis"]
    assert report["test_images"] == 1 and report["variants"][0]["accuracy"] == 1.0


# --- a model exported from PyTorch, as the README shows ------------------------------------------


def test_a_pytorch_model_exported_with_torch_onnx(tmp_path: Path):
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()
    path = tmp_path / "torch-net.onnx"
    torch.onnx.export(
        net, (torch.zeros(2, 3, 16, 16),), str(path), input_names=["input"], output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False,
    )
    out_dir = imported(path, "-o", tmp_path / "out", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225")
    assert_parity_reported(report_of(out_dir))

    images = wire_images(4, height=16, width=16, seed=11)
    with torch.no_grad():
        expected = net(torch.from_numpy(preprocess(images, mean=IMAGENET_MEAN, std=IMAGENET_STD))).numpy()
    with served(out_dir / "model.onnx") as client:
        result = client.infer("torch-net", images)
    np.testing.assert_allclose(result.outputs["logits"], expected, atol=PARITY)


# --- 6. bad input: one sentence, nothing written ---------------------------------------------


def _graph_model(path: Path, nodes, inputs, outputs, initializers=(), opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, "bad", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def rank3_input(path: Path) -> Path:
    w = numpy_helper.from_array(np.ones((64, 3), np.float32), "w")
    return _graph_model(
        path,
        [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("Gemm", ["f", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [w],
    )


def rank4_output(path: Path) -> Path:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    return _graph_model(
        path,
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [w],
    )


def two_inputs(path: Path) -> Path:
    base = onnx.load(str(write_classifier(path)))
    base.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["batch", 3, 8, 8]))
    base.graph.node.insert(0, helper.make_node("Add", ["x", "x2"], ["x_sum"]))
    for node in base.graph.node[1:]:
        node.input[:] = ["x_sum" if name == "x" else name for name in node.input]
    onnx.save(base, str(path))
    return path


def fixed_batch_reshape(path: Path) -> Path:
    """Batch fixed at 1 and a Reshape to [1, -1]: the graph cannot run at any other batch size."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),
        numpy_helper.from_array(rng.normal(0, 1, (3, 4)).astype(np.float32), "fc"),
    ]
    return _graph_model(
        path,
        [
            helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["c"], ["p"]),
            helper.make_node("Reshape", ["p", "shape"], ["f"]),
            helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializers,
    )


def four_channels(path: Path) -> Path:
    return write_classifier(path, channels=4)


def ambiguous_layout(path: Path) -> Path:
    return write_classifier(path, size=(8, 3))  # [N, 3, 8, 3]: axis 1 and axis 3 could both be channels


def not_onnx(path: Path) -> Path:
    path.write_bytes(b"\x00\x01 this is not an ONNX file at all \xff" * 10)
    return path


def labels_file(tmp_path: Path, count: int) -> str:
    path = tmp_path / f"labels{count}.txt"
    path.write_text("".join(f"label{i}\n" for i in range(count)))
    return str(path)


BAD_INPUTS = {
    # id: (model builder, extra CLI args (callable of tmp_path), fragments of the error sentence)
    "not-onnx": (not_onnx, lambda t: [], ["not an ONNX model"]),
    "missing-file": (None, lambda t: [], ["SOURCE", "model.onnx: no such file"]),
    "input-rank-3": (rank3_input, lambda t: [], ["rank 3", "not 4"]),
    "output-rank-4": (rank4_output, lambda t: [], ["rank 4", "not 2"]),
    "several-inputs": (two_inputs, lambda t: [], ["2 inputs", "--input-name"]),
    "other-inputs-needed": (two_inputs, lambda t: ["--input-name", "x"], ["besides its image input 'x'", "x2"]),
    "unknown-input-name": (write_classifier, lambda t: ["--input-name", "pixels"], ["no input named 'pixels'"]),
    "several-outputs": (
        lambda p: _add_output(write_classifier(p)), lambda t: [], ["2 outputs", "--output-name"]
    ),
    "label-count": (write_classifier, lambda t: ["--labels", labels_file(t, 2)], ["holds 2 labels", "3 classes"]),
    "mean-length": (write_classifier, lambda t: ["--mean", "0.5,0.5"], ["--mean takes 3 values", "not 2"]),
    "std-length-gray": (
        lambda p: write_classifier(p, channels=1), lambda t: ["--std", "0.2,0.2,0.2"], ["--std takes 1 value", "not 3"]
    ),
    "dynamic-size": (lambda p: write_classifier(p, dynamic_size=True), lambda t: [], ["dynamic", "--image-size"]),
    "image-size-mismatch": (write_classifier, lambda t: ["--image-size", "16x16"], ["--image-size 16x16 does not match"]),
    "four-channels": (four_channels, lambda t: [], ["1 (gray) or 3 (RGB)"]),
    "four-channels-nchw": (four_channels, lambda t: ["--layout", "nchw"], ["has 4 channels"]),
    "ambiguous-layout": (ambiguous_layout, lambda t: [], ["--layout nchw or --layout nhwc"]),
    "int8-without-images": (write_classifier, lambda t: ["--quantize", "int8"], ["--calibration-data"]),
    "fixed-batch": (fixed_batch_reshape, lambda t: [], ["batch size at 1", "dynamic batch axis"]),
    "both-label-sources": (
        write_classifier, lambda t: ["--labels", labels_file(t, 3), "--labels-key", "names"], ["not both"]
    ),
    "missing-labels-key": (write_classifier, lambda t: ["--labels-key", "names"], ["no metadata key 'names'"]),
    "bgr-gray": (lambda p: write_classifier(p, channels=1), lambda t: ["--channel-order", "bgr"], ["3-channel"]),
    "bad-mean": (write_classifier, lambda t: ["--mean", "red,green,blue"], ["--mean takes comma-separated numbers"]),
    "zero-std": (write_classifier, lambda t: ["--std", "0.2,0,0.2"], ["--std takes positive numbers"]),
    "already-ours": (lambda p: write_tiny_model(p), lambda t: [], ["already an edgecnn export"]),
    "empty-calibration-folder": (
        write_classifier, lambda t: ["--calibration-data", str(_empty_folder(t))], ["holds 0 PNG/JPEG images"]
    ),
}


def _add_output(path: Path) -> Path:
    model = onnx.load(str(path))
    model.graph.output.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 4, 1, 1]))
    onnx.save(model, str(path))
    return path


def _empty_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "no-images"
    folder.mkdir(exist_ok=True)
    (folder / "readme.txt").write_text("no images here")
    return folder


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_sentence_and_writes_nothing(tmp_path: Path, case: str):
    build, extra, fragments = BAD_INPUTS[case]
    path = tmp_path / "model.onnx"
    if build is not None:
        build(path)
    out_dir = tmp_path / "out"
    result = run_export(path, "-o", out_dir, *extra(tmp_path), *FAST)
    assert_one_line_error(result, *fragments)
    assert not out_dir.exists()


def test_a_failed_import_leaves_an_existing_output_folder_untouched(tmp_path: Path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "model.onnx").write_bytes(b"an earlier export")
    result = run_export(write_classifier(tmp_path / "m.onnx"), "-o", out_dir, "--mean", "1,2")
    assert_one_line_error(result, "--mean takes 3 values")
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.onnx"]
    assert (out_dir / "model.onnx").read_bytes() == b"an earlier export"


def test_import_options_on_a_run_directory_are_refused(tmp_path: Path):
    result = run_export(tmp_path, "-o", tmp_path / "out", "--mean", "0.5", "--layout", "nchw")
    assert_one_line_error(result, "--mean, --layout are options for importing an ONNX file")


# --- labels in a model's metadata, and no torch --------------------------------------------


@pytest.mark.parametrize(
    "text, labels",
    [
        ('["cat", "dog"]', ["cat", "dog"]),
        ('{"1": "dog", "0": "cat"}', ["cat", "dog"]),
        ("{0: 'person', 1: 'bicycle'}", ["person", "bicycle"]),  # a Python dict literal, as some exporters write
        ("cat, dog", ["cat", "dog"]),
        ("cat\ndog\n", ["cat", "dog"]),
        ("hot dog,not hot dog", ["hot dog", "not hot dog"]),
    ],
)
def test_labels_from_metadata(text: str, labels: list[str]):
    assert parse_labels(text) == labels


def test_import_loads_no_torch(tmp_path: Path):
    model = write_classifier(tmp_path / "m.onnx")
    code = (
        "import sys; from edgecnn.export.importer import import_onnx; from edgecnn.export.settings import ImportSettings; "
        f"import_onnx({str(model)!r}, {str(tmp_path / 'out')!r}, ImportSettings(timing_rounds=1, throughput_batch=4)); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "out" / "model.onnx").is_file()
