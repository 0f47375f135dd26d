"""A model's config.json and the model-control RPCs are untrusted input.

Every hostile config.json value and every parse failure is refused through the real load path (the
explicit-mode RepositoryModelLoad RPC) with one sentence naming the file, the key and the allowed
range, and the repository index says the same; 100 refused loads leave no thread, session or memory
behind; model names of any length or content get a precise status in load, unload, infer, metadata
and ready; and a model loaded after start whose largest request would not fit the receive limit
derived at start is refused at load, naming --max-message-bytes.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.serve.client import InferenceClient
from edgecnn.serve.server import start_server

from tests.helpers.models import random_images
from tests.helpers.repositories import index_of, live_sessions, load, publish, unload
from tests.helpers.serving import settings_for, wait_until

FAILED = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
BROKEN = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


def refusal(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call(*args, **kwargs)
    return error.value.code(), error.value.details() or ""


# --- the config table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    config: str | bytes | None  # None: config.json is made by ``make`` instead
    fragment: str  # in the status details and the index row
    make: str = ""  # "fifo" | "folder"


def _nested(depth: int) -> str:
    return '{"labels": ' + "[" * depth + '"a"' + "]" * depth + "}"


NUMBER_RANGE = {
    "instances": "instances must be an integer from 0 to 64 (0: automatic)",
    "max_batch_size": "max_batch_size must be an integer from 1 to 4,096",
    "max_queue_delay_us": "max_queue_delay_us must be an integer from 0 to 10,000,000",
    "max_queue_size": "max_queue_size must be an integer from 1 to 65,536",
}
SPECIFIC = "each version is an integer from 1 to 9,223,372,036,854,775,807"

CONFIGS = {
    # Each number: too small, too large, and every JSON type that is not an integer (true is not 1).
    **{f"{key} {value}": Row(json.dumps({key: value}), f"{NUMBER_RANGE[key]}, got {value}")
       for key, values in {
           "instances": [-1, 65, 100_000, 10**30],
           "max_batch_size": [0, 4097, 10**9],
           "max_queue_delay_us": [-1, 10**7 + 1, 10**12],
           "max_queue_size": [0, 65_537],
       }.items() for value in values},
    **{f"{key} as {kind}": Row(f'{{"{key}": {text}}}', f"{NUMBER_RANGE[key]}, got {shown}")
       for key in NUMBER_RANGE
       for kind, text, shown in [("true", "true", "True"), ("a string", '"2"', "'2'"), ("a float", "2.0", "2.0"),
                                 ("null", "null", "None"), ("a list", "[2]", "[2]")]},
    # version_policy: its shape, its count, each version.
    "policy not an object": Row('{"version_policy": "latest"}', "version_policy is one of"),
    "two policies": Row('{"version_policy": {"all": {}, "latest": {}}}', "version_policy is one of"),
    "unknown policy": Row('{"version_policy": {"newest": {}}}', "unknown version_policy 'newest'"),
    "policy body a list": Row('{"version_policy": {"latest": [1]}}', "version_policy.latest must be an object"),
    "policy body unknown key": Row('{"version_policy": {"all": {"x": 1}}}', "version_policy.all must be an object"),
    "num_versions 0": Row('{"version_policy": {"latest": {"num_versions": 0}}}',
                          "version_policy.latest.num_versions must be an integer from 1 to 1,000, got 0"),
    "num_versions huge": Row('{"version_policy": {"latest": {"num_versions": 1000000}}}',
                             "num_versions must be an integer from 1 to 1,000, got 1000000"),
    "num_versions true": Row('{"version_policy": {"latest": {"num_versions": true}}}', "got True"),
    "versions empty": Row('{"version_policy": {"specific": {"versions": []}}}',
                          "versions must be a list of 1 to 1000 versions"),
    "versions 1001": Row(json.dumps({"version_policy": {"specific": {"versions": list(range(1, 1002))}}}),
                         "versions must be a list of 1 to 1000 versions"),
    "versions not a list": Row('{"version_policy": {"specific": {"versions": "1"}}}', "must be a list"),
    "version 0": Row('{"version_policy": {"specific": {"versions": [0]}}}', f"holds 0; {SPECIFIC}"),
    "version negative": Row('{"version_policy": {"specific": {"versions": [-3]}}}', f"holds -3; {SPECIFIC}"),
    "version over int64": Row(f'{{"version_policy": {{"specific": {{"versions": [{2**63}]}}}}}}', SPECIFIC),
    "version not digits": Row('{"version_policy": {"specific": {"versions": ["1a"]}}}', f"holds '1a'; {SPECIFIC}"),
    "version superscript": Row('{"version_policy": {"specific": {"versions": ["\\u00b2"]}}}', SPECIFIC),
    "version true": Row('{"version_policy": {"specific": {"versions": [true]}}}', f"holds True; {SPECIFIC}"),
    "version a float": Row('{"version_policy": {"specific": {"versions": [1.5]}}}', f"holds 1.5; {SPECIFIC}"),
    # labels, keys, the top level.
    "labels empty": Row('{"labels": []}', "labels must be a non-empty list of strings"),
    "labels not strings": Row('{"labels": [1, 2, 3]}', "labels must be a non-empty list of strings"),
    "unknown key": Row('{"batch": 4}', "unknown keys batch; known: version_policy, max_batch_size"),
    "duplicate key": Row('{"instances": 1, "instances": 100000}', "key 'instances' appears twice"),
    "duplicate nested key": Row('{"version_policy": {"all": {}, "all": {}}}', "key 'all' appears twice"),
    "top level a list": Row("[1]", "must hold a JSON object"),
    "top level null": Row("null", "must hold a JSON object"),
    # Parse failures: each is the file's fault, said in one sentence.
    "truncated": Row('{"instances": ', "not readable JSON"),
    "empty file": Row("", "not readable JSON"),
    "NaN": Row('{"max_queue_delay_us": NaN}', "not readable JSON (NaN is not a JSON number)"),
    "Infinity": Row('{"max_queue_delay_us": -Infinity}', "-Infinity is not a JSON number"),
    "5,000 digits": Row('{"instances": ' + "9" * 5000 + "}", "not readable JSON (Exceeds the limit"),
    "not UTF-8": Row(b'{"labels": ["\xff"]}', "not UTF-8"),
    "byte order mark": Row(b"\xef\xbb\xbf{}", "not readable JSON"),
    "nested 9 deep": Row(_nested(8), "nests 9 deep; a config.json nests at most 8 deep"),
    "nested 30,000 deep": Row(_nested(30_000), "nests 30001 deep; a config.json nests at most 8 deep"),
    "64 KiB + 1": Row('{"labels": ["' + "a" * (64 * 1024 - 15) + '"]}', "larger than 65,536 bytes"),
    "10 MB": Row(" " * 10_000_000, "larger than 65,536 bytes"),
    "a FIFO": Row(None, "is not a regular file", make="fifo"),
    "a folder": Row(None, "cannot be read (Is a directory)", make="folder"),
}


def write_config(folder: Path, row: Row) -> None:
    path = folder / "config.json"
    if row.make == "fifo":
        os.mkfifo(path)  # opened for reading it would block the load for good: it must never be
    elif row.make == "folder":
        path.mkdir()
    else:
        path.write_bytes(row.config if isinstance(row.config, bytes) else row.config.encode())


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    publish(root, "alpha", "1", seed=1)
    publish(root, "beta", "1", seed=2)
    return root


@pytest.fixture(scope="module")
def running(repository):
    settings = settings_for(repository, model_control_mode="explicit", load_model=("alpha", "beta"), metrics=False)
    with start_server(settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(running):
    with InferenceClient(running.address, timeout=30) as client:
        yield client


def test_the_config_table_covers_every_key():
    from edgecnn.serve.repository import ModelConfig

    assert set(NUMBER_RANGE) | {"version_policy", "labels"} == set(ModelConfig.FIELDS)


@pytest.mark.parametrize("case", CONFIGS)
def test_hostile_config_json_is_refused_at_load_with_its_sentence(repository, running, client, case):
    row = CONFIGS[case]
    name = "config-" + case.replace(" ", "-").replace(",", "")
    publish(repository, name, "1")
    write_config(repository / name, row)
    threads = _threads()
    code, details = refusal(load, client.stub, name)
    assert (code, row.fragment in details) == (FAILED, True), f"{code.name}: {details[:500]}"
    config = str(repository / name / "config.json")
    assert details.startswith(f"model '{name}' could not be loaded: {config}: "), details[:500]
    state, reason = index_of(client.stub)[name, "1"]  # the version on disk says why it does not serve
    assert state == "UNAVAILABLE" and reason.startswith(config) and row.fragment in reason, reason
    assert not client.model_ready(name)
    assert _threads() == threads  # nothing was started for it
    assert client.infer("alpha", random_images(1)).model_name == "alpha"


def test_a_config_json_at_the_caps_loads(repository, running, client):
    publish(repository, "at-the-caps", "7")
    (repository / "at-the-caps" / "config.json").write_text(json.dumps({
        "version_policy": {"specific": {"versions": [7, "9223372036854775807"]}}, "instances": 64,
        "max_batch_size": 4096, "max_queue_delay_us": 10_000_000, "max_queue_size": 65_536}))
    load(client.stub, "at-the-caps")
    assert index_of(client.stub)["at-the-caps", "7"] == ("READY", "")
    batcher = running.server.batchers["at-the-caps", "7"]
    assert (len(batcher._threads), batcher._max_batch_size, batcher._max_queue_size) == (64, 4096, 65_536)
    unload(client.stub, "at-the-caps")
    wait_until(lambda: not any(t.is_alive() for t in batcher._threads), what="its 64 compute threads ended")


def test_a_server_flag_over_a_cap_raises_that_cap(tmp_path):
    publish(tmp_path, "m", "1")
    (tmp_path / "m" / "config.json").write_text('{"max_batch_size": 5000}')
    with start_server(settings_for(tmp_path, max_batch_size=8192, metrics=False)) as running:
        assert running.server.batchers["m", "1"]._max_batch_size == 5000
    (tmp_path / "m" / "config.json").write_text('{"max_batch_size": 8193}')
    with pytest.raises(ValueError, match="max_batch_size must be an integer from 1 to 8,192, got 8193"):
        start_server(settings_for(tmp_path, max_batch_size=8192, metrics=False))


# --- refused loads leave nothing behind ------------------------------------------------------------


def _threads() -> int:
    """Threads of this process but the event loops' to_thread() pools: those grow to their bound as
    they please (a task can be handed over before the last one's thread says it is idle)."""
    return sum(not t.name.startswith("asyncio_") for t in threading.enumerate())


def _rss_kb() -> int:
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)  # freed heap back to the system, as the server's idle trimmer does
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


