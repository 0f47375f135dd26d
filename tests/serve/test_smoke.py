"""`python -m edgecnn.serve.smoke`, the check the Dockerfiles' builds run (tests/test_installs.py runs it on a
real edge install): its model is reproducible, and every way it can fail ends in one line naming the step."""

from __future__ import annotations

import subprocess
import sys

from edgecnn.serve.smoke import SMOKE_LABELS, SMOKE_MODEL

from tests.helpers.models import write_tiny_model

SMOKE = [sys.executable, "-m", "edgecnn.serve.smoke"]


def test_the_shipped_smoke_model_is_the_tiny_model_the_tests_write(tmp_path):
    written = write_tiny_model(tmp_path / "smoke.onnx", name="smoke", version="1", labels=SMOKE_LABELS)
    assert SMOKE_MODEL.read_bytes() == written.read_bytes()


def test_smoke_passes_on_a_working_install():
    result = subprocess.run(SMOKE, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("smoke: OK (smoke: ") and result.stdout.split(": ")[2].split(")")[0] in SMOKE_LABELS


def test_smoke_names_the_step_and_the_servers_error_when_the_model_cannot_be_served(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    result = subprocess.run([*SMOKE, "--model", str(broken), "--timeout-s", "120"], capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 1
    first, *rest = result.stderr.splitlines()
    assert first.startswith("smoke: FAILED at start: the server exited with code 1 before serving: error: ")
    assert str(broken) in first and rest[0] == "smoke: the server's last log lines:"


def test_smoke_refuses_a_missing_model_without_starting_a_server(tmp_path):
    result = subprocess.run([*SMOKE, "--model", str(tmp_path / "nosuch.onnx")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"smoke: FAILED at model: {tmp_path / 'nosuch.onnx'}: no such model file or repository"


def test_smoke_passes_extra_serve_flags_through():
    result = subprocess.run([*SMOKE, "--", "--max-batch-size", "0"], capture_output=True, text=True, timeout=180)
    assert result.returncode == 1  # the flag reached `edgecnn serve`, which refuses it in its own words
    assert result.stderr.splitlines()[0].endswith("error: max_batch_size must be >= 1, got 0")
