"""A small synchronous client for edgecnn (or any Open Inference Protocol) servers.

    with InferenceClient("localhost:8001") as client:
        result = client.infer("mnist", images, top_k=3)      # images: uint8 [n, H, W, C] or encoded bytes
        result.top_k[0][0].label, result.outputs, result.parameters["compute_us"]

Several replicas: ``InferenceClient("10.0.0.1:8001,10.0.0.2:8001")`` or ``"dns:///models.svc:8001"``
(every address the name resolves to). gRPC itself then balances calls round robin over the replicas
its health checks report SERVING, retries calls refused UNAVAILABLE (a draining or killed replica),
and keepalive pings notice a silent one; ``infer`` also resends a call that a hung replica holds past
``attempt_timeout`` to another one, inside the caller's deadline (inference is idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import json
import socket
import time

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

# The plain gRPC service config behind failover (README: the same for tritonclient, Go, Java):
# round robin over replicas whose grpc.health.v1 status for the inference service is SERVING, and
# up to 5 attempts of a call refused UNAVAILABLE. gRPC retries only calls no replica answered yet.
INFERENCE_SERVICE = "inference.GRPCInferenceService"
FAILOVER_SERVICE_CONFIG = {
    # Round robin; a replica whose calls mostly fail (a hung one: attempts time out) is ejected for a while.
    "loadBalancingConfig": [{"outlier_detection_experimental": {
        "interval": "1s",
        "baseEjectionTime": "10s",
        "maxEjectionPercent": 50,
        "failurePercentageEjection": {"threshold": 50, "enforcementPercentage": 100, "minimumHosts": 2,
                                      "requestVolume": 4},
        "childPolicy": [{"round_robin": {}}],
    }}],
    "healthCheckConfig": {"serviceName": INFERENCE_SERVICE},
    "methodConfig": [{
        "name": [{"service": INFERENCE_SERVICE}],
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.05s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
}
FAILOVER_OPTIONS = [
    ("grpc.service_config", json.dumps(FAILOVER_SERVICE_CONFIG)),
    ("grpc.enable_retries", 1),
    # A replica that stops answering (hung, or a network partition) is dropped within about 3 s of
    # calls in flight; pings only while calls are, which servers allow (Triton's default policy too).
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
]
ATTEMPT_TIMEOUT_S = 2.0  # default per-attempt timeout of infer() when there are several replicas
WEB_SCHEMES = ("http", "https", "grpc", "grpcs")  # what users type before HOST:PORT; no gRPC resolver's


def channel_target(address: str) -> tuple[str, list[tuple[str, object]]]:
    """The gRPC target and the options for ``address``: one HOST:PORT, several comma-separated, or a
    resolver URI (``dns:///``, ``ipv4:``); several replicas get the failover options."""
    scheme = address.partition("://")[0].lower() if "://" in address else ""
    if scheme in WEB_SCHEMES:  # gRPC would take "http" for a host name: "Misformatted domain name"
        raise ValueError(f"{address} is not a gRPC address: it takes no scheme; give {address.split('://', 1)[1]} "
                         "(with --tls-ca or --tls for TLS)")
    if scheme or address.startswith(("ipv4:", "ipv6:", "unix:")):
        return address, FAILOVER_OPTIONS if is_failover(address) else []
    hosts = [part.strip() for part in address.split(",") if part.strip()]
    if not hosts:
        raise ValueError(f"{address!r} is not a server address: give HOST:PORT, several comma-separated, "
                         "or dns:///NAME:PORT")
    if len(hosts) == 1:
        return hosts[0], []
    # gRPC's static list resolvers take addresses, not names: resolve each name once, here.
    resolved = [_resolve(host) for host in hosts]
    family = "ipv6" if any(":" in ip.rsplit(":", 1)[0] for ip in resolved) else "ipv4"
    options = list(FAILOVER_OPTIONS)
    name = hosts[0].rsplit(":", 1)[0].strip("[]")
    options.append(("grpc.ssl_target_name_override", name))  # TLS checks the name the user gave
    return f"{family}:{','.join(resolved)}", options


def describe_rpc_error(error: grpc.RpcError, security: ChannelSecurity | None = None) -> str:
    """A failed call as one line for a command's error message: its status code and the first line of its
    details, and with ``security`` (how the client connected) the likely cause of a failed TLS handshake."""
    details = (error.details() or "").strip().splitlines()
    text = f"{error.code().name}: {details[0]}" if details else error.code().name
    hint = tls_hint(error, security) if security is not None else None
    return f"{text} ({hint})" if hint else text


def tls_hint(error: grpc.RpcError, security: ChannelSecurity) -> str | None:
    """What a connection that failed this way most likely lacks, in the client's flags; None if not TLS.

    gRPC reports each mismatch only as a closed socket or a failed handshake: a TLS server closes a
    plaintext client's connection, and a mutual-TLS one a client's that shows no (or a foreign) certificate.
    """
    details = error.details() or ""
    if error.code() != grpc.StatusCode.UNAVAILABLE or "failed to connect" not in details:
        return None
    if security.tls and "WRONG_VERSION_NUMBER" in details:
        return "the server may not use TLS: leave out --tls and --tls-ca"
    if "CERTIFICATE_VERIFY_FAILED" in details:
        signer = "the CA of --tls-ca" if security.tls_ca else "a CA the system trusts: give --tls-ca"
        return f"the server's certificate may not be signed by {signer}"
    if not any(closed in details for closed in ("Socket closed", "Connection reset")):
        return None
    if not security.tls:
        return "the server may expect TLS: --tls-ca CA.pem, or --tls"
    if security.tls_cert is None:
        return "the server may require a client certificate: --tls-cert and --tls-key"
    return "the server may not accept the client certificate of --tls-cert: its --tls-client-ca must have signed it"


def is_failover(address: str) -> bool:
    """Several replicas: a comma-separated list, or a name DNS may resolve to many addresses."""
    return address.startswith("dns:") or "," in address


def _resolve(host_port: str) -> str:
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{host_port!r} is not HOST:PORT")
    try:
        info = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc.strerror}") from None
    ip = next((i[4][0] for i in info if i[0] == socket.AF_INET), info[0][4][0])
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


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
        """The security the client flags of `predict` and `bench` ask for, their files read and checked now:
        a missing, unreadable or malformed one is a ValueError naming its flag and the file."""
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
        """A channel to ``address`` (one HOST:PORT, several comma-separated, or ``dns:///NAME:PORT``)
        with these credentials (grpc.aio's with ``aio``)."""
        module = grpc.aio if aio else grpc
        target, extra = channel_target(address)
        options = [*options, *extra]
        if not (self.tls or self.tls_ca or self.tls_cert):
            return module.insecure_channel(target, options=options)
        from edgecnn.serve.tls import client_credentials

        credentials = client_credentials(self.tls_ca, self.tls_cert, self.tls_key)
        return module.secure_channel(target, credentials, options=options)


