"""benchmarks/quant_speed.py's per-op profile, on a tiny model (no training, no timing thresholds)."""

from __future__ import annotations

from pathlib import Path

from edgecnn.benchmarks.quant_speed import PROFILE_TOP, profile_markdown, profile_op_types

from tests.helpers.models import random_images, write_tiny_model


def test_profile_sums_node_time_by_op_type(tmp_path: Path):
    model = write_tiny_model(tmp_path / "tiny.onnx")
    ops = profile_op_types(model, {"images": random_images(4)}, threads=1, prefix=tmp_path / "profile")
    assert "Conv" in ops and all(ms >= 0 for ms in ops.values())
    assert list(ops.values()) == sorted(ops.values(), reverse=True)
    assert list(tmp_path.glob("profile*.json"))  # onnxruntime's own trace stays beside the work


def test_profile_table_puts_fp32_and_int8_side_by_side():
    fp32 = {f"Op{i}": 1.0 / (i + 1) for i in range(PROFILE_TOP + 3)}
    int8 = {"QLinearConv": 0.75, "QuantizeLinear": 0.25}
    table = profile_markdown("cifar-cnn", 64, "u8s8", {"fp32": fp32, "int8": int8})
    rows = [line for line in table.splitlines() if line.startswith("| Op")]
    assert len(rows) == PROFILE_TOP  # the top ops only
    assert "| Op0 | 1.000 | " in rows[0] and "| QLinearConv | 0.750 | 75% |" in rows[0]
    assert "| QuantizeLinear | 0.250 | 25% |" in rows[1] and rows[2].endswith("|  |  |  |")
    assert "**all nodes** | **1.000**" in table
