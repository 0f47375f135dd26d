"""benchmarks/peers.py without the peers installed: the configuration it writes for MLServer and Triton,
the session both peers open, stopping a process group, the error when a peer does not start, and the
table (median and worst round, every error). The end-to-end run needs the peers' venvs: see its docstring."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from edgecnn.benchmarks.peers import (
    MLSERVER,
    PEER_SETUP,
    TRITON,
    Floors,
    ModelTensors,
    ServerFigures,
    TensorSpec,
    errors_line,
    floors_line,
    live_group_members,
    mlserver_model_settings,
    model_tensors,
    peer_process,
    peer_table,
    stop_process_group,
    triton_launcher_config,
    write_mlserver_folder,
)
from edgecnn.benchmarks.servers import free_port

from tests.helpers.models import random_images, reference_outputs, write_tiny_model
from tests.helpers.serving import wait_until

PORTS = {"grpc": 18001, "http": 18002, "metrics": 18003}


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A tiny model whose dims differ from each other, so a swapped axis would show."""
    return write_tiny_model(tmp_path_factory.mktemp("peers") / "wide.onnx", name="wide", height=6, width=10,
                            channels=3, labels=("a", "b", "c", "d", "e"))


def test_the_model_tensors_come_from_the_model_file(wide_model):
    assert model_tensors(wide_model) == ModelTensors(
        "wide",
        (TensorSpec("images", "uint8", (6, 10, 3)),),
        (TensorSpec("logits", "float32", (5,)), TensorSpec("probabilities", "float32", (5,))),
    )


