"""The Open Inference Protocol service: proto in, batcher, proto out.

Follow one request: `ModelInfer` below -> `Batcher.infer` (serve/batcher.py) -> `Model.run`
(serve/model.py). Tensor encoding lives in serve/codec.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor

import grpc

from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from edgecnn.serve import codec
from edgecnn.serve.batcher import Batcher, BatchResult
from edgecnn.serve.errors import InvalidInput, ModelNotFound, ServeError
from edgecnn.serve.images import ImageDecodeError, decode_images
from edgecnn.serve.metrics import Metrics
from edgecnn.serve.model import Model
from edgecnn.serve.repository import Repository

log = logging.getLogger(__name__)

SERVER_NAME = "edgecnn"
EXTENSIONS = ["classification"]
TensorMetadata = pb.ModelMetadataResponse.TensorMetadata


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        repository: Repository,
        batchers: dict[tuple[str, str], Batcher],
        metrics: Metrics,
        decode_executor: Executor,
        version: str,
    ) -> None:
        self._repository = repository
        self._batchers = batchers
        self._metrics = metrics
        self._decode_executor = decode_executor
        self._version = version
        self.ready = False  # true between start-up and the first shutdown signal

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.ready)

    async def ModelReady(self, request, context):
        try:
            self._repository.get(request.name, request.version)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.ready)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        try:
            model = self._repository.get(request.name, request.version)
        except ModelNotFound as error:
            await context.abort(error.code, str(error))
        meta = model.metadata
        datatypes = model.output_datatypes()
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=self._repository.versions(model.name),
            platform=model.platform,
            inputs=[TensorMetadata(name=meta.input_name, datatype=meta.input_datatype, shape=[-1, *model.image_shape])],
            outputs=[
                TensorMetadata(name=name, datatype=datatypes[name], shape=[-1, meta.num_classes])
                for name in meta.output_names
            ],
        )

    async def ModelInfer(self, request, context):
        started = time.perf_counter()
        try:
            model = self._repository.get(request.model_name, request.model_version)
        except ModelNotFound as error:
            # Unknown names stay out of the metric labels: clients could grow them without bound.
            self._metrics.count_request("", "", error.code.name)
            await context.abort(error.code, str(error))
        status = "OK"
        try:
            return await self._infer(model, request, context)
        except ServeError as error:
            status = error.code.name
            level = logging.ERROR if error.code == grpc.StatusCode.INTERNAL else logging.INFO  # client mistakes are routine
            log.log(level, "request failed", extra={"model": model.name, "status": status, "error": str(error)})
            await context.abort(error.code, str(error))
        except asyncio.CancelledError:  # grpc cancels the handler when the client cancels or its deadline passes
            remaining = context.time_remaining()
            status = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            raise
        except Exception as error:  # a bug: say so, and keep serving
            status = "INTERNAL"
            log.exception("request failed unexpectedly", extra={"model": model.name})
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {error}")
        finally:
            self._metrics.count_request(model.name, model.version, status)
            self._batchers[model.name, model.version].metrics.request_seconds.observe(time.perf_counter() - started)

    async def _infer(self, model: Model, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        meta = model.metadata
        images = codec.request_images(request, meta)
        outputs = codec.requested_outputs(request, meta)
        loop = asyncio.get_running_loop()
        if isinstance(images, list):  # encoded images: decode off the event loop
            try:
                images = await loop.run_in_executor(self._decode_executor, decode_images, images, *model.image_shape)
            except ImageDecodeError as exc:
                raise InvalidInput(f"input {meta.input_name!r}: {exc}") from exc
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        result = await self._batchers[model.name, model.version].infer(images, deadline)
        return _response(request, model, outputs, result)


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


def add_to_server(service: InferenceService, server: grpc.aio.Server) -> None:
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
