"""On the edge install (`pip install edgecnn[serve]`: no torch, no onnx), the commands that need the
train extra say so in one sentence instead of ending in a ModuleNotFoundError traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# The edge install, as far as the command can tell: the train extra's modules cannot be imported.
EDGE = (
    "import sys\n"
    "for name in ('torch', 'onnx', 'onnxscript', 'safetensors'):\n"
    "    sys.modules[name] = None\n"
    "from edgecnn.serve.cli import main\n"
    "sys.argv = ['edgecnn', *sys.argv[1:]]\n"
    "main()\n"
)


def edge_run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", EDGE, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("args", [
    ["export", "model.onnx", "-o", "out"],
    ["export", "runs/some-run", "-o", "out"],
    ["train", "--epochs", "1"],
    ["evaluate", "runs/some-run"],
    ["demo", "--out", "out"],
])
def test_commands_of_the_train_extra_say_which_extra_to_install(tmp_path, args):
    (tmp_path / "model.onnx").write_bytes(b"whatever")
    (tmp_path / "runs" / "some-run").mkdir(parents=True)
    args = [str(tmp_path / a) if a in ("model.onnx", "runs/some-run", "out") else a for a in args]
    result = edge_run(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    if args[0] == "demo":  # it trains and serves
        assert "needs the train and serve extras" in lines[0] and "pip install 'edgecnn[train,serve]'" in lines[0]
    else:
        assert "needs the train extra" in lines[0] and "pip install 'edgecnn[train]'" in lines[0]


def test_the_edge_commands_still_run_there():
    result = edge_run("serve", "--help")
    assert result.returncode == 0 and "--max-request-images" in result.stdout


@pytest.mark.parametrize("command, flag, choices", [
    ("train", "--dataset", "mnist|fashion-mnist|cifar10|folder"),
    ("train", "--padding", "valid|same|full"),
    ("train", "--pool", "max|avg"),
    ("train", "--optimizer", "adam|sgd"),
    ("train", "--lr-schedule", "constant|cosine|onecycle"),
    ("train", "--device", "auto|cpu|cuda"),
    ("evaluate", "--device", "cpu|cuda"),
    ("export", "--calibration-method", "minmax|entropy|percentile"),
    ("export", "--softmax", "auto|yes|no"),
    ("serve", "--provider", "cpu|cuda|auto"),
    ("serve", "--model-control-mode", "none|poll|explicit"),
])
def test_help_lists_the_choices_of_options_that_take_a_few_values(command, flag, choices):
    result = edge_run(command, "--help")
    line = next(line for line in result.stdout.splitlines() if f" {flag} " in line)
    assert f"<{choices}>" in line


def test_bench_without_the_plots_extra_writes_no_plot_and_says_why(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "from pathlib import Path\n"
        "from edgecnn.benchmarks import plots\n"
        "assert not plots.plots_available()\n"
        "print(plots.write_plots(Path(sys.argv[1]), [], []), plots.PLOTS_EXTRA_HINT)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("[] no plots") and "pip install 'edgecnn[plots]'" in result.stdout
    assert not (tmp_path / "out").exists()
