"""Bad input: one clear error line, a non-zero exit, and nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from edgecnn.export import exporter, quantize
from edgecnn.export.settings import ExportError, ExportSettings

from tests.helpers.exporting import FAST_TIMING, run_export


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], result.output
    assert "Traceback" not in result.output


def onnx_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.onnx")) if folder.exists() else []


def test_run_dir_without_weights(run_dir: Path, tmp_path: Path):
    run = copy_run(run_dir, tmp_path)
    (run / "model.safetensors").unlink()
    out_dir = tmp_path / "out"
    assert_one_line_error(run_export(run, "-o", out_dir), "model.safetensors", "no saved weights")
    assert not out_dir.exists()


def test_unknown_architecture(run_dir: Path, tmp_path: Path):
    run = copy_run(run_dir, tmp_path)
    info = json.loads((run / "run.json").read_text())
    info["architecture"] = "no-such-net"
    (run / "run.json").write_text(json.dumps(info))
    out_dir = tmp_path / "out"
    assert_one_line_error(run_export(run, "-o", out_dir), "no-such-net")
    assert not out_dir.exists()


def test_corrupt_checkpoint(run_dir: Path, tmp_path: Path):
    run = copy_run(run_dir, tmp_path)
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out_dir = tmp_path / "out"
    assert_one_line_error(run_export(run, "-o", out_dir), "model.safetensors", "corrupt")
    assert not out_dir.exists()


def test_not_a_run_dir(tmp_path: Path):
    assert_one_line_error(run_export(tmp_path / "missing", "-o", tmp_path / "out"), "SOURCE", "no such run directory")


def test_unwritable_output_dir(run_dir: Path, tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_one_line_error(run_export(run_dir, "-o", blocker / "out"), "-o/--output", "a-file is a file, not a folder")


@pytest.mark.parametrize(
    "option, fragment",
    [
        (["--quantize", "int4"], "--quantize"),
        (["--opset", "9"], "--opset"),
        (["--int8-recipes", "magic"], "unknown int8 recipe magic"),
    ],
)
def test_bad_settings(run_dir: Path, tmp_path: Path, option: list[str], fragment: str):
    out_dir = tmp_path / "out"
    assert_one_line_error(run_export(run_dir, "-o", out_dir, *option), fragment)
    assert not out_dir.exists()


def test_an_option_of_a_few_values_lists_them_when_given_another(run_dir: Path, tmp_path: Path):
    result = run_export(run_dir, "-o", tmp_path / "out", "--calibration-method", "mse")
    assert result.exit_code == 2
    assert all(f"'{word}'" in result.output for word in ("mse", "minmax", "entropy", "percentile"))
    assert not (tmp_path / "out").exists()


def test_failed_variant_is_not_written_and_the_others_are_kept(run_dir: Path, tmp_path: Path, monkeypatch):
    """An fp16 conversion that breaks the model: fp16 fails its accuracy bound, fp32 still ships."""
    convert = quantize.convert_fp16

    def broken_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
        half = convert(model)
        for initializer in half.graph.initializer:
            if initializer.data_type == onnx.TensorProto.FLOAT16:
                initializer.raw_data = bytes(len(initializer.raw_data))  # every weight zero
        return half

    monkeypatch.setattr(quantize, "convert_fp16", broken_fp16)
    out_dir = tmp_path / "out"
    (out_dir).mkdir()
    (out_dir / "model.fp16.onnx").write_bytes(b"from an earlier export")
    result = run_export(run_dir, "-o", out_dir, "--quantize", "fp16", *FAST_TIMING)
    assert result.exit_code == 1
    assert "fp16 failed" in result.output and "--max-accuracy-drop" in result.output.replace("\n", " ")
    assert [p.name for p in onnx_files(out_dir)] == ["model.onnx"]
    report = json.loads((out_dir / "report.json").read_text())
    assert [(v["variant"], v["status"]) for v in report["variants"]] == [("fp32", "ok"), ("fp16", "failed")]


def test_an_interrupted_export_leaves_nothing_behind(run_dir: Path, tmp_path: Path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize, "quantize_dynamic_int8", interrupted)
    out_dir = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        exporter.export_run(run_dir, out_dir, ExportSettings(quantize=("dynamic",)))
    assert not out_dir.exists()  # created by the export, so removed with everything in it


def test_settings_are_checked_before_any_work(tmp_path: Path):
    with pytest.raises(ExportError, match="--max-accuracy-drop"):
        exporter.export_run(tmp_path, tmp_path / "out", ExportSettings(max_accuracy_drop=5))