LEAK_KINDS = ("hostile instances", "hostile max_batch_size", "nested", "too large", "duplicate key",
              "broken model file", "too big for the receive limit")
REFUSED_LOADS = 100
WARM_UP_LOADS = 50
RSS_GROWTH_KB = 4 * 1024


def test_100_refused_loads_leave_no_thread_session_or_memory_behind(tmp_path):
    configs = {"hostile instances": '{"instances": 100000}', "hostile max_batch_size": '{"max_batch_size": 10000000}',
               "nested": _nested(30_000), "too large": " " * 100_000,
               "duplicate key": '{"instances": 1, "instances": 2}'}
    for kind in LEAK_KINDS:
        if kind == "too big for the receive limit":  # 64 images of 256x256 > the 4 MiB derived from alpha's
            publish(tmp_path, kind, "1", height=256, width=256)
        else:
            publish(tmp_path, kind, "1")
        if kind in configs:
            (tmp_path / kind / "config.json").write_text(configs[kind])
    (tmp_path / "broken model file" / "1" / "model.onnx").write_bytes(b"half a model")
    publish(tmp_path, "alpha", "1")
    settings = settings_for(tmp_path, model_control_mode="explicit", load_model=("alpha",), metrics=False,
                            max_message_bytes=0, max_request_images=64)
    with start_server(settings) as running, InferenceClient(running.address, timeout=60) as client:
        def refuse_loads(count: int) -> set[str]:
            codes = set()
            for i in range(count):
                codes.add(refusal(load, client.stub, LEAK_KINDS[i % len(LEAK_KINDS)])[0].name)
            return codes

        # Warm-up: the first few dozen calls grow Python's and gRPC's pools by ~0.7 MB, then it stays.
        assert refuse_loads(WARM_UP_LOADS) == {"FAILED_PRECONDITION"}
        threads, sessions, rss = _threads(), live_sessions(), _rss_kb()
        assert refuse_loads(REFUSED_LOADS) == {"FAILED_PRECONDITION"}
        # What each check catches (measured here): the unbounded instances=100000 load of the probe
        # left every thread it had started (23,000, 666 MB); a batcher of 64 threads left by each of
        # the 14 hostile-instances loads would be ~900 threads more and ~19 MB (21 kB a thread); a
        # session left per refused load is one more session each (131 kB of RSS each for the 256x256
        # model). The RSS bound catches any other leak of 40 kB a load; this run grows by ~0.1 MB.
        assert _threads() == threads
        assert live_sessions() == sessions
        growth = _rss_kb() - rss
        assert growth < RSS_GROWTH_KB, f"VmRSS grew {growth:,} kB over {REFUSED_LOADS} refused loads"
        for kind in LEAK_KINDS:
            assert index_of(client.stub)[kind, "1"][0] == "UNAVAILABLE"
        assert client.infer("alpha", random_images(1)).model_name == "alpha"


