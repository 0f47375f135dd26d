"""What the load generator sends: the model's inputs from the server's ModelMetadata RPC, and
ModelInferRequests built and serialised once (random pixels or real images), then reused."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from edgecnn.benchmarks.echo import SERVICE
from edgecnn.serve.client import PLAINTEXT, ChannelSecurity, describe_rpc_error
from edgecnn.benchmarks.inprocess import random_array
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.serve.codec import DATATYPES

MODEL_INFER = f"/{SERVICE}/ModelInfer"
MODEL_METADATA = f"/{SERVICE}/ModelMetadata"
SERVER_READY = f"/{SERVICE}/ServerReady"


@dataclass(frozen=True)
class InputSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for the batch axis


@dataclass(frozen=True)
class ModelSpec:
    """A served model as its server describes it."""

    name: str
    version: str
    platform: str
    inputs: tuple[InputSpec, ...]


def wait_until_ready(address: str, timeout_s: float = 30.0, security: ChannelSecurity = PLAINTEXT) -> None:
    """Poll ServerReady until it answers true (any OIP server), or raise TimeoutError."""
    deadline = time.monotonic() + timeout_s
    with security.channel(address) as channel:
        ready = channel.unary_unary(SERVER_READY, request_serializer=pb.ServerReadyRequest.SerializeToString,
                                    response_deserializer=pb.ServerReadyResponse.FromString)
        while True:
            try:
                if ready(pb.ServerReadyRequest(), timeout=1.0, metadata=security.metadata).ready:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no ready Open Inference Protocol server at {address} after {timeout_s:.0f} s")
            time.sleep(0.1)


def fetch_model_spec(address: str, model: str, version: str = "", timeout_s: float = 10.0,
                     security: ChannelSecurity = PLAINTEXT) -> tuple[ModelSpec, bytes]:
    """The ModelMetadata RPC: the model's inputs (and the raw response, which the echo server can replay)."""
    with security.channel(address) as channel:
        call = channel.unary_unary(MODEL_METADATA)
        try:
            raw = call(pb.ModelMetadataRequest(name=model, version=version).SerializeToString(), timeout=timeout_s,
                       metadata=security.metadata)
        except grpc.RpcError as error:  # nothing listening, no such model, a token refused
            raise ValueError(f"{address}: the metadata of model {model!r} could not be read: "
                             f"{describe_rpc_error(error, security)}") from None
    response = pb.ModelMetadataResponse.FromString(raw)
    inputs = tuple(InputSpec(t.name, t.datatype, tuple(t.shape)) for t in response.inputs)
    return ModelSpec(response.name, version, response.platform, inputs), raw


def infer_once(address: str, request: bytes, timeout_s: float = 10.0, security: ChannelSecurity = PLAINTEXT) -> bytes:
    """One ModelInfer call with a serialised request; the serialised response."""
    with security.channel(address) as channel:
        return channel.unary_unary(MODEL_INFER)(request, timeout=timeout_s, metadata=security.metadata)


def batch_shape(spec: InputSpec, batch_size: int) -> list[int]:
    """The input's shape with its variable first axis set to ``batch_size``."""
    if not spec.shape:
        raise ValueError(f"input {spec.name!r} is a scalar; a batch of {batch_size} cannot be sent")
    rest = list(spec.shape[1:])
    if any(d < 0 for d in rest):
        raise ValueError(f"input {spec.name!r} has variable non-batch dimensions {list(spec.shape)}")
    if spec.shape[0] >= 0 and spec.shape[0] != batch_size:
        raise ValueError(f"input {spec.name!r} has a fixed batch of {spec.shape[0]}; use --batch-size {spec.shape[0]}")
    return [batch_size, *rest]


def load_images(folder: str | Path, spec: InputSpec) -> np.ndarray:
    """Every image under ``folder``, decoded and resized to the input's [N, H, W, C] uint8 layout."""
    from edgecnn.serve.images import FORMATS_TEXT, ImageDecodeError, decode_image, image_files

    if spec.datatype != "UINT8" or len(spec.shape) != 4 or spec.shape[3] not in (1, 3):
        raise ValueError(f"real images need a UINT8 [N, H, W, C] input; the server's is {spec.datatype} {list(spec.shape)}")
    _, height, width, channels = spec.shape
    files = image_files(folder)
    if not files:
        raise ValueError(f"--images {folder}: no images ({FORMATS_TEXT}) in it")
    images = []
    for path in files:
        try:
            images.append(decode_image(path.read_bytes(), height, width, channels))
        except ImageDecodeError as exc:
            raise ValueError(f"--images: {path}: {exc}") from None
    return np.stack(images)


def build_requests(
    model: ModelSpec,
    batch_size: int,
    count: int,
    images: np.ndarray | None = None,
    seed: int = 0,
) -> list[bytes]:
    """``count`` serialised ModelInferRequests of ``batch_size`` items each; raw contents, all outputs.

    With ``images`` the first input takes consecutive real images (cycling); other inputs are random.
    """
    rng = np.random.default_rng(seed)
    requests = []
    for index in range(count):
        request = pb.ModelInferRequest(model_name=model.name, model_version=model.version)
        for position, spec in enumerate(model.inputs):
            shape = batch_shape(spec, batch_size)
            if position == 0 and images is not None:
                rows = np.arange(index * batch_size, (index + 1) * batch_size) % len(images)
                array = images[rows]
            elif spec.datatype in DATATYPES:
                array = random_array(rng, shape, DATATYPES[spec.datatype][0])
            else:
                raise ValueError(f"input {spec.name!r} is {spec.datatype}; random data covers {', '.join(DATATYPES)}")
            request.inputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
            request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
        requests.append(request.SerializeToString())
    return requests
