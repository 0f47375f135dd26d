"""Request failures with the gRPC status each one maps to (the service aborts with it)."""

from __future__ import annotations

import grpc


class ServeError(Exception):
    code = grpc.StatusCode.INTERNAL


class ModelNotFound(ServeError):
    code = grpc.StatusCode.NOT_FOUND


class InvalidInput(ServeError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class QueueFull(ServeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlinePassed(ServeError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotReady(ServeError):
    code = grpc.StatusCode.UNAVAILABLE


def shown(value: object, limit: int = 64, quote: bool = True) -> str:
    """A client's value as an error message quotes it (strings in quotes), cut to ``limit`` characters:
    details travel back in a header, and one as long as the client's string would be refused."""
    text = repr(value) if isinstance(value, str) and quote else str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
