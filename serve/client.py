"""A small synchronous client for edgecnn (or any Open Inference Protocol) servers.

    with InferenceClient("localhost:8001") as client:
        result = client.infer("mnist", images, top_k=3)      # images: uint8 [n, H, W, C] or encoded bytes
        result.top_k[0][0].label, result.outputs, result.parameters["compute_us"]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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

# Clients, the echo server and the load generator: large enough for any request a server accepts
# (the server's own receive limit is what refuses oversized ones).
CLIENT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", CLIENT_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", CLIENT_MAX_MESSAGE_BYTES),
]


@dataclass(frozen=True)
class ChannelSecurity:
    """How a client reaches a server with TLS, mutual TLS and a bearer token (all optional).

    ``tls_ca`` (or ``tls``, for a server whose certificate the system's roots trust) turns TLS on;
    ``tls_cert``/``tls_key`` present a client certificate (mutual TLS); ``token`` is sent as
    ``authorization: Bearer TOKEN`` metadata on every call.
    """

    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token: str | None = None

    @classmethod
    def from_files(cls, *, tls: bool = False, tls_ca: Path | None = None, tls_cert: Path | None = None,
                   tls_key: Path | None = None, token_file: Path | None = None) -> "ChannelSecurity":
        from edgecnn.serve.auth import read_token_file

        token = read_token_file(Path(token_file)) if token_file else None
        security = cls(tls or bool(tls_ca or tls_cert), tls_ca, tls_cert, tls_key, token)
        if security.tls:  # unreadable or mismatched files: one ValueError naming the file, now
            from edgecnn.serve.tls import client_credentials

            client_credentials(tls_ca, tls_cert, tls_key)
        return security

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self, address: str, *, aio: bool = False, options: Sequence[tuple[str, object]] = CHANNEL_OPTIONS):
        """A channel to ``address`` with these credentials (grpc.aio's with ``aio``)."""
        module = grpc.aio if aio else grpc
        if not (self.tls or self.tls_ca or self.tls_cert):
            return module.insecure_channel(address, options=list(options))
        from edgecnn.serve.tls import client_credentials

        credentials = client_credentials(self.tls_ca, self.tls_cert, self.tls_key)
        return module.secure_channel(address, credentials, options=list(options))


PLAINTEXT = ChannelSecurity()


@dataclass(frozen=True)
class InferResult:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]  # raw outputs by name (without the classified one)
    top_k: list[list[Classification]] | None  # per image, best first, when top_k was asked
    parameters: dict[str, int | str | bool] = field(default_factory=dict)  # queue_us, compute_us, batch_size


class InferenceClient:
    def __init__(self, address: str, *, timeout: float | None = 30.0, security: ChannelSecurity = PLAINTEXT) -> None:
        self.address = address
        self.timeout = timeout
        self.channel = security.channel(address)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self._metadata = security.metadata

    def _call(self, method: str, request, timeout: float | None = None):
        call = getattr(self.stub, method)
        return call(request, timeout=timeout if timeout is not None else self.timeout, metadata=self._metadata)

    def server_live(self) -> bool:
        return self._call("ServerLive", pb.ServerLiveRequest()).live

    def server_ready(self) -> bool:
        return self._call("ServerReady", pb.ServerReadyRequest()).ready

    def model_ready(self, name: str = "", version: str = "") -> bool:
        return self._call("ModelReady", pb.ModelReadyRequest(name=name, version=version)).ready

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return self._call("ServerMetadata", pb.ServerMetadataRequest())

    def model_metadata(self, name: str = "", version: str = "") -> pb.ModelMetadataResponse:
        """An empty name asks an edgecnn server for the only model it serves."""
        return self._call("ModelMetadata", pb.ModelMetadataRequest(name=name, version=version))

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
        response = self._call("ModelInfer", request, timeout)
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
