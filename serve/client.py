"""A small synchronous client for edgecnn (or any Open Inference Protocol) servers.

    with InferenceClient("localhost:8001") as client:
        result = client.infer("mnist", images, top_k=3)      # images: uint8 [n, H, W, C] or encoded bytes
        result.top_k[0][0].label, result.outputs, result.parameters["compute_us"]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import grpc
import numpy as np

from edgecnn.export.metadata import PROBABILITIES
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from edgecnn.serve.codec import (
    Classification,
    encoded_images_request,
    images_request,
    parse_classifications,
    response_arrays,
    response_parameters,
)
from edgecnn.serve.settings import ServeSettings

# The server's default --max-message-bytes, both ways: clients, the echo server and the load generator use these.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", ServeSettings.max_message_bytes),
    ("grpc.max_send_message_length", ServeSettings.max_message_bytes),
]


@dataclass(frozen=True)
class InferResult:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]  # raw outputs by name (without the classified one)
    top_k: list[list[Classification]] | None  # per image, best first, when top_k was asked
    parameters: dict[str, int | str | bool] = field(default_factory=dict)  # queue_us, compute_us, batch_size


class InferenceClient:
    def __init__(self, address: str, *, timeout: float | None = 30.0) -> None:
        self.address = address
        self.timeout = timeout
        self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def server_live(self) -> bool:
        return self.stub.ServerLive(pb.ServerLiveRequest(), timeout=self.timeout).live

    def server_ready(self) -> bool:
        return self.stub.ServerReady(pb.ServerReadyRequest(), timeout=self.timeout).ready

    def model_ready(self, name: str = "", version: str = "") -> bool:
        return self.stub.ModelReady(pb.ModelReadyRequest(name=name, version=version), timeout=self.timeout).ready

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return self.stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=self.timeout)

    def model_metadata(self, name: str = "", version: str = "") -> pb.ModelMetadataResponse:
        """An empty name asks an edgecnn server for the only model it serves."""
        return self.stub.ModelMetadata(pb.ModelMetadataRequest(name=name, version=version), timeout=self.timeout)

    def infer(
        self,
        model: str,
        images: np.ndarray | Sequence[bytes],
        *,
        version: str = "",
        top_k: int | None = None,
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> InferResult:
        """Classify uint8 NHWC pixels, or encoded images (PNG/JPEG bytes, decoded by the server).

        ``top_k`` asks for the classification extension on the probabilities; ``outputs`` names raw
        outputs to return. With neither, every output comes back raw.
        """
        build = images_request if isinstance(images, np.ndarray) else encoded_images_request
        request = build(model, images, version=version, top_k=top_k, outputs=outputs)
        response = self.stub.ModelInfer(request, timeout=timeout if timeout is not None else self.timeout)
        arrays = response_arrays(response)
        classified = arrays.pop(PROBABILITIES) if top_k is not None else None
        return InferResult(
            model_name=response.model_name,
            model_version=response.model_version,
            outputs=arrays,
            top_k=parse_classifications(classified) if classified is not None else None,
            parameters=response_parameters(response),
        )

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "InferenceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