def test_a_batcher_that_cannot_start_all_its_threads_stops_those_it_started(repository, running, client, monkeypatch):
    """As when the process runs out of threads: the load fails, and the compute threads already
    started end instead of waiting for work for good."""
    publish(repository, "threads-run-out", "1")
    (repository / "threads-run-out" / "config.json").write_text('{"instances": 8}')
    started: list[threading.Thread] = []
    start = threading.Thread.start

    def start_five(thread: threading.Thread) -> None:
        if thread.name.startswith("edgecnn-compute-threads-run-out"):
            if len(started) == 5:
                raise RuntimeError("can't start new thread")
            started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_five)
    threads = _threads()
    code, details = refusal(load, client.stub, "threads-run-out")
    assert code == FAILED and "load failed: RuntimeError: can't start new thread" in details, details
    assert len(started) == 5 and not any(thread.is_alive() for thread in started)
    assert _threads() == threads
    assert index_of(client.stub)["threads-run-out", "1"][0] == "UNAVAILABLE"
    assert client.infer("alpha", random_images(1)).model_name == "alpha"


# --- model names of any length or content ----------------------------------------------------------


# name: (what RepositoryModelLoad and RepositoryModelUnload answer, in the load's details)
ODD_NAMES = {
    "empty": ("", INVALID, "'' is not a model folder name: it is empty"),
    "10,000 characters": ("m" * 10_000, INVALID, "(10,002 characters) is not a model folder name: it is longer"),
    "256 bytes": ("m" * 256, INVALID, "it is longer than 255 bytes"),
    "255 bytes": ("m" * 255, NOT_FOUND, "the repository has no model folder"),
    "86 CJK characters, 258 bytes": ("模" * 86, INVALID, "it is longer than 255 bytes"),
    "NUL": ("al\x00pha", INVALID, "'al\\x00pha' is not a model folder name: it holds a path separator or a NUL"),
    "slash": ("alpha/1", INVALID, "holds a path separator"),
    "absolute": ("/etc", INVALID, "holds a path separator"),
    "dot dot": ("..", INVALID, "it starts with a dot"),
    "dot dot slash": ("../alpha", INVALID, "it starts with a dot"),
    "dot": (".", INVALID, "it starts with a dot"),
    "hidden": (".alpha", INVALID, "it starts with a dot"),
    "backslash": ("..\\alpha", INVALID, "it starts with a dot"),
    "newline": ("alpha\n", NOT_FOUND, "'alpha\\n'"),
    "space": (" ", NOT_FOUND, "the repository has no model folder ' '"),
    "right-to-left override": ("\u202ealpha", NOT_FOUND, "the repository has no model folder"),
    "emoji": ("\U0001f40d", NOT_FOUND, "the repository has no model folder '\U0001f40d'"),
    "percent": ("%2e%2e", NOT_FOUND, "the repository has no model folder '%2e%2e'"),
}


