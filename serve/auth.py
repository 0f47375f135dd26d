"""Bearer-token authentication with scopes: one gRPC server interceptor, deny by default.

Token file (``--auth-token-file``): one token per line, optionally followed by whitespace and
comma-separated scopes; a token without scopes has them all. Blank lines and ``#`` lines are ignored::

    # ops dashboard
    k3Jq0vN8yVt2mWc1pXr7sLd9 metadata
    Zb5tQ1nE8uYh3aKf6oPw2jGm inference,metadata
    Hs4Lx9cR1vTe7nBq2kWy5zUd

The last token has every scope. Scopes, by method:
    inference   ModelInfer
    metadata    ServerMetadata, ModelMetadata, ModelReady, RepositoryIndex, server reflection; health when
                auth_health
    admin       RepositoryModelLoad/Unload, and every method not named here (deny by default)
    (none)      grpc.health.v1 Check/Watch, ServerLive, ServerReady, unless auth_health

Clients send ``authorization: Bearer TOKEN`` metadata (``bearer_metadata``). Refusals are
UNAUTHENTICATED (no, malformed or unknown token) or PERMISSION_DENIED (a known token without the
scope), logged at INFO with the method and status. No token's text ever reaches a message or a log.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterator

import grpc

from edgecnn.serve.userfiles import read_user_file

log = logging.getLogger(__name__)

SCOPES = ("inference", "metadata", "admin")
MIN_TOKEN_CHARS = 16

_OIP = "/inference.GRPCInferenceService/"

# The scope each protected method needs; methods absent from this table and from HEALTH_METHODS need admin.
REQUIRED_SCOPE: dict[str, str] = {
    _OIP + "ModelInfer": "inference",
    _OIP + "ServerMetadata": "metadata",
    _OIP + "ModelMetadata": "metadata",
    _OIP + "ModelReady": "metadata",
    _OIP + "RepositoryIndex": "metadata",
    _OIP + "RepositoryModelLoad": "admin",
    _OIP + "RepositoryModelUnload": "admin",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "metadata",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": "metadata",
}
# Open unless auth_health; then they need metadata.
HEALTH_METHODS = (
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    _OIP + "ServerLive",
    _OIP + "ServerReady",
)

HEADER_UNSAFE = "the token has characters an HTTP header value cannot carry (visible ASCII only)"
UNAUTHENTICATED_DETAILS = "missing or unknown bearer token: send 'authorization: Bearer TOKEN' metadata"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """Known tokens, kept only as SHA-256 digests, each with its scopes.

    Why lookups are constant-time with respect to the secret: the dict hashes and compares the
    *digest* of the presented token, never the token itself. Any timing difference (hash bucket,
    memcmp stopping early) tells an attacker about a SHA-256 output, from which nothing about a
    stored token can be worked back.
    """

    def __init__(self, scopes_by_digest: dict[bytes, frozenset[str]]) -> None:
        self._scopes = dict(scopes_by_digest)

    def __len__(self) -> int:
        return len(self._scopes)

    def scopes_of(self, token: str) -> frozenset[str] | None:
        """The token's scopes, or None for an unknown token."""
        return self._scopes.get(_digest(token))


def _header_safe(token: str) -> bool:
    # Visible ASCII only: what an HTTP/2 header (gRPC ASCII metadata) value may carry, less whitespace,
    # which separates the token from its scopes.
    return all("!" <= ch <= "~" for ch in token)


