"""Model repositories on disk and the repository RPCs the lifecycle tests drive."""

from __future__ import annotations

import gc
import os

import onnxruntime as ort
from edgecnn.protos import grpc_predict_v2_pb2 as pb

from tests.helpers.models import write_tiny_model


def publish(root, name, version, seed=0, **kwargs):
    """The safe way: write the version under a hidden name, then rename it into place."""
    hidden = root / name / f".{version}.tmp"
    write_tiny_model(hidden / "model.onnx", name=name, version=version, seed=seed, **kwargs)
    os.replace(hidden, root / name / version)
    return root / name / version / "model.onnx"


def index_of(stub, ready=False) -> dict[tuple[str, str], tuple[str, str]]:
    """The RepositoryIndex answer as {(name, version): (state, reason)}."""
    response = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=ready), timeout=10)
    return {(m.name, m.version): (m.state, m.reason) for m in response.models}


def load(stub, name):
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name), timeout=60)


def unload(stub, name):
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=name), timeout=60)



def live_sessions() -> int:
    """How many onnxruntime sessions this process holds now (after a garbage collection)."""
    gc.collect()
    return sum(type(o) is ort.InferenceSession for o in gc.get_objects())  # type(): no proxy lookups


