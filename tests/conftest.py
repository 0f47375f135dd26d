"""Fixtures every test folder shares: the tiny model and `edgecnn serve` child processes."""

from __future__ import annotations

import pytest

from tests.helpers.models import write_tiny_model
from tests.helpers.processes import ServeProcess


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """An 8x8 grey three-class classifier (labels zero, one, two) with edgecnn metadata."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture
def serve_process():
    """Start `edgecnn serve` children with ``serve_process(*flags)``; each is killed at the end of the test."""
    started: list[ServeProcess] = []

    def start(*args: str) -> ServeProcess:
        started.append(ServeProcess(*args))
        return started[-1]

    yield start
    for process in started:
        process.stop()
