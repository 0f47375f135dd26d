"""The transport floor: a bare Open Inference Protocol server that answers ModelInfer without compute.

    python -m edgecnn.benchmarks.echo [--port 0] [--response FILE] [--metadata FILE] [--hop]

It is the same server flavour as `edgecnn serve` (grpc.aio, one event loop, the same message size
limits), so the difference between the two is the model's work, the batcher and the codec, not gRPC.
Each request is parsed (a real server must parse it too) and answered with a canned response: the
serialised ModelInferResponse in ``--response``, captured from the real server so both send the
same outputs back (less its parameters: the echo claims no queue or compute time), or, without it,
the request's own inputs as outputs. ``--metadata`` holds a serialised ModelMetadataResponse to
answer ModelMetadata with. It prints ``LISTENING <port>`` when ready.

``--hop`` answers each request only after a round trip through a worker thread that does nothing:
the least any server that computes off the event loop pays (requests that queue while the thread is
busy go back together, one hop per batch, as edgecnn serve's batcher does). Against the plain echo
it shows how much of a served figure that structure alone costs on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import signal
import sys
import threading
from pathlib import Path

import grpc

from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.serve.client import CHANNEL_OPTIONS
from edgecnn.serve.settings import ServeSettings

SERVICE = "inference.GRPCInferenceService"


def echo_response(request: pb.ModelInferRequest) -> bytes:
    """The request's inputs sent back as outputs: the response when no canned one is given."""
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)
    for tensor in request.inputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    response.raw_output_contents.extend(request.raw_input_contents)
    return response.SerializeToString()


def without_parameters(response: bytes) -> bytes:
    """A captured response minus its parameters: the echo must not claim the real server's queue/compute times."""
    message = pb.ModelInferResponse.FromString(response)
    message.parameters.clear()
    return message.SerializeToString()


class WorkerThreadHop:
    """``await hop()`` returns after a worker thread has seen the request: one thread, one queue."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[asyncio.Future] = queue.SimpleQueue()
        threading.Thread(target=self._work, name="echo-hop", daemon=True).start()

    async def __call__(self) -> None:
        future = asyncio.get_running_loop().create_future()
        self._queue.put(future)
        await future

    def _work(self) -> None:
        while True:
            batch = [self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get())
            batch[0].get_loop().call_soon_threadsafe(_release, batch)


def _release(batch: list[asyncio.Future]) -> None:
    for future in batch:
        if not future.done():
            future.set_result(None)


def build_server(
    port: int, response: bytes | None, metadata: bytes | None, hop: WorkerThreadHop | None = None
) -> tuple[grpc.aio.Server, int]:
    async def model_infer(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = pb.ModelInferRequest.FromString(raw)
        if hop is not None:
            await hop()
        return response if response is not None else echo_response(request)

    async def model_metadata(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if metadata is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "echo server started without --metadata")
        return metadata

    async def server_live(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerReadyResponse(ready=True).SerializeToString()

    # No (de)serialisers: handlers get and return bytes, so the echo does no protobuf work beyond the parse.
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(fn)
        for name, fn in {
            "ModelInfer": model_infer,
            "ModelMetadata": model_metadata,
            "ServerLive": server_live,
            "ServerReady": server_ready,
        }.items()
    }
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    return server, bound


async def serve(port: int, response: bytes | None, metadata: bytes | None, hop: bool) -> None:
    if hop:  # the same GIL hand-over as edgecnn serve, whose worker thread competes for it the same way
        sys.setswitchinterval(ServeSettings.gil_switch_interval_us / 1e6)
    server, bound = build_server(port, response, metadata, WorkerThreadHop() if hop else None)
    await server.start()
    print(f"LISTENING {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--response", type=Path, help="serialised ModelInferResponse to answer every ModelInfer with")
    parser.add_argument("--metadata", type=Path, help="serialised ModelMetadataResponse to answer ModelMetadata with")
    parser.add_argument("--hop", action="store_true", help="answer after a round trip through a worker thread")
    args = parser.parse_args(argv)
    response = without_parameters(args.response.read_bytes()) if args.response else None
    metadata = args.metadata.read_bytes() if args.metadata else None
    asyncio.run(serve(args.port, response, metadata, args.hop))


if __name__ == "__main__":
    main()
