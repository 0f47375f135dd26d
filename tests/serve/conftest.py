from __future__ import annotations

import pytest
from edgecnn.serve.client import InferenceClient
from edgecnn.serve.server import start_server

from tests.helpers.serving import settings_for


@pytest.fixture(scope="module")
def server(tiny_model):
    running = start_server(settings_for(tiny_model))
    yield running
    running.stop(grace=0)


@pytest.fixture(scope="module")
def client(server):
    with InferenceClient(server.address, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def stub(client):
    return client.stub


@pytest.fixture
def served_model(server):
    return server.server.repository.get("tiny")


@pytest.fixture
def batcher(server):
    return server.server.batchers["tiny", "1"]