def test_mlserver_model_settings_name_the_runtime_the_tensors_and_adaptive_batching(wide_model):
    settings = mlserver_model_settings(model_tensors(wide_model), wide_model, threads=0)
    assert settings["name"] == "wide"
    assert settings["implementation"] == "mlserver_runtime.OnnxRuntimeModel"
    assert Path(settings["parameters"]["uri"]) == wide_model.resolve()
    assert settings["parameters"]["extra"] == {"intra_op_threads": 0}
    assert (settings["max_batch_size"], settings["max_batch_time"]) == (64, 0.0005)
    assert settings["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 6, 10, 3]}]
    assert settings["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 5]},
                                   {"name": "probabilities", "datatype": "FP32", "shape": [-1, 5]}]


def test_the_mlserver_folder_holds_settings_on_loopback_and_the_runtime_it_names(wide_model, tmp_path):
    write_mlserver_folder(tmp_path, model_tensors(wide_model), wide_model, 2, PORTS)
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["host"] == "127.0.0.1"
    assert (settings["grpc_port"], settings["http_port"], settings["metrics_port"]) == (18001, 18002, 18003)
    model_settings = json.loads((tmp_path / "model-settings.json").read_text())
    module, cls = model_settings["implementation"].split(".")
    assert cls in _classes(tmp_path / f"{module}.py")
    assert (tmp_path / "peer_session.py").exists()  # the runtime imports it


def test_the_triton_launcher_config_has_our_names_dims_without_batch_and_the_dynamic_batcher(wide_model):
    config = triton_launcher_config(model_tensors(wide_model), wide_model, 0, PORTS)
    assert config["name"] == "wide"
    assert config["inputs"] == [{"name": "images", "dtype": "uint8", "shape": [6, 10, 3]}]
    assert config["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [5]},
                                 {"name": "probabilities", "dtype": "float32", "shape": [5]}]
    assert (config["max_batch_size"], config["max_queue_delay_microseconds"]) == (64, 100)
    assert config["ports"] == PORTS
    launcher = (PEER_SETUP / "triton_launcher.py").read_text()
    for key in ("name", "model", "inputs", "outputs", "max_batch_size", "max_queue_delay_microseconds",
                "intra_op_threads", "ports"):
        assert f'config["{key}"]' in launcher, key  # every key written is read


def _peer_module(name: str, monkeypatch, fakes: dict[str, types.ModuleType]) -> types.ModuleType:
    """A peer_setup file imported as the peer imports it (beside peer_session.py), with stand-ins for the
    peer's own packages, which this venv does not have."""
    for module_name, module in fakes.items():
        monkeypatch.setitem(sys.modules, module_name, module)
    monkeypatch.syspath_prepend(str(PEER_SETUP))
    spec = importlib.util.spec_from_file_location(name, PEER_SETUP / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # not left in sys.modules, bound to the stand-ins
    spec.loader.exec_module(module)
    return module


def _fake(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def test_the_mlserver_runtime_loads_the_model_its_settings_name_and_answers_with_its_outputs(wide_model, monkeypatch):
    class MLModel:  # MLServer's base class: the model-settings.json it was given, and its name and version
        def __init__(self, settings):
            self.settings, self.name, self.version = settings, settings.name, settings.parameters.version

    class NumpyCodec:  # the request input already holds the array; an output is (name, array)
        decode_input = staticmethod(lambda request_input: request_input.data)
        encode_output = staticmethod(lambda name, array: (name, array))

    fakes = {"mlserver": _fake("mlserver", MLModel=MLModel), "mlserver.codecs": _fake("mlserver.codecs", NumpyCodec=NumpyCodec),
             "mlserver.types": _fake("mlserver.types", InferenceRequest=object, InferenceResponse=types.SimpleNamespace)}
    runtime = _peer_module("mlserver_runtime", monkeypatch, fakes)
    written = mlserver_model_settings(model_tensors(wide_model), wide_model, threads=1)
    settings = types.SimpleNamespace(name=written["name"], parameters=types.SimpleNamespace(
        uri=written["parameters"]["uri"], extra=written["parameters"]["extra"], version="1"))
    model = runtime.OnnxRuntimeModel(settings)
    assert asyncio.run(model.load()) is True
    assert model._session.get_session_options().intra_op_num_threads == 1
    images = random_images(3, height=6, width=10, channels=3)
    request = types.SimpleNamespace(inputs=[types.SimpleNamespace(data=images)])
    response = asyncio.run(model.predict(request))
    assert (response.model_name, response.model_version) == ("wide", "1")
    assert [name for name, _ in response.outputs] == ["logits", "probabilities"]
    reference = reference_outputs(wide_model, images)
    for name, array in response.outputs:
        np.testing.assert_allclose(array, reference[name], rtol=1e-5, atol=1e-6)


def test_the_triton_launcher_binds_the_config_it_is_given_and_infers_with_the_model(wide_model, tmp_path, monkeypatch):
    bound: dict = {}

    class Triton:  # pytriton's server: record what the launcher binds, and call its infer once while serving
        def __init__(self, config):
            bound["server"] = config

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, **kwargs):
            bound.update(kwargs)

        def serve(self):
            bound["answer"] = bound["infer_func"](images=bound["images"])

    def record(**kwargs):
        return kwargs

    fakes = {"pytriton": _fake("pytriton"), "pytriton.decorators": _fake("pytriton.decorators", batch=lambda f: f),
             "pytriton.model_config": _fake("pytriton.model_config", DynamicBatcher=record, ModelConfig=record,
                                            Tensor=record),
             "pytriton.triton": _fake("pytriton.triton", Triton=Triton, TritonConfig=record)}
    launcher = _peer_module("triton_launcher", monkeypatch, fakes)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(triton_launcher_config(model_tensors(wide_model), wide_model, 1, PORTS)))
    monkeypatch.setattr(sys, "argv", ["triton_launcher.py", str(config)])
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # leave this process's SIGTERM alone
    bound["images"] = random_images(2, height=6, width=10, channels=3)
    launcher.main()
    assert bound["server"] == dict(grpc_address="127.0.0.1", grpc_port=18001, http_address="127.0.0.1",
                                   http_port=18002, metrics_port=18003, exit_on_error=True)
    assert bound["model_name"] == "wide" and bound["strict"] is False
    assert bound["inputs"] == [dict(name="images", dtype=np.dtype("uint8"), shape=(6, 10, 3))]
    assert bound["outputs"] == [dict(name="logits", dtype=np.dtype("float32"), shape=(5,)),
                                dict(name="probabilities", dtype=np.dtype("float32"), shape=(5,))]
    assert bound["config"] == dict(max_batch_size=64, batcher=dict(max_queue_delay_microseconds=100))
    reference = reference_outputs(wide_model, bound["images"])
    assert sorted(bound["answer"]) == ["logits", "probabilities"]
    for name, array in bound["answer"].items():
        np.testing.assert_allclose(array, reference[name], rtol=1e-5, atol=1e-6)


def test_the_peers_session_is_set_up_as_edgecnn_serves(tiny_model):
    sys.path.insert(0, str(PEER_SETUP))
    try:
        from peer_session import open_session
    finally:
        sys.path.remove(str(PEER_SETUP))
    from edgecnn.serve.model import session_options

    theirs, ours = open_session(str(tiny_model), 0).get_session_options(), session_options(0)
    for name in ("intra_op_num_threads", "inter_op_num_threads", "execution_mode", "graph_optimization_level"):
        assert getattr(theirs, name) == getattr(ours, name), name
    spinning = "session.intra_op.allow_spinning"
    assert theirs.get_session_config_entry(spinning) == ours.get_session_config_entry(spinning) == "0"


def test_stopping_a_peer_leaves_none_of_its_process_group(tmp_path):
    # A leader whose background children ignore SIGINT, like a server's workers that outlive it.
    process = subprocess.Popen(["bash", "-c", "sleep 600 & sleep 600 & wait"], start_new_session=True)
    wait_until(lambda: len(live_group_members(process.pid)) == 3, what="the leader and both children running")
    stop_process_group(process, timeout_s=2.0, grace_s=0.5)
    # SIGKILL is delivered asynchronously; without it the children would outlive this deadline by minutes
    wait_until(lambda: live_group_members(process.pid) == [], timeout=60.0, what="the whole group gone")


def test_a_peer_that_exits_says_so_with_its_last_log_lines(tmp_path):
    command = [sys.executable, "-c", "print('address already in use'); raise SystemExit(3)"]
    with pytest.raises(RuntimeError, match=r"(?s)fake peer exited with code 3.*address already in use"):
        with peer_process("fake peer", command, dict(os.environ), tmp_path, free_port(), "tiny"):
            pass


def _figures(images: list[float], requests: list[float], p50: list[float], errors: Counter | None = None):
    return ServerFigures(images, requests, p50, errors or Counter())


def _floors() -> Floors:
    return Floors(inprocess_layout=["1 caller", "2 callers", "2 callers"], inprocess_images_per_s=[1000.0] * 3,
                  inprocess_p50_ms=[0.5] * 3, echo_requests_per_s=[2000.0] * 3, echo_p50_ms=[0.5] * 3)


def test_the_table_gives_the_median_ratio_and_the_worst_round_of_each_figure():
    figures = {"edgecnn serve": _figures([900.0, 800.0, 950.0], [1800.0, 1000.0, 1900.0], [1.0, 3.0, 1.2]),
               TRITON: _figures([500.0] * 3, [1500.0] * 3, [2.0] * 3)}
    table = peer_table(figures, _floors())
    ours = next(line for line in table.splitlines() if line.startswith("| edgecnn serve |"))
    cells = [c.strip() for c in ours.strip("|").split("|")]
    # images/s: median 900 -> 0.90x, worst round the lowest (0.80x); requests/s: 0.90x, worst 0.50x;
    # p50 against echo + in-process (1.0 ms): median 1.2 ms -> 1.20x, worst round the highest (3.00x)
    assert cells == ["edgecnn serve", "900", "0.90x", "0.80x", "1,800", "0.90x", "0.50x", "1.20", "1.20x", "3.00x"]
    assert len(table.splitlines()) == 4  # header, rule, one row per server


def test_a_round_without_answers_shows_n_a_not_a_flattering_median():
    figures = {MLSERVER: _figures([900.0, 0.0, 950.0], [1800.0, 0.0, 1900.0], [1.0, float("nan"), 1.2])}
    row = peer_table(figures, _floors()).splitlines()[-1]
    assert row.split("|")[8:11] == [" n/a ", " n/a ", " n/a "]  # p50: no answer in round 2
    assert " 0.00x |" in row  # throughput: the worst round answered nothing


def test_every_error_is_shown_per_server_and_the_floors_are_written_out():
    figures = {"edgecnn serve": _figures([1.0], [1.0], [1.0]),
               MLSERVER: _figures([1.0], [1.0], [1.0], Counter({"UNAVAILABLE": 3, "DEADLINE_EXCEEDED": 1}))}
    line = errors_line(figures, Floors(echo_errors=Counter({"INTERNAL": 2})))
    assert "edgecnn serve: none" in line
    assert f"{MLSERVER}: **DEADLINE_EXCEEDED 1**, **UNAVAILABLE 3**" in line
    assert "echo: **INTERNAL 2**" in line
    floors = floors_line(_floors())
    assert "1,000 images/s" in floors and "2 callers (2 of 3 rounds)" in floors and "2,000 requests/s" in floors


def _classes(path: Path) -> set[str]:
    return {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)}