@pytest.mark.parametrize("case", ODD_NAMES)
def test_odd_model_names_get_a_precise_status_everywhere(client, case):
    name, expected, fragment = ODD_NAMES[case]
    code, details = refusal(load, client.stub, name)
    assert (code, fragment in details) == (expected, True), f"{code.name}: {details[:300]}"
    assert len(details) < 1000  # the name is quoted cut short: details travel in a header
    code, details = refusal(unload, client.stub, name)
    assert code == expected, f"{code.name}: {details[:300]}"
    code, details = refusal(client.infer, name, random_images(1))
    assert code == NOT_FOUND and ("is not served" in details or "a model name is required" in details), details
    code, details = refusal(client.stub.ModelMetadata, pb.ModelMetadataRequest(name=name), timeout=10)
    assert code == NOT_FOUND, f"{code.name}: {details[:300]}"
    assert client.stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=10).ready is False
    assert client.infer("alpha", random_images(1)).model_name == "alpha"


@pytest.mark.parametrize("name", ["модель", "model with spaces", "\U0001f40d", "m" * 255, "100%"])
def test_a_folder_of_any_valid_name_loads_serves_and_unloads(repository, client, name):
    publish(repository, name, "1", seed=4)
    load(client.stub, name)
    result = client.infer(name, random_images(1))
    assert result.model_name == name
    assert index_of(client.stub)[name, "1"] == ("READY", "")
    unload(client.stub, name)
    assert not client.model_ready(name)


