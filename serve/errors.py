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
