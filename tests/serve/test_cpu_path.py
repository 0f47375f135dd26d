"""An int8 model whose recipe was chosen on another CPU path says so once when it is served; one chosen
here, or one that records no path (older exports, fp32), says nothing."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import onnx
import pytest
from edgecnn.export.cpu import cpu_path
from edgecnn.export.metadata import read_metadata, write_metadata
from edgecnn.serve.model import load_model
from edgecnn.serve.server import start_server

from tests.helpers.models import write_tiny_model
from tests.helpers.serving import settings_for
from tests.serve.test_startup_log import records  # noqa: F401 - the fixture that sees the server's log records

ELSEWHERE = "neon/dotprod" if cpu_path() != "neon/dotprod" else "avx2"


def int8_model(path: Path, recorded_path: str, variant: str = "int8") -> Path:
    """A tiny model whose metadata says its int8 recipe was chosen on ``recorded_path``."""
    write_tiny_model(path, name="digits-int8", variant=variant)
    model = onnx.load(str(path))
    meta = dataclasses.replace(read_metadata(path), int8_recipe="u8s8", cpu_path=recorded_path, cpu_model="Some CPU")
    write_metadata(model, meta)
    onnx.save(model, str(path))
    return path


def cpu_warnings(records) -> list[logging.LogRecord]:
    found = [r for r in records.records if r.levelno == logging.WARNING and "re-export" in r.getMessage()]
    return list({id(r): r for r in found}.values())  # the handler may see a record twice: direct and propagated


def test_serving_an_int8_model_chosen_on_another_cpu_warns_once(tmp_path, records):
    model = int8_model(tmp_path / "model.int8.onnx", ELSEWHERE)
    with start_server(settings_for(model, metrics=False)):
        pass
    (warning,) = cpu_warnings(records)
    message = warning.getMessage()
    assert "digits-int8" in message and ELSEWHERE in message and cpu_path() in message
    assert "u8s8" in message and "edgecnn export" in message
    assert (warning.exported_on, warning.serving_on) == (ELSEWHERE, cpu_path())


@pytest.mark.parametrize("recorded, variant", [("here", "int8"), ("", "int8"), (ELSEWHERE, "fp32")])
def test_no_warning_for_this_cpu_an_unrecorded_path_or_fp32(tmp_path, records, recorded, variant):
    model = int8_model(tmp_path / "model.onnx", cpu_path() if recorded == "here" else recorded, variant)
    load_model(model, settings_for(model))
    assert not cpu_warnings(records)