def load_tokens(path: Path) -> TokenTable:
    """Parse the ``--auth-token-file``; ValueError naming the flag, the file and the line for anything wrong
    (never the token)."""
    path = Path(path)
    flag = f"--auth-token-file {path}"
    table: dict[bytes, tuple[int, frozenset[str]]] = {}  # digest -> (line number, scopes)
    for number, line in _token_lines(_read_text(path, "--auth-token-file")):
        token, *rest = line.split(None, 1)
        where = f"{flag}, line {number}"
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"{where}: the token is shorter than {MIN_TOKEN_CHARS} characters, so it could be guessed")
        if not _header_safe(token):
            raise ValueError(f"{where}: {HEADER_UNSAFE}")
        scopes = SCOPES
        if rest:
            scopes = tuple(scope.strip() for scope in rest[0].split(","))
            for scope in scopes:
                if scope not in SCOPES:
                    # Name the scope only when it is too short to be a token pasted in by mistake.
                    named = f" {scope!r}" if len(scope) < MIN_TOKEN_CHARS else ""
                    raise ValueError(f"{where}: unknown scope{named}; scopes are {', '.join(SCOPES)}")
        digest = _digest(token)
        if digest in table:
            raise ValueError(f"{where}: duplicates the token of line {table[digest][0]}")
        table[digest] = (number, frozenset(scopes))
    if not table:
        raise ValueError(f"{flag}: no token in the file (lines \"TOKEN\" or \"TOKEN scope,scope\")")
    return TokenTable({digest: scopes for digest, (_, scopes) in table.items()})


def read_token_file(path: Path) -> str:
    """For clients (``--token-file``): the token of the file's first token line (its first field), so a
    trailing newline, CRLF or spaces around it do not matter; ValueError naming the flag and the file."""
    path = Path(path)
    for number, line in _token_lines(_read_text(path, "--token-file")):
        token = line.split()[0]
        if not _header_safe(token):
            raise ValueError(f"--token-file {path}, line {number}: {HEADER_UNSAFE}")
        return token
    raise ValueError(f"--token-file {path}: no token in the file")


def _read_text(path: Path, flag: str) -> str:
    """A token file's text; a UTF-8 byte-order mark (as some editors write) is dropped."""
    try:
        return read_user_file(path, flag).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{flag} {path}: not UTF-8 text") from None


def _token_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, stripped line) of each line that is neither blank nor a ``#`` comment."""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),)


def _bearer_token(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":  # gRPC lowercases metadata keys
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip() or None
    return None


def _refusal(handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` (unary-unary if None) that aborts."""

    async def abort(request_or_iterator, context):
        await context.abort(code, details)

    if handler is None:  # unknown method: raw bytes in, nothing out
        return grpc.unary_unary_rpc_method_handler(abort)
    coders = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **coders)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **coders)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **coders)
    return grpc.unary_unary_rpc_method_handler(abort, **coders)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks every RPC's bearer token against ``tokens`` and the scope its method needs."""

    def __init__(self, tokens: TokenTable, *, auth_health: bool = False) -> None:
        self._tokens = tokens
        health_scope = "metadata" if auth_health else None  # None: open
        self._required: dict[str, str | None] = {**REQUIRED_SCOPE, **dict.fromkeys(HEALTH_METHODS, health_scope)}

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        scope = self._required.get(method, "admin")
        if scope is None:
            return await continuation(handler_call_details)
        token = _bearer_token(handler_call_details.invocation_metadata)
        scopes = None if token is None else self._tokens.scopes_of(token)
        if scopes is not None and scope in scopes:
            return await continuation(handler_call_details)  # None for an unknown method: UNIMPLEMENTED
        # Refused. The real handler (a lookup, nothing runs) tells the streaming kind to refuse with.
        handler = await continuation(handler_call_details)
        if scopes is None:
            code, details = grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS
        else:
            code, details = grpc.StatusCode.PERMISSION_DENIED, f"this call needs a token with the '{scope}' scope"
        log.info("call refused", extra={"method": method, "status": code.name})
        return _refusal(handler, code, details)


def interceptor_for(settings) -> AuthInterceptor | None:
    """The interceptor ``settings`` ask for (``auth_token_file``, ``auth_health``), or None without tokens."""
    if settings.auth_token_file is None:
        return None
    return AuthInterceptor(load_tokens(settings.auth_token_file), auth_health=settings.auth_health)
