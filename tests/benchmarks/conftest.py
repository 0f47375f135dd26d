from __future__ import annotations

import pytest
from edgecnn.benchmarks.loadgen import LoadGenerator


@pytest.fixture(scope="module")
def loadgen():
    with LoadGenerator(1) as generator:
        yield generator
