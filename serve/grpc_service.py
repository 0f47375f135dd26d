"""The Open Inference Protocol service: proto in, batcher, proto out.

Follow one request: `ModelInfer` below -> `Batcher.infer` (serve/batcher.py) -> `Model.run`
(serve/model.py). Tensor encoding lives in serve/codec.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import grpc
import numpy as np

from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from edgecnn.serve import codec
from edgecnn.serve.batcher import Batcher, BatchResult
from edgecnn.serve.errors import InvalidInput, ModelNotFound, QueueFull, ServeError, shown
from edgecnn.serve.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_images
from edgecnn.serve.metrics import Metrics
from edgecnn.serve.model import Model
from edgecnn.serve.lifecycle import ControlError, ModelStore

log = logging.getLogger(__name__)

SERVER_NAME = "edgecnn"
EXTENSIONS = ["classification", "model_repository"]
TensorMetadata = pb.ModelMetadataResponse.TensorMetadata


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        models: ModelStore,
        metrics: Metrics,
        decode_executor: Executor,
        version: str,
        limits: Limits | None = None,
    ) -> None:
        self._models = models
        self._metrics = metrics
        self._decode_executor = decode_executor
        self._version = version
        self._limits = limits or Limits()
        self._decode_backlog = 0  # encoded images handed to the decode threads and not yet decoded
        self.ready = False  # true between start-up and the first shutdown signal
        self.drain = Drain()

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.ready)

    async def ModelReady(self, request, context):
        try:
            self._models.served(request.name, request.version)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.ready)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        try:
            model = self._models.get(request.name, request.version)
        except ModelNotFound as error:
            return refuse(context, error.code, str(error), pb.ModelMetadataResponse)
        meta = model.metadata
        datatypes = model.output_datatypes()
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=self._models.versions(model.name),
            platform=model.platform,
            inputs=[TensorMetadata(name=meta.input_name, datatype=meta.input_datatype, shape=[-1, *model.image_shape])],
            outputs=[
                TensorMetadata(name=name, datatype=datatypes[name], shape=[-1, meta.num_classes])
                for name in meta.output_names
            ],
        )

    async def RepositoryIndex(self, request, context):
        """Every version the server knows of: READY, UNAVAILABLE (with why) or LOADING."""
        Index = pb.RepositoryIndexResponse.ModelIndex
        rows = self._models.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(models=[Index(name=n, version=v, state=s, reason=r) for n, v, s, r in rows])

    async def RepositoryModelLoad(self, request, context):
        return await self._control(self._models.load, request.model_name, context, pb.RepositoryModelLoadResponse)

    async def RepositoryModelUnload(self, request, context):
        return await self._control(self._models.unload, request.model_name, context, pb.RepositoryModelUnloadResponse)

    async def _control(self, action, name: str, context, response_type):
        try:
            await action(name)
        except ControlError as error:
            log.info("model control refused", extra={"model": shown(name), "error": str(error)})
            return refuse(context, error.code, str(error), response_type)
        except Exception as error:  # a bug: say so, and keep serving
            log.exception("model control failed unexpectedly", extra={"model": shown(name)})
            return refuse(context, grpc.StatusCode.INTERNAL, f"internal error: {shown(str(error), 300)}", response_type)
        return response_type()

    async def ModelInfer(self, request, context):
        if self.drain.refusing:
            return await self.drain.refuse(context)
        self.drain.enter()
        try:
            return await self._model_infer(request, context)
        finally:
            self.drain.leave()

    async def _model_infer(self, request, context):
        started = time.perf_counter()
        try:
            served = self._models.served(request.model_name, request.model_version)
        except ModelNotFound as error:
            # Unknown names stay out of the metric labels: clients could grow them without bound.
            self._metrics.count_request("", "", error.code.name)
            return refuse(context, error.code, str(error))
        model, batcher = served.model, served.batcher
        served.in_flight += 1  # a new version swapped in meanwhile waits for this one before retiring this
        status = "OK"
        try:
            return await self._infer(model, batcher, request, context)
        except ServeError as error:
            status = error.code.name
            level = logging.ERROR if error.code == grpc.StatusCode.INTERNAL else logging.INFO  # client mistakes are routine
            log.log(level, "request failed", extra={"model": model.name, "status": status, "error": str(error)})
            return refuse(context, error.code, str(error))
        except asyncio.CancelledError:  # grpc cancels the handler when the client cancels or its deadline passes
            remaining = context.time_remaining()
            status = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            raise
        except Exception as error:  # a bug: say so, and keep serving
            status = "INTERNAL"
            log.exception("request failed unexpectedly", extra={"model": model.name})
            return refuse(context, grpc.StatusCode.INTERNAL, f"internal error: {error}")
        finally:
            served.in_flight -= 1
            self._metrics.count_request(model.name, model.version, status)
            batcher.metrics.request_seconds.observe(time.perf_counter() - started)

    async def _infer(self, model: Model, batcher: Batcher, request: pb.ModelInferRequest, context):
        meta = model.metadata
        images = codec.request_images(request, meta, self._limits.max_request_images)
        outputs = codec.requested_outputs(request, meta)
        if isinstance(images, list):  # encoded images: decode off the event loop
            images = await self._decode(images, model)
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        result = await batcher.infer(images, deadline)
        return _response(request, model, outputs, result)

    async def _decode(self, encoded: list[bytes], model: Model) -> np.ndarray:
        """Decode on the decode threads; their backlog is bounded, so queued bytes cannot pile up."""
        limit = self._limits.max_decode_backlog
        if self._decode_backlog and self._decode_backlog + len(encoded) > limit:
            raise QueueFull(
                f"{self._decode_backlog} encoded images are waiting to be decoded; {len(encoded)} more would pass "
                f"--max-decode-backlog {limit}; retry later"
            )
        self._decode_backlog += len(encoded)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._decode_executor, decode_images, encoded, *model.image_shape, self._limits.max_image_pixels
            )
        except ImageDecodeError as exc:
            raise InvalidInput(f"input {model.metadata.input_name!r}: {exc}") from exc
        finally:
            self._decode_backlog -= len(encoded)


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (the ServeSettings of the same names, resolved)."""

    max_request_images: int = 64
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_decode_backlog: int = 256