def test_a_name_too_long_for_the_repository_path_is_invalid_argument(tmp_path):
    deep = tmp_path
    while len(str(deep)) < 3850:  # room for alpha/1/model.onnx, but not for a 255-byte name (PATH_MAX 4096)
        deep = deep / ("d" * 50)
    deep.mkdir(parents=True)
    publish(deep, "alpha", "1")
    settings = settings_for(deep, model_control_mode="explicit", load_model=("alpha",), metrics=False)
    with start_server(settings) as running, InferenceClient(running.address) as client:
        code, details = refusal(load, client.stub, "m" * 255)
        assert code == INVALID and "cannot be read: File name too long" in details, details
        code, details = refusal(unload, client.stub, "m" * 255)
        assert code == INVALID, details


# --- the receive limit, for models loaded after start ------------------------------------------------


@pytest.fixture
def small_and_big(tmp_path):
    """small (8x8) serves at start; big (256x256) needs 64 x 65,536 + 65,536 = 4,259,840 bytes, over the
    4 MiB derived from small; fits (128x128) needs 1,114,112 and fits."""
    publish(tmp_path, "small", "1")
    publish(tmp_path, "big", "1", height=256, width=256)
    publish(tmp_path, "fits", "1", height=128, width=128)
    return tmp_path


BIG_REFUSAL = ("its largest request (64 images of 256x256x1, 4,259,840 bytes) would not fit the receive limit "
               "the server derived at start (4,194,304 bytes); restart the server with --max-message-bytes "
               "4259840 or more")


def test_a_model_too_big_for_the_derived_receive_limit_is_refused_at_load(small_and_big):
    settings = settings_for(small_and_big, model_control_mode="explicit", load_model=("small",), metrics=False,
                            max_message_bytes=0, max_request_images=64)
    with start_server(settings) as running, InferenceClient(running.address) as client:
        assert running.server.max_receive_bytes() == 4 * 1024 * 1024
        code, details = refusal(load, client.stub, "big")
        assert code == FAILED and details == f"model 'big' could not be loaded: version 1: load refused: {BIG_REFUSAL}"
        assert index_of(client.stub)["big", "1"] == ("UNAVAILABLE", f"load refused: {BIG_REFUSAL}")
        load(client.stub, "fits")
        assert client.infer("fits", random_images(64, 128, 128)).model_name == "fits"  # its largest request
        assert client.infer("small", random_images(1)).model_name == "small"


def test_poll_refuses_a_model_too_big_for_the_derived_receive_limit(small_and_big):
    big = small_and_big / "big"
    big.rename(small_and_big / ".big")  # not there at start
    settings = settings_for(small_and_big, model_control_mode="poll", repository_poll_s=0.05, metrics=False,
                            max_message_bytes=0, max_request_images=64)
    with start_server(settings) as running, InferenceClient(running.address) as client:
        (small_and_big / ".big").rename(big)
        wait_until(lambda: index_of(client.stub).get(("big", "1"), ("",))[0] == "UNAVAILABLE", what="big refused")
        assert index_of(client.stub)["big", "1"] == ("UNAVAILABLE", f"load refused: {BIG_REFUSAL}")
        assert "big" not in running.server.models.names()


def test_a_given_max_message_bytes_is_the_operators_choice(small_and_big):
    """--max-message-bytes set: models at start and later are held to it alike (clients may send JPEGs)."""
    settings = settings_for(small_and_big, model_control_mode="explicit", load_model=("small",), metrics=False,
                            max_message_bytes=1024 * 1024, max_request_images=64)
    with start_server(settings) as running, InferenceClient(running.address) as client:
        load(client.stub, "big")
        assert client.infer("big", random_images(1, 256, 256)).model_name == "big"
