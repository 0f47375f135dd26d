"""`edgecnn bench` flags: their defaults are BenchSettings' defaults, and lists parse."""

from __future__ import annotations

import pytest
from edgecnn.benchmarks import bench as bench_module
from edgecnn.benchmarks import cli as bench_cli
from edgecnn.benchmarks.settings import BenchSettings
from edgecnn.serve.cli import app
from typer.testing import CliRunner


@pytest.fixture
def captured(monkeypatch):
    seen = {}

    def fake_run_bench(models, settings, command, progress):
        seen.update(models=models, settings=settings, command=command)
        raise ValueError("stop here")

    monkeypatch.setattr(bench_module, "run_bench", fake_run_bench)
    monkeypatch.setattr(bench_cli, "_check_inputs", lambda models, settings: None)  # no model files here
    return seen


def test_flag_defaults_are_the_settings_defaults(captured):
    result = CliRunner().invoke(app, ["bench", "model.onnx"])
    assert result.exit_code == 1 and "stop here" in result.output
    assert captured["settings"] == BenchSettings()
    assert [str(m) for m in captured["models"]] == ["model.onnx"]


def test_lists_and_flags_reach_the_settings(captured):
    CliRunner().invoke(app, ["bench", "m.onnx", "--server", "h:1", "--concurrency", "1,4", "--rate", "10,2.5",
                             "--scenario", "offline", "--batch-sizes", "2", "--no-floors", "--clients", "3"])
    settings = captured["settings"]
    assert settings.concurrency == (1, 4) and settings.rates == (10.0, 2.5) and settings.scenarios == ("offline",)
    assert settings.batch_sizes == (2,) and settings.floors is False and settings.clients == 3
    assert settings.server == "h:1"


def test_contradictions_are_refused():
    result = CliRunner().invoke(app, ["bench", "m.onnx", "--server", "h:1", "--start-server"])
    assert result.exit_code != 0 and "either --server" in result.output
    result = CliRunner().invoke(app, ["bench", "m.onnx", "--scenario", "nightly"])
    assert result.exit_code != 0 and "unknown scenario" in result.output


def test_the_demo_prints_a_bench_command_equivalent_to_its_benchmark(captured, tmp_path):
    import shlex

    from edgecnn.benchmarks.demo import bench_command, bench_settings
    from edgecnn.benchmarks.settings import DemoSettings

    models = [tmp_path / "model.onnx", tmp_path / "model.int8.onnx"]
    settings = bench_settings(tmp_path / "bench", DemoSettings())
    CliRunner().invoke(app, shlex.split(bench_command(models, settings))[1:])
    assert captured["settings"] == settings and captured["models"] == models
