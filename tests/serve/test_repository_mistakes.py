"""Repository mistakes are never silent: each folder or file that serves nothing gets a log line (once)
and a RepositoryIndex entry saying why, in every control mode; a repository that serves nothing, or a
folder that is not a repository (an export folder, one model's folder), is one sentence at start."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import grpc
import pytest
from edgecnn.serve.client import InferenceClient
from edgecnn.serve.repository import RepositoryError, read_model_folder
from edgecnn.serve.server import start_server

from tests.helpers.models import random_images, write_tiny_model
from tests.helpers.repositories import index_of, load, publish
from tests.helpers.serving import settings_for, wait_until

UNAVAILABLE = "UNAVAILABLE"

# Each mistake a newcomer makes: (where the model file is put, the index row, what its reason says).
MISTAKES = {
    "int8 file name": ("int8/1/model.int8.onnx", ("int8", "1"),
                       "int8/1: holds model.int8.onnx but no model.onnx (rename it to model.onnx)"),
    "fp16 file name": ("fp16/1/model.fp16.onnx", ("fp16", "1"), "holds model.fp16.onnx but no model.onnx"),
    "other file name": ("other/3/resnet.onnx", ("other", "3"), "holds resnet.onnx but no model.onnx"),
    "no version folder": ("flat/model.onnx", ("flat", ""),
                          "flat: model.onnx is not in a version folder (move it to {root}/flat/1/model.onnx)"),
    "version v1": ("named/v1/model.onnx", ("named", "v1"),
                   "named/v1: 'v1' is not a version, version folders are positive integers as in Triton "
                   "(rename it to {root}/named/1)"),
    "version latest": ("latest/latest/model.onnx", ("latest", "latest"), "(rename it to {root}/latest/1)"),
    "version 0": ("zero/0/model.onnx", ("zero", "0"), "'0' is not a version"),
    "version 01": ("padded/01/model.onnx", ("padded", "01"), "'01' is not a version"),
}


def make_mistake(root, case):
    where, _, _ = MISTAKES[case]
    write_tiny_model(root / where, name="exported", version="1")


def reason_of(root, case):
    return MISTAKES[case][2].format(root=root)


def mistake_logs(caplog) -> list[tuple[str, str, str]]:
    return [(r.model, r.version, r.error) for r in caplog.records if r.getMessage() == "repository entry not served"]


# --- what a model folder holds (no server) ---------------------------------------------------------------


@pytest.mark.parametrize("case", MISTAKES)
def test_each_mistake_is_found_with_its_reason(tmp_path, case):
    make_mistake(tmp_path, case)
    name, version = MISTAKES[case][1]
    files, problems = read_model_folder(tmp_path / name)
    assert files == []
    assert list(problems) == [version]
    assert reason_of(tmp_path, case) in problems[version], problems[version]
    assert problems[version].startswith(str(tmp_path / name))  # every reason names the folder


def test_a_model_folder_with_no_version_at_all(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text("{}")
    for name in ("empty", "config-only"):
        assert read_model_folder(tmp_path / name) == ([], {"": f"{tmp_path / name}: holds no version folder "
                                                              f"(put the model at {tmp_path / name}/1/model.onnx)"})


def test_an_empty_version_folder_and_a_model_onnx_that_is_not_a_file(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "2" / "model.onnx").mkdir(parents=True)
    _, problems = read_model_folder(tmp_path / "m")
    assert problems == {"1": f"{tmp_path / 'm' / '1'}: holds no model.onnx",
                        "2": f"{tmp_path / 'm' / '2' / 'model.onnx'}: is not a regular file"}


def test_a_publish_under_way_is_no_mistake(tmp_path):
    (tmp_path / "m" / ".1.tmp").mkdir(parents=True)  # the safe publish: written hidden, renamed in
    assert read_model_folder(tmp_path / "m") == ([], {})
    publish(tmp_path, "m", "1")
    publish(tmp_path, "m", ".2")
    files, problems = read_model_folder(tmp_path / "m")
    assert [version for version, _, _ in files] == ["1"] and problems == {}


def test_a_misnamed_folder_beside_good_versions_suggests_a_free_version(tmp_path):
    publish(tmp_path, "m", "1")
    publish(tmp_path, "m", "2")
    write_tiny_model(tmp_path / "m" / "v2" / "model.onnx")
    write_tiny_model(tmp_path / "m" / "model.onnx")
    files, problems = read_model_folder(tmp_path / "m")
    assert [version for version, _, _ in files] == ["1", "2"]
    assert problems["v2"].endswith(f"(rename it to {tmp_path / 'm' / '3'})")
    assert problems[""].endswith(f"(move it to {tmp_path / 'm' / '3' / 'model.onnx'})")


# --- at start ----------------------------------------------------------------------------------------------


def test_a_repository_that_serves_nothing_fails_at_start_listing_why(tmp_path):
    cases = ["int8 file name", "no version folder", "version v1"]
    for case in cases:
        make_mistake(tmp_path, case)
    with pytest.raises(RepositoryError) as error:
        start_server(settings_for(tmp_path, metrics=False))
    message = str(error.value)
    assert message.startswith(f"{tmp_path} holds no model to serve (NAME/VERSION/model.onnx): "), message
    for case in cases:
        assert reason_of(tmp_path, case) in message, message


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_good_models_serve_beside_broken_ones_which_are_logged_and_indexed(tmp_path, caplog, mode):
    publish(tmp_path, "good", "1")
    for case in MISTAKES:
        make_mistake(tmp_path, case)
    (tmp_path / "empty").mkdir()
    caplog.set_level(logging.INFO, logger="edgecnn")
    with start_server(settings_for(tmp_path, metrics=False, model_control_mode=mode)) as running, \
            InferenceClient(running.address) as client:
        index = index_of(client.stub)
        assert index.pop(("good", "1")) == ("READY", "")
        assert client.infer("good", random_images(1)).model_name == "good"
        expected = {row: reason for row, reason in ((MISTAKES[c][1], reason_of(tmp_path, c)) for c in MISTAKES)}
        expected["empty", ""] = "holds no version folder"
        assert set(index) == set(expected)
        for row, (state, reason) in index.items():
            assert state == UNAVAILABLE and expected[row] in reason, (row, reason)
        with pytest.raises(grpc.RpcError) as error:  # "v1" is no version: nothing serves under it
            client.infer("named", random_images(1), version="v1")
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    logged = mistake_logs(caplog)
    assert sorted((m, v) for m, v, _ in logged) == sorted(expected)


def test_what_used_to_serve_as_version_v1_no_longer_does(tmp_path):
    publish(tmp_path, "good", "1")
    write_tiny_model(tmp_path / "named" / "v1" / "model.onnx", name="named", version="v1")
    with start_server(settings_for(tmp_path, metrics=False)) as running:
        assert running.server.models.names() == ["good"]


def run_serve(folder):
    command = [sys.executable, "-c", "from edgecnn.serve.cli import main; main()", "serve", str(folder),
               "--port", "0", "--metrics-port", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_serve_of_a_broken_repository_is_one_line_naming_each_mistake(tmp_path):
    make_mistake(tmp_path, "int8 file name")
    make_mistake(tmp_path, "version latest")
    line = run_serve(tmp_path)
    assert line == (f"error: {tmp_path} holds no model to serve (NAME/VERSION/model.onnx): "
                    f"{tmp_path}/int8/1: holds model.int8.onnx but no model.onnx (rename it to model.onnx); "
                    f"{tmp_path}/latest/latest: 'latest' is not a version, version folders are positive integers "
                    f"as in Triton (rename it to {tmp_path}/latest/1)")


def test_serve_of_an_export_folder_suggests_its_files(tmp_path):
    export = tmp_path / "runs-export"
    write_tiny_model(export / "model.onnx")
    write_tiny_model(export / "model.int8.onnx")
    (export / "report.json").write_text("{}")
    (export / "report.md").write_text("# report\n")
    assert run_serve(export) == (f"error: {export} is an export folder, not a repository: serve "
                                 f"{export}/model.int8.onnx (or model.onnx), or make it a repository entry: "
                                 "NAME/1/model.onnx")


def test_serve_of_a_folder_of_model_files_suggests_them(tmp_path):
    write_tiny_model(tmp_path / "mine.onnx")
    assert run_serve(tmp_path) == (f"error: {tmp_path} is a folder of model files, not a repository: serve "
                                   f"{tmp_path}/mine.onnx, or make it a repository entry: NAME/1/model.onnx")


def test_serve_of_one_models_folder_suggests_the_repository_above_it(tmp_path):
    publish(tmp_path, "fashion", "1")
    assert run_serve(tmp_path / "fashion") == (f"error: {tmp_path / 'fashion'} is one model's folder "
                                               f"(VERSION/model.onnx), not a repository: serve the folder above it, "
                                               f"{tmp_path.resolve()}")


# --- poll mode -----------------------------------------------------------------------------------------------


def test_poll_indexes_and_logs_each_mistake_once_and_forgets_it_once_fixed(tmp_path, caplog):
    publish(tmp_path, "good", "1")
    caplog.set_level(logging.INFO, logger="edgecnn")
    settings = settings_for(tmp_path, metrics=False, model_control_mode="poll", repository_poll_s=0.05)
    with start_server(settings) as running, InferenceClient(running.address) as client:
        stub = client.stub
        for case in ("int8 file name", "no version folder", "version v1"):
            make_mistake(tmp_path, case)
        rows = {MISTAKES[c][1]: reason_of(tmp_path, c) for c in ("int8 file name", "no version folder", "version v1")}

        def indexed():
            index = index_of(stub)
            return all(index.get(row, ("", ""))[0] == UNAVAILABLE and reason in index[row][1]
                       for row, reason in rows.items())

        wait_until(indexed, what="each mistake in the index")
        # Fixed the way its reason says: the file renamed, the folder renamed. Loading them takes two more
        # scans (a file is loaded once it stands still), so by then the others were scanned again too.
        os.replace(tmp_path / "int8" / "1" / "model.int8.onnx", tmp_path / "int8" / "1" / "model.onnx")
        os.replace(tmp_path / "named" / "v1", tmp_path / "named" / "1")
        wait_until(lambda: index_of(stub).get(("int8", "1")) == ("READY", "")
                   and index_of(stub).get(("named", "1")) == ("READY", ""), what="the fixed ones served")
        assert ("named", "v1") not in index_of(stub)
        assert index_of(stub)["flat", ""][0] == UNAVAILABLE  # still there, still said
        logged = mistake_logs(caplog)
        assert sorted((m, v) for m, v, _ in logged) == sorted(rows)  # each once, not once a poll
        assert all(rows[m, v] in reason for m, v, reason in logged)

        # A whole folder removed: its row goes with it.
        (tmp_path / "flat" / "model.onnx").unlink()
        (tmp_path / "flat").rmdir()
        wait_until(lambda: ("flat", "") not in index_of(stub), what="the removed folder forgotten")


def test_poll_indexes_a_served_version_renamed_to_a_mistake(tmp_path):
    publish(tmp_path, "m", "1")
    publish(tmp_path, "other", "1")
    settings = settings_for(tmp_path, metrics=False, model_control_mode="poll", repository_poll_s=0.05)
    with start_server(settings) as running, InferenceClient(running.address) as client:
        os.replace(tmp_path / "m" / "1" / "model.onnx", tmp_path / "m" / "1" / "model.int8.onnx")
        wait_until(lambda: index_of(client.stub).get(("m", "1"), ("",))[0] == UNAVAILABLE, what="m/1 refused")
        assert "(rename it to model.onnx)" in index_of(client.stub)["m", "1"][1]
        assert not client.model_ready("m")


# --- explicit mode ---------------------------------------------------------------------------------------------


def test_explicit_load_of_a_broken_folder_says_why(tmp_path):
    publish(tmp_path, "good", "1")
    make_mistake(tmp_path, "fp16 file name")
    settings = settings_for(tmp_path, metrics=False, model_control_mode="explicit", load_model=("good",))
    with start_server(settings) as running, InferenceClient(running.address) as client:
        with pytest.raises(grpc.RpcError) as error:
            load(client.stub, "fp16")
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error.value.details() == (f"model 'fp16' could not be loaded: no version of it to serve: "
                                         f"{tmp_path}/fp16/1: holds model.fp16.onnx but no model.onnx "
                                         "(rename it to model.onnx)")
        state, reason = index_of(client.stub)["fp16", "1"]
        assert state == UNAVAILABLE and "holds model.fp16.onnx but no model.onnx" in reason


def test_explicit_load_model_at_start_of_a_broken_folder_says_why(tmp_path):
    make_mistake(tmp_path, "version latest")
    settings = settings_for(tmp_path, metrics=False, model_control_mode="explicit", load_model=("latest",))
    with pytest.raises(ValueError, match=r"^--load-model latest: no version of it to serve: .*'latest' is not a "
                                         r"version"):
        start_server(settings)
