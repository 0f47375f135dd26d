"""Poll mode loads a version only once its file has not changed between two scans (README: "in `poll` mode a
version is loaded only once its file has not changed between two scans").

A real server polls a real repository; the test paces its poll loop one scan at a time (ScanGate), so what
each scan saw is known exactly and nothing depends on how fast a loaded machine runs the loop.
"""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import pytest
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.serve.client import InferenceClient
from edgecnn.serve.server import start_server

from tests.helpers.models import random_images, reference_outputs, write_tiny_model
from tests.helpers.serving import settings_for

pytestmark = pytest.mark.slow  # real servers

DEADLINE_S = 60.0


class ScanGate:
    """Holds the server's poll loop before each scan until ``scan()`` lets exactly one run, and waits for it."""

    def __init__(self, store) -> None:
        self._store = store
        self._poll_once = store.poll_once
        self._permits = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self._open = False
        self.waiting = threading.Event()  # the loop is held at the gate: no ungated scan is running
        store.poll_once = self._gated  # poll_forever looks poll_once up before every scan

    async def _gated(self) -> None:
        self.waiting.set()
        await asyncio.to_thread(self._permits.acquire)
        try:
            await self._poll_once()
        finally:
            if not self._open:
                self._done.release()

    def scan(self) -> None:
        """Let one scan run; return once it has finished."""
        self._permits.release()
        assert self._done.acquire(timeout=DEADLINE_S), "the poll scan did not finish"

    def __enter__(self) -> "ScanGate":
        assert self.waiting.wait(DEADLINE_S), "the poll loop never reached the gate"
        return self

    def __exit__(self, *exc) -> None:
        self._open = True
        self._store.poll_once = self._poll_once
        self._permits.release()  # the scan held at the gate runs, then the loop polls ungated again


def index_of(stub) -> dict[tuple[str, str], tuple[str, str]]:
    response = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    return {(m.name, m.version): (m.state, m.reason) for m in response.models}


def test_a_file_changed_between_two_scans_is_loaded_only_once_it_stood_still(tmp_path):
    repository = tmp_path / "models"
    write_tiny_model(repository / "alpha" / "1" / "model.onnx", name="alpha", seed=1)
    new_model = write_tiny_model(tmp_path / "elsewhere" / "model.onnx", name="alpha", version="2", seed=2)
    whole = new_model.read_bytes()
    images = random_images(2, seed=3)
    expected = reference_outputs(new_model, images)["logits"]
    settings = settings_for(repository, model_control_mode="poll", repository_poll_s=0.01, metrics=False)
    with start_server(settings) as running, InferenceClient(running.address) as client, \
            ScanGate(running.server.models) as gate:
        stub = client.stub
        served_alone = {("alpha", "1"): ("READY", "")}
        assert index_of(stub) == served_alone

        # Version 2 written in place (not renamed in): the first scan finds half of it.
        target = repository / "alpha" / "2" / "model.onnx"
        target.parent.mkdir()
        target.write_bytes(whole[: len(whole) // 2])
        gate.scan()
        assert index_of(stub) == served_alone  # not tried: a load of half a file would be UNAVAILABLE
        assert client.infer("alpha", images).model_version == "1"

        # The copy finishes: the file is whole and valid, but it changed since the last scan.
        with open(target, "ab") as file:
            file.write(whole[len(whole) // 2 :])
        assert target.read_bytes() == whole
        gate.scan()
        assert index_of(stub) == served_alone
        assert client.infer("alpha", images).model_version == "1"

        # Unchanged since the last scan: this scan loads it.
        gate.scan()
        assert index_of(stub).get(("alpha", "2")) == ("READY", "")
        result = client.infer("alpha", images)
        assert result.model_version == "2"
        np.testing.assert_allclose(result.outputs["logits"], expected, rtol=1e-6)


def test_a_file_standing_still_is_loaded_on_the_second_scan_that_sees_it(tmp_path):
    repository = tmp_path / "models"
    write_tiny_model(repository / "alpha" / "1" / "model.onnx", name="alpha", seed=1)
    settings = settings_for(repository, model_control_mode="poll", repository_poll_s=0.01, metrics=False)
    with start_server(settings) as running, InferenceClient(running.address) as client, \
            ScanGate(running.server.models) as gate:
        hidden = repository / "alpha" / ".2"
        write_tiny_model(hidden / "model.onnx", name="alpha", version="2", seed=2)
        os.replace(hidden, repository / "alpha" / "2")  # published whole, by a rename
        gate.scan()
        assert ("alpha", "2") not in index_of(client.stub)  # seen once: not yet known to stand still
        gate.scan()
        assert index_of(client.stub).get(("alpha", "2")) == ("READY", "")
        assert client.infer("alpha", random_images(1)).model_version == "2"
