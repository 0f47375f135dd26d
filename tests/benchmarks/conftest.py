from __future__ import annotations

import pytest

from edgecnn.benchmarks.loadgen import LoadGenerator
from tests.tiny_models import write_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.onnx", name="tiny", height=8, width=8)


@pytest.fixture(scope="module")
def loadgen():
    with LoadGenerator(1) as generator:
        yield generator
