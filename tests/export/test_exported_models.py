"""What a user checks on an export: the files, their metadata, the wire format, parity, accuracy, the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgecnn.export.cpu import cpu_path
from edgecnn.export.exporter import pytorch_logits
from edgecnn.export.metadata import read_metadata
from edgecnn.train.checkpoint import load_run
from edgecnn.train.data import DatasetSpec, load_splits
from edgecnn.train.normalisation import Normalisation

from tests.helpers.exporting import ACCURACY_BOUND

MODEL_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx", "dynamic": "model.dynamic.onnx"}


@pytest.fixture(scope="module")
def report(exported: Path) -> dict:
    return json.loads((exported / "report.json").read_text())


@pytest.fixture(scope="module")
def test_set(run_dir: Path):
    info = load_run(run_dir).info
    return load_splits(DatasetSpec.from_json(info["dataset"]))[1]


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_every_variant_is_written_with_the_report(exported: Path, report: dict):
    written = sorted(p.name for p in exported.iterdir())
    assert written == sorted([*MODEL_FILES.values(), "report.json", "report.md"])  # no staging left over
    assert [v["variant"] for v in report["variants"]] == list(MODEL_FILES)
    assert all(v["status"] == "ok" for v in report["variants"])
    markdown = (exported / "report.md").read_text()
    for variant in MODEL_FILES:
        assert f"| {variant}" in markdown


@pytest.mark.parametrize("variant", list(MODEL_FILES))
def test_metadata_round_trip(exported: Path, run_dir: Path, variant: str):
    info = load_run(run_dir).info
    meta = read_metadata(exported / MODEL_FILES[variant])  # onnxruntime alone reads it back
    assert meta.name == ("fashion-cnn" if variant == "fp32" else f"fashion-cnn-{variant}")
    assert meta.version == "1"
    assert meta.variant == variant
    assert meta.labels == [str(d) for d in range(10)]
    assert (meta.height, meta.width, meta.channels) == (28, 28, 1)
    assert (meta.input_name, meta.layout, meta.input_datatype) == ("images", "NHWC", "UINT8")
    assert meta.output_names == ["logits", "probabilities"]
    assert meta.architecture == "fashion-cnn"
    assert Path(meta.source_run) == run_dir.resolve()
    assert meta.test_accuracy == pytest.approx(info["test_accuracy"])


@pytest.mark.parametrize("variant", list(MODEL_FILES))
def test_graph_takes_the_wire_format(exported: Path, variant: str):
    model = onnx.load(str(exported / MODEL_FILES[variant]))
    onnx.checker.check_model(model, full_check=True)
    (image_input,) = model.graph.input
    dims = image_input.type.tensor_type.shape.dim
    assert image_input.name == "images"
    assert image_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [28, 28, 1]
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert outputs == {"logits": onnx.TensorProto.FLOAT, "probabilities": onnx.TensorProto.FLOAT}


@pytest.mark.parametrize("variant", list(MODEL_FILES))
@pytest.mark.parametrize("batch", [1, 3, 64])
def test_dynamic_batch(exported: Path, test_set, variant: str, batch: int):
    images = test_set.images[:batch]
    logits, probabilities = session(exported / MODEL_FILES[variant]).run(None, {"images": images})
    assert logits.shape == probabilities.shape == (batch, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)


def test_fp32_matches_pytorch_on_real_test_images(exported: Path, run_dir: Path, test_set, report: dict):
    loaded = load_run(run_dir)
    reference = pytorch_logits(loaded.model, Normalisation.from_json(loaded.info["normalisation"]), test_set.images)
    (logits,) = session(exported / "model.onnx").run(["logits"], {"images": test_set.images})
    assert np.abs(logits - reference).max() <= 1e-4
    assert (logits.argmax(1) == reference.argmax(1)).all()
    fp32 = report["variants"][0]
    assert fp32["max_abs_logit_diff"] <= 1e-4 and fp32["top1_agreement"] == 1.0


def test_int8_keeps_accuracy_and_shrinks_the_file(exported: Path, test_set, report: dict):
    (logits,) = session(exported / "model.int8.onnx").run(["logits"], {"images": test_set.images})
    int8_accuracy = float((logits.argmax(1) == test_set.labels).mean())
    assert int8_accuracy >= report["pytorch_accuracy"] - ACCURACY_BOUND
    assert int8_accuracy > 0.8  # a real model, not a lucky one: three epochs on 1,000 digits
    fp32_size = (exported / "model.onnx").stat().st_size
    assert (exported / "model.int8.onnx").stat().st_size <= 0.3 * fp32_size


def test_int8_is_static_qdq_with_float_logits(exported: Path):
    model = onnx.load(str(exported / "model.int8.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert "DequantizeLinear" in ops or "QLinearConv" in ops
    assert "ConvInteger" not in ops  # that is the slow dynamic path
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    assert producers["logits"] != "DequantizeLinear"  # logits are not rounded to 256 levels


def test_report_records_every_recipe_and_the_choice(report: dict):
    recipes = report["recipes"]
    assert len(recipes) >= 3
    assert report["chosen_recipe"] in {r["name"] for r in recipes}
    assert report["chosen_recipe"] in report["recipe_choice"]
    for recipe in recipes:
        assert recipe["error"] or (recipe["accuracy"] > 0 and recipe["latency_ms"] > 0 and recipe["throughput_ips"] > 0)
    int8 = next(v for v in report["variants"] if v["variant"] == "int8")
    assert int8["recipe"] == report["chosen_recipe"]
    assert all(v["latency_ms"] > 0 and v["throughput_ips"] > 0 for v in report["variants"])


def test_int8_file_records_its_recipe_and_the_cpu_path_it_was_chosen_on(exported: Path, report: dict):
    int8 = read_metadata(exported / MODEL_FILES["int8"])
    assert int8.int8_recipe == report["chosen_recipe"]
    assert int8.cpu_path == cpu_path() == report["machine"]["cpu_path"]
    assert int8.cpu_model
    fp32 = read_metadata(exported / MODEL_FILES["fp32"])
    assert (fp32.int8_recipe, fp32.cpu_path) == ("", "")


def test_int8_speed_is_reported_from_a_fresh_timing_of_the_chosen_recipe(exported: Path, report: dict):
    speed = report["int8_speed"]
    assert speed["recipe"] == report["chosen_recipe"] and speed["cpu_path"] == cpu_path()
    assert speed["latency"]["batch"] == 1 and speed["throughput"]["batch"] == 16
    for side in ("latency", "throughput"):
        judged = speed[side]
        assert len(judged["round_speedups"]) == speed["rounds"] == 1
        assert judged["worst_speedup"] == min(judged["round_speedups"])
        assert judged["never_slower"] == (judged["worst_speedup"] >= 1.0)
    assert speed["never_slower"] == (speed["latency"]["never_slower"] and speed["throughput"]["never_slower"])
    rows = {v["variant"]: v for v in report["variants"]}
    assert rows["int8"]["latency_ms"] == speed["latency"]["int8"]["ms"]  # the fresh figure, not the search's
    assert rows["fp32"]["throughput_ips"] == speed["throughput"]["fp32"]["images_per_s"]
    assert (rows["fp32"]["timing"], rows["int8"]["timing"], rows["fp16"]["timing"]) == ("fresh", "fresh", "search")
    markdown = (exported / "report.md").read_text()
    assert "a fresh timing of the chosen recipe" in markdown and "worst round" in markdown
    assert "Never slower than fp32: " in markdown
