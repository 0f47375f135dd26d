"""Model lifecycle as Triton's: the repository index, explicit load/unload, polling, version policy,
config.json, reloads that drop nothing, and load/unload storms that leave nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from edgecnn.serve import lifecycle
from edgecnn.serve.client import InferenceClient
from edgecnn.serve.repository import ModelConfig, RepositoryError, VersionPolicy
from edgecnn.serve.server import start_server

from tests.helpers.models import random_images, reference_outputs, write_tiny_model
from tests.helpers.repositories import index_of, live_sessions, load, publish, unload
from tests.helpers.serving import settings_for, wait_until


def logits(client, name, version="", seed=3):
    images = random_images(2, seed=seed)
    result = client.infer(name, images, version=version)
    return result.model_version, result.outputs["logits"], images


# --- config.json and version policy (no server) --------------------------------------------------


@pytest.mark.parametrize("policy, expected", [
    ({"latest": {"num_versions": 2}}, ["3", "10"]),
    ({"all": {}}, ["1", "3", "10"]),
    ({"specific": {"versions": [1, 10]}}, ["1", "10"]),
])
def test_version_policies_choose_like_triton(policy, expected):
    assert VersionPolicy.from_json(policy, "config.json").select(["10", "1", "3"]) == expected
    assert VersionPolicy().select(["10", "1", "3"]) == ["10"]  # default: the latest one


@pytest.mark.parametrize("config, message", [
    ("{", "not readable JSON"),
    ('{"max_batch_size": 0}', "max_batch_size must be an integer from 1 to 4,096, got 0"),
    ('{"version_policy": {"newest": {}}}', "unknown version_policy 'newest'"),
    ('{"labels": []}', "labels must be a non-empty list"),
    ('{"batch": 4}', "unknown keys batch"),
])
def test_bad_config_json_is_one_sentence_naming_the_file(tmp_path, config, message):
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(RepositoryError, match=message) as error:
        ModelConfig.read(tmp_path)
    assert str(tmp_path / "config.json") in str(error.value)


def test_config_json_sets_policy_labels_and_batching(tmp_path):
    for version in ("1", "2", "3"):
        publish(tmp_path, "m", version, seed=int(version))
    (tmp_path / "m" / "config.json").write_text(json.dumps({
        "version_policy": {"latest": {"num_versions": 2}}, "labels": ["a", "b", "c"], "max_batch_size": 4}))
    with start_server(settings_for(tmp_path)) as running, InferenceClient(running.address) as client:
        assert list(client.model_metadata("m").versions) == ["2", "3"]
        result = client.infer("m", random_images(1), top_k=3)
        assert {c.label for c in result.top_k[0]} == {"a", "b", "c"}
        assert running.server.batchers["m", "3"]._max_batch_size == 4


# --- explicit control ----------------------------------------------------------------------------


@pytest.fixture
def repository(tmp_path):
    publish(tmp_path, "alpha", "1", seed=1)
    publish(tmp_path, "beta", "1", seed=2)
    return tmp_path


def test_explicit_mode_loads_what_it_is_told(repository):
    settings = settings_for(repository, model_control_mode="explicit", load_model=("alpha",))
    with start_server(settings) as running, InferenceClient(running.address) as client:
        stub = client.stub
        assert index_of(stub) == {("alpha", "1"): ("READY", "")}
        load(stub, "beta")
        assert logits(client, "beta")[0] == "1"
        unload(stub, "alpha")
        assert index_of(stub)[("alpha", "1")] == ("UNAVAILABLE", "unloaded")
        assert index_of(stub, ready=True) == {("beta", "1"): ("READY", "")}
        with pytest.raises(grpc.RpcError) as error:
            client.infer("alpha", random_images(1))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert "model_repository" in client.server_metadata().extensions


def test_explicit_load_of_a_broken_file_keeps_the_serving_version(repository):
    settings = settings_for(repository, model_control_mode="explicit", load_model=("alpha",))
    with start_server(settings) as running, InferenceClient(running.address) as client:
        before = logits(client, "alpha")
        (repository / "alpha" / "1" / "model.onnx").write_bytes(b"half a model")
        with pytest.raises(grpc.RpcError) as error:
            load(client.stub, "alpha")
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "load failed" in error.value.details()
        state, reason = index_of(client.stub)[("alpha", "1")]
        assert state == "READY" and "load failed" in reason and "previous file keeps serving" in reason
        np.testing.assert_array_equal(logits(client, "alpha")[1], before[1])


@pytest.mark.parametrize("name, code", [("nope", "NOT_FOUND"), ("../etc", "INVALID_ARGUMENT"), ("", "INVALID_ARGUMENT")])
def test_explicit_load_of_what_is_not_a_model_folder(repository, name, code):
    settings = settings_for(repository, model_control_mode="explicit")
    with start_server(settings) as running, InferenceClient(running.address) as client:
        with pytest.raises(grpc.RpcError) as error:
            load(client.stub, name)
        assert error.value.code() == getattr(grpc.StatusCode, code)


def test_load_and_unload_are_refused_unless_explicit(repository):
    with start_server(settings_for(repository)) as running, InferenceClient(running.address) as client:
        for call in (load, unload):
            with pytest.raises(grpc.RpcError) as error:
                call(client.stub, "alpha")
            assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "--model-control-mode explicit" in error.value.details()


def test_control_modes_need_a_repository(tmp_path):
    model = write_tiny_model(tmp_path / "one.onnx")
    with pytest.raises(ValueError, match="needs a repository folder"):
        start_server(settings_for(model, model_control_mode="poll"))


# --- polling -------------------------------------------------------------------------------------


def test_poll_picks_up_a_new_version_a_removed_one_and_survives_a_broken_file(repository):
    settings = settings_for(repository, model_control_mode="poll", repository_poll_s=0.05)
    with start_server(settings) as running, InferenceClient(running.address) as client:
        stub = client.stub
        two = publish(repository, "alpha", "2", seed=22)
        wait_until(lambda: index_of(stub).get(("alpha", "2"), ("",))[0] == "READY", what="version 2 loaded")
        version, out, images = logits(client, "alpha")
        assert version == "2"  # the latest one, as the default policy says
        np.testing.assert_allclose(out, reference_outputs(two, images)["logits"], rtol=1e-6)
        assert ("alpha", "1") not in index_of(stub)  # latest 1: version 1 went

        publish(repository, "alpha", "3", seed=33)
        (repository / "alpha" / "3" / "model.onnx").write_bytes(b"broken")  # a bad publish
        wait_until(lambda: index_of(stub).get(("alpha", "3"), ("",))[0] == "UNAVAILABLE", what="3 refused")
        assert "load failed" in index_of(stub)[("alpha", "3")][1]
        assert index_of(stub)[("alpha", "2")] == ("READY", "")  # the broken latest replaces nothing
        assert logits(client, "alpha")[0] == "2"

        shutil.rmtree(repository / "beta")
        wait_until(lambda: ("beta", "1") not in index_of(stub), what="beta unloaded")
        with pytest.raises(grpc.RpcError) as error:
            client.infer("beta", random_images(1))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_poll_replaces_a_changed_file_and_keeps_serving_the_old_one_when_the_new_is_broken(repository):
    settings = settings_for(repository, model_control_mode="poll", repository_poll_s=0.05)
    with start_server(settings) as running, InferenceClient(running.address) as client:
        stub = client.stub
        _, old, images = logits(client, "beta")
        publish(repository, "beta", ".swap", seed=99)  # lands as a hidden folder: never read
        os.replace(repository / "beta" / ".swap" / "model.onnx", repository / "beta" / "1" / "model.onnx")
        new_file = repository / "beta" / "1" / "model.onnx"
        expected = reference_outputs(new_file, images)["logits"]
        wait_until(lambda: np.allclose(client.infer("beta", images).outputs["logits"], expected, rtol=1e-6),
                   what="the changed file served")
        new_file.write_bytes(b"truncated")
        wait_until(lambda: "load failed" in index_of(stub).get(("beta", "1"), ("", ""))[1], what="broken noticed")
        assert index_of(stub)[("beta", "1")][0] == "READY"
        np.testing.assert_allclose(client.infer("beta", images).outputs["logits"], expected, rtol=1e-6)
        assert not np.allclose(old, expected)


# --- reloads under load, and storms ---------------------------------------------------------------


def test_reloads_under_load_fail_no_request(repository, monkeypatch):
    settings = settings_for(repository, model_control_mode="explicit", load_model=("alpha",))
    failures: list[str] = []
    answered: list[str] = []  # the version that answered each request, in order
    during_reloads: list[set[str]] = []  # the versions that answered while each reload was loading its file
    stop = threading.Event()
    with start_server(settings) as running:
        def caller():
            with InferenceClient(running.address) as client:
                while not stop.is_set():
                    try:
                        answered.append(client.infer("alpha", random_images(1)).model_version)
                    except grpc.RpcError as error:
                        failures.append(error.code().name)

        real_load_model = lifecycle.load_model

        def load_model_while_serving(*args, **kwargs):
            # Each reload holds its new file until 8 more requests are answered: they overlap the reload.
            before = len(answered)
            model = real_load_model(*args, **kwargs)
            wait_until(lambda: len(answered) >= before + 8, timeout=60.0, what="requests answered during a reload")
            during_reloads.append(set(answered[before:]))
            return model

        monkeypatch.setattr(lifecycle, "load_model", load_model_while_serving)  # after alpha/1 loaded at start
        threads = [threading.Thread(target=caller) for _ in range(8)]
        for thread in threads:
            thread.start()
        with InferenceClient(running.address) as admin:
            for round_ in range(10):
                publish(repository, "alpha", str(2 + round_), seed=round_)
                load(admin.stub, "alpha")
        stop.set()
        for thread in threads:
            thread.join()
        assert failures == []
        # while version N + 1 loaded, version N answered (and none yet of the one loading)
        assert [max(versions, key=int) for versions in during_reloads] == [str(v) for v in range(1, 11)]
        assert set(running.server.models.versions("alpha")) == {"11"}


def _threads(prefix: str) -> int:
    return sum(t.name.startswith(prefix) for t in threading.enumerate())


def test_32_threads_x_100_load_unload_cycles_leave_a_consistent_index_and_nothing_behind(repository):
    settings = settings_for(repository, model_control_mode="explicit", load_model=("alpha",), metrics=False)
    with start_server(settings) as running, InferenceClient(running.address, timeout=120) as client:
        compute_before, sessions_before = _threads("edgecnn-compute"), live_sessions()

        def cycles(worker: int) -> list[str]:
            errors = []
            for i in range(100):
                name = "beta" if (worker + i) % 2 else "alpha"
                try:
                    (load if (worker * 7 + i) % 3 else unload)(client.stub, name)
                except grpc.RpcError as error:
                    errors.append(f"{error.code().name}: {error.details()}")
            return errors

        with ThreadPoolExecutor(32) as pool:
            errors = [e for result in pool.map(cycles, range(32)) for e in result]
        assert errors == []
        for name in ("alpha", "beta"):  # end in a known state: both loaded
            load(client.stub, name)
        assert index_of(client.stub) == {("alpha", "1"): ("READY", ""), ("beta", "1"): ("READY", "")}
        assert sorted(running.server.models.batchers()) == [("alpha", "1"), ("beta", "1")]
        assert logits(client, "alpha")[0] == logits(client, "beta")[0] == "1"
        wait_until(lambda: _threads("edgecnn-compute") == compute_before + 1, what="retired compute threads gone")
        wait_until(lambda: live_sessions() == sessions_before + 1, what="only beta's session added")


# --- Triton's client, unchanged -------------------------------------------------------------------


TRITON = """
import json, sys
import tritonclient.grpc as tc
client = tc.InferenceServerClient(sys.argv[1])
out = {"before": sorted((m.name, m.version, m.state) for m in client.get_model_repository_index().models)}
client.load_model("beta")
out["beta_ready"] = client.is_model_ready("beta")
client.unload_model("alpha")
out["after"] = sorted((m.name, m.version, m.state) for m in client.get_model_repository_index().models)
out["alpha_ready"] = client.is_model_ready("alpha")
out["extensions"] = list(client.get_server_metadata().extensions)
print(json.dumps(out))
"""


def test_tritonclient_repository_calls_work_unchanged(repository):
    settings = settings_for(repository, model_control_mode="explicit", load_model=("alpha",))
    with start_server(settings) as running:
        done = subprocess.run([sys.executable, "-c", TRITON, running.address], capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["before"] == [["alpha", "1", "READY"]]
    assert out["beta_ready"] is True and out["alpha_ready"] is False
    assert out["after"] == [["alpha", "1", "UNAVAILABLE"], ["beta", "1", "READY"]]
    assert "model_repository" in out["extensions"]


def test_each_model_has_a_health_status_of_its_own(repository):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    settings = settings_for(repository, model_control_mode="explicit", load_model=("alpha",))
    with start_server(settings) as running, InferenceClient(running.address) as client:
        health = health_pb2_grpc.HealthStub(client.channel)

        def status(service):
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        assert status("alpha") == serving
        load(client.stub, "beta")
        wait_until(lambda: status("beta") == serving, what="beta healthy")
        unload(client.stub, "alpha")
        wait_until(lambda: status("alpha") == not_serving, what="alpha not serving")
        assert status("inference.GRPCInferenceService") == serving