class Drain:
    """ModelInfer calls in flight, and the refusal of new ones once a drain has begun.

    grpc.aio's ``Server.stop`` cancels calls its transport has received but no handler has picked up
    (grpc/grpc#41785): clients see CANCELLED, which nothing retries. So a drain refuses new calls
    itself, waits for the admitted ones, and only then stops gRPC. Refused calls are held until
    gRPC's shutdown has begun (its GOAWAY tells clients to stop sending here) and then answered
    UNAVAILABLE, which clients retry elsewhere; closed-loop callers held this way send nothing new
    in between, so no call is left in the transport when stop() runs. Event-loop only.
    """

    def __init__(self) -> None:
        self.refusing = False
        self.in_flight = 0
        self.last_arrival = 0.0  # time.monotonic() of the latest ModelInfer, admitted or refused
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()
        self.last_arrival = time.monotonic()

    def leave(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    async def refuse(self, context) -> pb.ModelInferResponse:
        self.last_arrival = time.monotonic()
        await self._stopping.wait()
        return refuse(context, grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica")

    async def wait_idle(self, quiet_s: float = 0.02, quiet_wait_s: float = 0.5) -> None:
        """Until no admitted call is in flight and no new call has come for ``quiet_s``; callers that
        keep sending (open loop) are given up on ``quiet_wait_s`` after the last admitted call ended."""
        while True:
            await self._idle.wait()
            idle_since = time.monotonic()
            while not self.in_flight:
                quiet_for = time.monotonic() - self.last_arrival
                if quiet_for >= quiet_s or time.monotonic() - idle_since >= quiet_wait_s:
                    return
                await asyncio.sleep(max(quiet_s - quiet_for, 0.001))

    def release_refused(self) -> None:
        """gRPC's shutdown has begun: answer the held calls (UNAVAILABLE)."""
        self._stopping.set()


def _response(
    request: pb.ModelInferRequest, model: Model, outputs: list[codec.RequestedOutput], result: BatchResult
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
    for output in outputs:
        datatype, shape, raw = codec.output_tensor(result.outputs[output.index], output.top_k, model.metadata.labels)
        response.outputs.add(name=output.name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(raw)
    # Server-side timings for clients and benchmarks (edgecnn bench reads these names).
    response.parameters["queue_us"].int64_param = result.queue_us
    response.parameters["compute_us"].int64_param = result.compute_us
    response.parameters["batch_size"].int64_param = result.batch_size
    return response


def refuse(context, code: grpc.StatusCode, details: str, response_type=pb.ModelInferResponse):
    """End a call with ``code``: a status set, not context.abort(), whose exception would keep the
    request (megabytes, for a refused big one) in a reference cycle until the garbage collector runs."""
    context.set_code(code)
    context.set_details(details)
    return response_type()


class MalformedRequest:
    """What the service receives for bytes that are not a valid request message (answered INVALID_ARGUMENT)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(message_type):
    def parse(raw: bytes):
        try:
            return message_type.FromString(raw)
        except Exception as exc:  # noqa: BLE001 - DecodeError, or invalid UTF-8 in a string field
            return MalformedRequest(f"not a valid {message_type.DESCRIPTOR.name} message: {shown(str(exc), 200)}")
    return parse


def _answering_malformed(method, response_type):
    async def handle(request, context):
        if request.__class__ is MalformedRequest:
            return refuse(context, grpc.StatusCode.INVALID_ARGUMENT, request.error, response_type)
        return await method(request, context)
    return handle


def add_to_server(service: InferenceService, server: grpc.aio.Server) -> None:
    """Every RPC of the service, with request bytes parsed so that a malformed message is the client's
    INVALID_ARGUMENT (gRPC's own parser would answer UNKNOWN and log a traceback)."""
    descriptor = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    for method in descriptor.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _answering_malformed(getattr(service, method.name), response_type),
            request_deserializer=_tolerant(request_type),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(descriptor.full_name, handlers),))
    server.add_registered_method_handlers(descriptor.full_name, handlers)
