"""Build, start and stop the server: OIP + health + reflection on grpc.aio, metrics, signals, workers.

    run(settings)             `edgecnn serve`: blocks until SIGTERM/SIGINT, drains, returns 0
    start_server(settings)    a server on a background thread (tests, demos): .port, .stop()
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from importlib import metadata as importlib_metadata

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.serve.batcher import Batcher, RunSlots
from edgecnn.serve import grpc_service, health
from edgecnn.serve.grpc_service import InferenceService
from edgecnn.serve.logs import configure_logging
from edgecnn.serve.metrics import MULTIPROC_ENV, Metrics, serve_metrics
from edgecnn.serve.repository import Repository
from edgecnn.serve.settings import ServeSettings

log = logging.getLogger(__name__)

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def _package_version() -> str:
    try:
        return importlib_metadata.version("edgecnn")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


class InferenceServer:
    """Everything one server process runs; ``start`` loads and warms the models, then listens."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.port: int | None = None
        self.metrics_port: int | None = None

    async def start(self) -> None:
        """Load, warm up and listen; on failure (a port in use, say) nothing is left running."""
        s = self.settings
        self.repository = Repository.load(s)
        self.metrics = Metrics()
        # At most --instances runs at a time per process, whichever models they are for: each run
        # spans intra_op_threads cores, and more runs side by side would fight over them.
        run_slots = RunSlots(s.instances_resolved)
        self._decode = ThreadPoolExecutor(s.decode_threads_resolved, thread_name_prefix="decode")
        self.batchers = {
            (m.name, m.version): Batcher(
                m,
                max_batch_size=s.max_batch_size,
                max_queue_delay_us=s.max_queue_delay_us,
                max_queue_size=s.max_queue_size,
                instances=s.instances_resolved,
                run_slots=run_slots,
                metrics=self.metrics.for_model(m.name, m.version),
            )
            for m in self.repository
        }
        self.service = InferenceService(self.repository, self.batchers, self.metrics, self._decode, _package_version())
        try:
            await self._listen()
        except BaseException:
            await self._stop_workers()
            raise
        for model in self.repository:  # after every model is loaded and timed, so they do not overlap
            model.open_instance_sessions_in_background(s)

    async def _listen(self) -> None:
        s = self.settings
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                # Several --workers processes bind the same port; a lone server must fail if it is taken.
                ("grpc.so_reuseport", 1 if s.workers > 1 else 0),
            ]
        )
        grpc_service.add_to_server(self.service, self._grpc)
        self._health = health.HealthServicer()
        health.add_to_server(self._health, self._grpc)
        reflection.enable_server_reflection([INFERENCE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME], self._grpc)
        self.port = self._grpc.add_insecure_port(f"{s.host}:{s.port}")
        await self._grpc.start()
        await self._health.set_all(["", INFERENCE_SERVICE], health.SERVING)
        self.service.ready = True
        self._metrics_http = None
        if s.metrics:
            self._metrics_http, self.metrics_port = serve_metrics(s.metrics_port, s.host, self.metrics.registry)
        log.info(
            "serving",
            extra={
                "address": f"{s.host}:{self.port}",
                "metrics_port": self.metrics_port,
                "models": [f"{m.name}/{m.version}" for m in self.repository],
                "provider": next(iter(self.repository)).provider,
                "max_batch_size": s.max_batch_size,
                "max_queue_delay_us": s.max_queue_delay_us,
                "instances": s.instances_resolved,
                "intra_op_threads": s.intra_op_threads_resolved,
                "workers": s.workers,
            },
        )

    async def stop(self, grace: float | None) -> None:
        """Health NOT_SERVING, refuse new RPCs, give in-flight ones ``grace`` seconds, then close."""
        self.service.ready = False
        await self._health.enter_graceful_shutdown()
        await self._grpc.stop(grace)
        await self._stop_workers()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()

    async def _stop_workers(self) -> None:
        """The batchers' compute threads (answering what is still queued) and the decode threads."""
        for batcher in self.batchers.values():
            await batcher.stop()
        self._decode.shutdown(wait=False, cancel_futures=True)


# --- `edgecnn serve` ---------------------------------------------------------------------------


def run(settings: ServeSettings) -> int:
    """Serve until SIGTERM/SIGINT, then drain within ``settings.grace``; the process exit code."""
    configure_logging(settings.log_level)
    if settings.workers > 1:
        return _run_workers(settings)
    return asyncio.run(_serve_until_signal(settings))


async def _serve_until_signal(settings: ServeSettings) -> int:
    sys.setswitchinterval(settings.gil_switch_interval_us / 1e6)  # process-wide: only where we own the process
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = InferenceServer(settings)
    await server.start()
    await stop.wait()
    log.info("draining", extra={"grace_s": settings.grace})
    await server.stop(settings.grace)
    log.info("stopped")
    return 0


def _worker_main(settings: ServeSettings) -> None:
    configure_logging(settings.log_level)
    raise SystemExit(asyncio.run(_serve_until_signal(settings)))


def _run_workers(settings: ServeSettings) -> int:
    """``workers`` processes share the port (SO_REUSEPORT); this one forwards signals and serves their metrics."""
    from prometheus_client import multiprocess

    metrics_dir = tempfile.mkdtemp(prefix="edgecnn-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir  # spawned workers record their metrics there
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no forked grpc or onnxruntime state

    workers = [
        spawn.Process(target=_worker_main, args=(replace(settings, metrics=False),), name=f"edgecnn-worker-{i}")
        for i in range(settings.workers)
    ]
    for worker in workers:
        worker.start()
    metrics_http = None
    if settings.metrics:
        metrics_http, port = serve_metrics(settings.metrics_port, settings.host)
        log.info("serving metrics of all workers", extra={"metrics_port": port})

    stopping = False

    def stop_workers(signum=None, frame=None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_workers)
    signal.signal(signal.SIGINT, stop_workers)
    exit_code = 0
    running = list(workers)
    while running:
        ended = multiprocessing.connection.wait([w.sentinel for w in running])
        for worker in [w for w in running if w.sentinel in ended]:
            worker.join()
            running.remove(worker)
            multiprocess.mark_process_dead(worker.pid, metrics_dir)
            if worker.exitcode != 0:
                exit_code = 1
                if not stopping:
                    details = {"worker_pid": worker.pid, "exitcode": worker.exitcode}
                    log.error("worker exited; stopping the others", extra=details)
                    stop_workers()
    if metrics_http is not None:
        metrics_http.shutdown()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return exit_code


# --- a server on a background thread -----------------------------------------------------------


class ServerThread:
    """A started server on its own event loop thread; ``stop()`` (or ``with``) shuts it down."""

    def __init__(self, settings: ServeSettings) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="edgecnn-serve", daemon=True)
        self._thread.start()
        self.server = InferenceServer(settings)
        try:
            self._call(self.server.start())
        except BaseException:
            self._close_loop()
            raise

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def metrics_port(self) -> int | None:
        return self.server.metrics_port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self.server.stop(grace))
        finally:
            self._close_loop()

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(settings: ServeSettings) -> ServerThread:
    """Load, warm up and start serving on a background thread; returns once ready."""
    return ServerThread(settings)
