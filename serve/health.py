"""grpc.health.v1 (the stubs of grpcio-health-checking) for a server that drains.

Unlike the stock aio servicer, Watch streams end once shutdown has reported NOT_SERVING:
an open watch would otherwise count as an in-flight RPC and hold the drain until --grace ran out.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self._status: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._draining = False

    async def set_all(self, services: list[str], status: int) -> None:
        async with self._changed:
            self._status.update({service: status for service in services})
            self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING for good; watchers hear it, then their streams end."""
        async with self._changed:
            self._draining = True
            self._status = {service: NOT_SERVING for service in self._status}
            self._changed.notify_all()

    async def Check(self, request, context):
        if request.service not in self._status:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=self._status[request.service])

    async def Watch(self, request, context):
        last = None
        async with self._changed:
            while True:
                status = self._status.get(request.service, SERVICE_UNKNOWN)
                if status != last:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                if self._draining:
                    return
                await self._changed.wait()


def add_to_server(servicer: HealthServicer, server: grpc.aio.Server) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
