"""ServeSettings is the one source of the `edgecnn serve` flags and their defaults."""

from __future__ import annotations

from dataclasses import fields

import pytest
import typer.main
from edgecnn.serve import settings as settings_module
from edgecnn.serve.cli import app
from edgecnn.serve.settings import ServeSettings


def test_every_setting_is_a_serve_flag_with_the_same_default_and_help():
    params = {p.name: p for p in typer.main.get_command(app).commands["serve"].params}
    for f in fields(ServeSettings):
        assert f.name in params, f"--{f.name.replace('_', '-')} is missing"
        if f.name != "model":
            assert params[f.name].default == f.default, f.name
        assert params[f.name].help == f.metadata["help"]
    assert set(params) == {f.name for f in fields(ServeSettings)}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"provider": "tpu"}, "provider must be one of cpu, cuda, auto"),
        ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us must be >= 0"),
        ({"instances": -1}, "instances must be >= 0"),
        ({"single_thread_below": -1}, "single_thread_below must be >= 0"),
        ({"workers": 2, "port": 0}, "needs a fixed --port"),
    ],
)
def test_invalid_settings_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        ServeSettings(model="m.onnx", **change)


def test_thread_defaults_split_the_cores_between_workers_and_instances(monkeypatch):
    monkeypatch.setattr(settings_module, "usable_cores", lambda: 8)
    default = ServeSettings(model="m.onnx")
    assert (default.instances_resolved, default.intra_op_threads_resolved) == (2, 4)
    two_workers = ServeSettings(model="m.onnx", workers=2, port=8001)
    assert (two_workers.instances_resolved, two_workers.intra_op_threads_resolved) == (2, 2)
    one_instance = ServeSettings(model="m.onnx", instances=1)
    assert one_instance.intra_op_threads_resolved == 8
    assert ServeSettings(model="m.onnx", intra_op_threads=3).intra_op_threads_resolved == 3
    threads_asked = ServeSettings(model="m.onnx", intra_op_threads=8)
    assert (threads_asked.instances_resolved, threads_asked.intra_op_threads_resolved) == (1, 8)
    monkeypatch.setattr(settings_module, "usable_cores", lambda: 1)
    single_core = ServeSettings(model="m.onnx")
    assert (single_core.instances_resolved, single_core.intra_op_threads_resolved) == (1, 1)