PLAINTEXT = ChannelSecurity()


@dataclass(frozen=True)
class InferResult:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]  # raw outputs by name (without the classified one)
    top_k: list[list[Classification]] | None  # per image, best first, when top_k was asked
    parameters: dict[str, int | str | bool] = field(default_factory=dict)  # queue_us, compute_us, batch_size


class InferenceClient:
    def __init__(self, address: str, *, timeout: float | None = 30.0, security: ChannelSecurity = PLAINTEXT,
                 attempt_timeout: float | None = None) -> None:
        """``attempt_timeout``: how long one attempt of ``infer`` may take before it is resent (to another
        replica, round robin); default ATTEMPT_TIMEOUT_S with several replicas, off with one."""
        self.address = address
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout if attempt_timeout is not None else (
            ATTEMPT_TIMEOUT_S if is_failover(address) else None)
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
        response = self._infer_with_attempts(request, timeout if timeout is not None else self.timeout)
        arrays = response_arrays(response)
        classified = arrays.pop(PROBABILITIES) if top_k is not None else None
        return InferResult(
            model_name=response.model_name,
            model_version=response.model_version,
            outputs=arrays,
            top_k=parse_classifications(classified) if classified is not None else None,
            parameters=response_parameters(response),
        )

    def _infer_with_attempts(self, request: pb.ModelInferRequest, timeout: float | None) -> pb.ModelInferResponse:
        """ModelInfer, resent when an attempt outlasts ``attempt_timeout`` (a hung replica), until the deadline."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            attempt = remaining if self.attempt_timeout is None else min(
                self.attempt_timeout, remaining if remaining is not None else self.attempt_timeout)
            try:
                return self._call("ModelInfer", request, attempt)
            except grpc.RpcError as error:
                out_of_time = remaining is not None and attempt >= remaining
                if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED or self.attempt_timeout is None or out_of_time:
                    raise

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "InferenceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
