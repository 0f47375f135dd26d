"""Bearer tokens with scopes: the token file, the interceptor alone, and every RPC of a real server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from edgecnn.serve import codec
from edgecnn.serve.auth import (
    HEALTH_METHODS,
    REQUIRED_SCOPE,
    SCOPES,
    UNAUTHENTICATED_DETAILS,
    AuthInterceptor,
    bearer_metadata,
    interceptor_for,
    load_tokens,
    read_token_file,
)
from edgecnn.serve.server import start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from tests.helpers.models import random_images
from tests.helpers.serving import settings_for

ALL_TOKEN = "all-scopes-Xq8vN2mWc1pXr7sLd9"
TOKEN_OF = {"inference": "inference-Zb5tQ1nE8uYh3aKf6o", "metadata": "metadata-Hs4Lx9cR1vTe7nBq2kW",
            "admin": "admin-Kd3Rw8qTz5Lm2Vx9Np4Bc7"}
UNKNOWN_TOKEN = "unknown-Pw2jGm7yVt2mWc1pXr7s"
EVERY_TOKEN = (ALL_TOKEN, *TOKEN_OF.values(), UNKNOWN_TOKEN)
OTHER_SCOPE = {"inference": "metadata", "metadata": "inference", "admin": "metadata"}

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
TIMEOUT = 10


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- the token file ----------------------------------------------------------------------------


def test_load_tokens_reads_scopes_and_no_scopes_means_all(tmp_path):
    table = load_tokens(write(tmp_path / "tokens", (
        "# comment\n"
        "\n"
        f"{ALL_TOKEN}\n"
        f"  {TOKEN_OF['inference']}\tinference  \n"
        f"{TOKEN_OF['metadata']}   inference, metadata\n"
        "   # indented comment\n"
    )))
    assert len(table) == 3
    assert table.scopes_of(ALL_TOKEN) == frozenset(SCOPES)
    assert table.scopes_of(TOKEN_OF["inference"]) == {"inference"}
    assert table.scopes_of(TOKEN_OF["metadata"]) == {"inference", "metadata"}
    assert table.scopes_of(UNKNOWN_TOKEN) is None
    assert table.scopes_of(ALL_TOKEN[:-1]) is None and table.scopes_of(ALL_TOKEN + "x") is None


def test_token_table_keeps_no_token_text(tmp_path):
    table = load_tokens(write(tmp_path / "tokens", f"{ALL_TOKEN}\n{TOKEN_OF['inference']} inference\n"))
    kept = repr(vars(table))
    assert ALL_TOKEN not in kept and TOKEN_OF["inference"] not in kept


@pytest.mark.parametrize(
    "text, line, says",
    [
        pytest.param(f"{ALL_TOKEN}\n{TOKEN_OF['inference']} inferense\n", 2, "unknown scope 'inferense'", id="unknown-scope"),
        pytest.param(f"{ALL_TOKEN} inference,\n", 1, "unknown scope ''", id="empty-scope"),
        pytest.param(f"{ALL_TOKEN} {UNKNOWN_TOKEN}\n", 1, "unknown scope;", id="second-token-as-scope"),
        pytest.param("", None, "no token in the file", id="empty-file"),
        pytest.param("# only a comment\n\n   \n", None, "no token in the file", id="only-comments"),
        pytest.param(f"{ALL_TOKEN}\n#\n{ALL_TOKEN} inference\n", 3, "duplicates the token of line 1", id="duplicate"),
        pytest.param("# x\nshort-token-15c\n", 2, "could be guessed", id="too-short"),
        pytest.param(f"{ALL_TOKEN}é\n", 1, "HTTP header", id="non-ascii"),
        pytest.param(f"{ALL_TOKEN}\x7f\n", 1, "HTTP header", id="control-character"),
    ],
)
def test_load_tokens_rejects(tmp_path, text, line, says):
    path = write(tmp_path / "tokens", text)
    with pytest.raises(ValueError) as error:
        load_tokens(path)
    message = str(error.value)
    assert message.startswith(f"--auth-token-file {path}") and says in message
    if line is not None:
        assert f"line {line}:" in message
    assert not any(token in message for token in EVERY_TOKEN)
    assert "short-token-15c" not in message


def test_read_token_file_gives_clients_the_first_token(tmp_path):
    assert read_token_file(write(tmp_path / "a", f"# mine\n\n  {TOKEN_OF['inference']} inference\n{ALL_TOKEN}\n")) == (
        TOKEN_OF["inference"]
    )
    assert read_token_file(write(tmp_path / "b", f"{ALL_TOKEN}\n")) == ALL_TOKEN
    path = write(tmp_path / "c", "# nothing here\n")
    with pytest.raises(ValueError, match=f"--token-file {path}: no token in the file"):
        read_token_file(path)


@pytest.mark.parametrize("text", [f"{ALL_TOKEN}\n", f"{ALL_TOKEN}\r\n", f"  {ALL_TOKEN}  \n\n", f"\ufeff{ALL_TOKEN}\r\n",
                                  f"{ALL_TOKEN}\t inference\r\n"],
                         ids=["newline", "crlf", "spaces", "byte-order-mark", "tab-and-scopes"])
def test_both_sides_read_a_token_whatever_surrounds_it(tmp_path, text):
    """What editors write around a token (a newline, CRLF, spaces, a UTF-8 BOM) is not part of it."""
    path = tmp_path / "my.token"
    path.write_bytes(text.encode("utf-8"))
    assert read_token_file(path) == ALL_TOKEN
    assert load_tokens(path).scopes_of(ALL_TOKEN) is not None


def test_a_client_token_a_header_cannot_carry_is_refused_naming_the_file(tmp_path):
    path = write(tmp_path / "my.token", f"{ALL_TOKEN}é\n")
    with pytest.raises(ValueError, match=f"--token-file {path}, line 1: the token has characters an HTTP header"):
        read_token_file(path)


def test_bearer_metadata():
    assert bearer_metadata("abc") == (("authorization", "Bearer abc"),)


def test_interceptor_for(tmp_path):
    assert interceptor_for(settings_for(tmp_path / "m.onnx")) is None
    tokens = write(tmp_path / "tokens", f"{ALL_TOKEN}\n")
    assert isinstance(interceptor_for(settings_for(tmp_path / "m.onnx", auth_token_file=tokens)), AuthInterceptor)
    with pytest.raises(ValueError, match="--auth-token-file .*: no token in the file"):
        interceptor_for(settings_for(tmp_path / "m.onnx", auth_token_file=write(tmp_path / "empty", "")))


def test_every_oip_method_has_a_rule():
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = {f"/{service.full_name}/{m.name}" for m in service.methods}
    assert methods <= set(REQUIRED_SCOPE) | set(HEALTH_METHODS)
    assert methods == {f"/{service.full_name}/{name}" for name in OIP_CALLS}, "the matrix must cover every OIP RPC"


def test_method_names_match_the_services():
    health = health_pb2.DESCRIPTOR.services_by_name["Health"]
    assert {f"/{health.full_name}/{m.name}" for m in health.methods} <= set(HEALTH_METHODS)
    assert REQUIRED_SCOPE[f"/{reflection.SERVICE_NAME}/ServerReflectionInfo"] == "metadata"


# --- the interceptor alone ---------------------------------------------------------------------


class Aborted(Exception):
    pass


class FakeContext:
    async def abort(self, code, details):
        self.code, self.details = code, details
        raise Aborted


def intercept(interceptor, method, metadata, real):
    calls = []

    async def continuation(details):
        calls.append(details.method)
        return real

    details = SimpleNamespace(method=method, invocation_metadata=metadata)
    return asyncio.run(interceptor.intercept_service(continuation, details)), calls


def refused_with(handler, request=b""):
    context = FakeContext()
    behavior = next(b for b in (handler.unary_unary, handler.unary_stream, handler.stream_unary, handler.stream_stream) if b)
    with pytest.raises(Aborted):
        asyncio.run(behavior(request, context))
    return context.code, context.details


@pytest.fixture
def interceptor(tmp_path):
    return AuthInterceptor(load_tokens(write(tmp_path / "t", f"{ALL_TOKEN}\n{TOKEN_OF['inference']} inference\n")))


def serialize(response):
    return b"out"


def deserialize(request):
    return "in"


@pytest.mark.parametrize(
    "make, kind",
    [
        (grpc.unary_unary_rpc_method_handler, "unary_unary"),
        (grpc.unary_stream_rpc_method_handler, "unary_stream"),
        (grpc.stream_unary_rpc_method_handler, "stream_unary"),
        (grpc.stream_stream_rpc_method_handler, "stream_stream"),
    ],
)
def test_refusals_keep_the_streaming_kind_and_codecs(interceptor, make, kind):
    real = make(lambda request, context: None, request_deserializer=deserialize, response_serializer=serialize)
    handler, _ = intercept(interceptor, "/inference.GRPCInferenceService/ModelInfer", (), real)
    assert handler is not real
    assert (handler.request_streaming, handler.response_streaming) == (real.request_streaming, real.response_streaming)
    assert getattr(handler, kind) is not None
    assert handler.request_deserializer is deserialize and handler.response_serializer is serialize
    assert refused_with(handler) == (UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)


@pytest.mark.parametrize(
    "value",
    [f"Bearer {ALL_TOKEN}", f"bearer {ALL_TOKEN}", f"BEARER  {ALL_TOKEN} "],
)
def test_bearer_scheme_is_case_insensitive(interceptor, value):
    real = grpc.unary_unary_rpc_method_handler(lambda request, context: None)
    handler, _ = intercept(interceptor, "/inference.GRPCInferenceService/ModelInfer", (("authorization", value),), real)
    assert handler is real


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer"),),
        (("authorization", "Bearer "),),
        (("authorization", ALL_TOKEN),),
        (("authorization", f"Basic {ALL_TOKEN}"),),
        (("authorization", f"Bearer {UNKNOWN_TOKEN}"),),
        (("x-token", f"Bearer {ALL_TOKEN}"),),
    ],
    ids=["none", "scheme-only", "scheme-space", "no-scheme", "basic", "unknown", "other-key"],
)
def test_malformed_or_unknown_tokens_are_unauthenticated(interceptor, metadata):
    real = grpc.unary_unary_rpc_method_handler(lambda request, context: None)
    handler, _ = intercept(interceptor, "/inference.GRPCInferenceService/ModelInfer", metadata, real)
    assert refused_with(handler) == (UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)


def test_missing_scope_is_permission_denied_and_names_the_scope(interceptor):
    real = grpc.unary_unary_rpc_method_handler(lambda request, context: None)
    metadata = bearer_metadata(TOKEN_OF["inference"])
    handler, _ = intercept(interceptor, "/inference.GRPCInferenceService/ModelMetadata", metadata, real)
    code, details = refused_with(handler)
    assert code == PERMISSION_DENIED and "'metadata'" in details and TOKEN_OF["inference"] not in details
    handler, _ = intercept(interceptor, "/some.Other/Method", metadata, real)  # not in the table: admin
    code, details = refused_with(handler)
    assert code == PERMISSION_DENIED and "'admin'" in details


def test_unknown_methods_are_unauthenticated_before_unimplemented(interceptor):
    handler, _ = intercept(interceptor, "/nope.Service/Method", (), None)
    assert handler is not None and refused_with(handler) == (UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)
    handler, _ = intercept(interceptor, "/nope.Service/Method", bearer_metadata(ALL_TOKEN), None)
    assert handler is None  # gRPC answers UNIMPLEMENTED


def test_open_health_passes_without_a_token(tmp_path):
    tokens = load_tokens(write(tmp_path / "t", f"{ALL_TOKEN}\n"))
    real = grpc.unary_unary_rpc_method_handler(lambda request, context: None)
    for method in HEALTH_METHODS:
        assert intercept(AuthInterceptor(tokens), method, (), real)[0] is real
        handler, _ = intercept(AuthInterceptor(tokens, auth_health=True), method, (), real)
        assert refused_with(handler)[0] == UNAUTHENTICATED


# --- a real server: every RPC x every kind of caller -------------------------------------------


def server_live(channel, metadata):
    assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), metadata=metadata, timeout=TIMEOUT).live


def server_ready(channel, metadata):
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerReady(pb.ServerReadyRequest(), metadata=metadata, timeout=TIMEOUT).ready


def model_ready(channel, metadata):
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ModelReady(pb.ModelReadyRequest(name="tiny"), metadata=metadata, timeout=TIMEOUT).ready


def server_metadata(channel, metadata):
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=metadata, timeout=TIMEOUT).name == "edgecnn"


def model_metadata(channel, metadata):
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ModelMetadata(pb.ModelMetadataRequest(name="tiny"), metadata=metadata, timeout=TIMEOUT).name == "tiny"


def model_infer(channel, metadata):
    request = codec.images_request("tiny", random_images(2))
    response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=metadata, timeout=TIMEOUT)
    assert response.model_name == "tiny" and response.outputs


def health_check(channel, metadata):
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def health_watch(channel, metadata):
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=TIMEOUT)
    try:
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stream.cancel()


def reflection_list(channel, metadata):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    stream = stub.ServerReflectionInfo(requests, metadata=metadata, timeout=TIMEOUT)
    try:
        services = {s.name for s in next(stream).list_services_response.service}
    finally:
        stream.cancel()
    assert "inference.GRPCInferenceService" in services


def repository_index(channel, metadata):
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=metadata, timeout=TIMEOUT)
    assert ("tiny", "READY") in {(m.name, m.state) for m in index.models}


def repository_load(channel, metadata):
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="spare"), metadata=metadata, timeout=TIMEOUT)


def repository_unload(channel, metadata):
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="spare"), metadata=metadata, timeout=TIMEOUT)


# name -> (call, scope it needs; None: open health)
OIP_CALLS = {
    "ServerLive": (server_live, None),
    "ServerReady": (server_ready, None),
    "ModelReady": (model_ready, "metadata"),
    "ServerMetadata": (server_metadata, "metadata"),
    "ModelMetadata": (model_metadata, "metadata"),
    "ModelInfer": (model_infer, "inference"),
    "RepositoryIndex": (repository_index, "metadata"),
    "RepositoryModelLoad": (repository_load, "admin"),
    "RepositoryModelUnload": (repository_unload, "admin"),
}
HEALTH_CALLS = {
    "ServerLive": (server_live, None),
    "ServerReady": (server_ready, None),
    "HealthCheck": (health_check, None),
    "HealthWatch": (health_watch, None),
}
CALLS = {**OIP_CALLS, **HEALTH_CALLS, "Reflection": (reflection_list, "metadata")}
CALLERS = ("no_token", "unknown_token", "token_without_scope", "right_token")


def caller_metadata(caller: str, scope: str | None):
    if caller == "no_token":
        return ()
    if caller == "unknown_token":
        return bearer_metadata(UNKNOWN_TOKEN)
    if caller == "token_without_scope":
        return bearer_metadata(TOKEN_OF[OTHER_SCOPE.get(scope, "inference")])
    return bearer_metadata(TOKEN_OF[scope] if scope else TOKEN_OF["inference"])


def expected_status(caller: str, scope: str | None):
    if scope is None or caller == "right_token":
        return OK
    return PERMISSION_DENIED if caller == "token_without_scope" else UNAUTHENTICATED


def status_of(call, channel, metadata) -> tuple[grpc.StatusCode, str]:
    try:
        call(channel, metadata)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return OK, ""


def check(call, channel, caller, scope):
    code, details = status_of(call, channel, caller_metadata(caller, scope))
    assert code == expected_status(caller, scope), details
    if code == UNAUTHENTICATED:
        assert details == UNAUTHENTICATED_DETAILS
    if code == PERMISSION_DENIED:
        assert f"'{scope}'" in details
        assert not any(token in details for token in EVERY_TOKEN)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    lines = [ALL_TOKEN, *(f"{token} {scope}" for scope, token in TOKEN_OF.items())]
    return write(tmp_path_factory.mktemp("auth") / "tokens", "\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def auth_channel(tiny_model, token_file, tmp_path_factory):
    """An explicit-control repository: `tiny` loaded at start, `spare` for the load/unload calls."""
    repository = tmp_path_factory.mktemp("auth-repository")
    for name in ("tiny", "spare"):
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "1" / "model.onnx").write_bytes(tiny_model.read_bytes())
    settings = settings_for(repository, auth_token_file=token_file, reflection=True, model_control_mode="explicit",
                            load_model=("tiny",))
    running = start_server(settings)
    try:
        with grpc.insecure_channel(running.address) as channel:
            yield channel
    finally:
        running.stop(grace=0)


@pytest.fixture(scope="module")
def closed_health_channel(tiny_model, token_file):
    running = start_server(settings_for(tiny_model, auth_token_file=token_file, auth_health=True))
    try:
        with grpc.insecure_channel(running.address) as channel:
            yield channel
    finally:
        running.stop(grace=0)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("rpc", list(CALLS))
def test_matrix(auth_channel, rpc, caller):
    call, scope = CALLS[rpc]
    check(call, auth_channel, caller, scope)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("rpc", list(HEALTH_CALLS))
def test_matrix_with_auth_health(closed_health_channel, rpc, caller):
    call, _ = HEALTH_CALLS[rpc]
    check(call, closed_health_channel, caller, "metadata")


def test_all_scopes_token_calls_everything(auth_channel):
    for call, _ in CALLS.values():
        call(auth_channel, bearer_metadata(ALL_TOKEN))


@pytest.mark.parametrize(
    "token, expected",
    [(None, UNAUTHENTICATED), (UNKNOWN_TOKEN, UNAUTHENTICATED), (TOKEN_OF["inference"], PERMISSION_DENIED),
     (ALL_TOKEN, grpc.StatusCode.UNIMPLEMENTED)],
    ids=["no_token", "unknown_token", "inference_token", "all_scopes_token"],
)
def test_unimplemented_method_needs_auth_first(auth_channel, token, expected):
    call = auth_channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")
    metadata = () if token is None else bearer_metadata(token)
    with pytest.raises(grpc.RpcError) as error:
        call(b"", metadata=metadata, timeout=TIMEOUT)
    assert error.value.code() == expected


def test_no_log_record_carries_a_token(auth_channel, caplog):
    logger = logging.getLogger("edgecnn")
    logger.addHandler(caplog.handler)  # also when configure_logging stopped "edgecnn" propagating
    caplog.set_level(logging.DEBUG, logger="edgecnn")
    try:
        for caller in CALLERS:
            for call, scope in CALLS.values():
                status_of(call, auth_channel, caller_metadata(caller, scope))
        status_of(model_infer, auth_channel, bearer_metadata(ALL_TOKEN))
        status_of(model_infer, auth_channel, (("authorization", f"Basic {ALL_TOKEN}"),))
    finally:
        logger.removeHandler(caplog.handler)
    refusals = [r for r in caplog.records if r.name == "edgecnn.serve.auth"]
    assert {(r.method, r.status) for r in refusals} >= {
        ("/inference.GRPCInferenceService/ModelInfer", "UNAUTHENTICATED"),
        ("/inference.GRPCInferenceService/ModelInfer", "PERMISSION_DENIED"),
    }
    assert all(r.levelno == logging.INFO for r in refusals)
    for record in caplog.records:
        text = record.getMessage() + repr(vars(record))
        assert not any(token in text for token in EVERY_TOKEN), record
