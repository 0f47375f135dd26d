"""Build, start and stop the server: OIP + health + reflection on grpc.aio, metrics, signals, workers.

    run(settings)             `edgecnn serve`: blocks until SIGTERM/SIGINT, drains, returns 0 (SIGHUP: new TLS files)
    start_server(settings)    a server on a background thread (tests, demos): .port, .stop()
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from importlib import metadata as importlib_metadata
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.serve.batcher import Batcher, RunSlots
from edgecnn.serve import auth, grpc_service, health
from edgecnn.serve.grpc_service import InferenceService, Limits
from edgecnn.serve.logs import configure_logging
from edgecnn.serve.memory import IdleTrimmer
from edgecnn.serve.metrics import MULTIPROC_ENV, Metrics, serve_metrics
from edgecnn.serve.lifecycle import ModelStore
from edgecnn.serve.model import Model, largest_request_bytes
from edgecnn.serve.settings import ServeSettings
from edgecnn.serve.tls import ServerTls

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
        self.tls: ServerTls | None = None
        self._grpc: grpc.aio.Server | None = None
        self._metrics_http = None

    async def start(self) -> None:
        """Load, warm up and listen; on failure (a port in use, say) nothing is left running."""
        s = self.settings
        # Files a user names are checked before the slow part (loading models), each in one sentence.
        self.tls = ServerTls(s.tls_cert, s.tls_key, s.tls_client_ca) if s.tls else None
        self._auth = auth.interceptor_for(s)
        self.metrics = Metrics()
        # At most --instances runs at a time per process, whichever models they are for: each run
        # spans intra_op_threads cores, and more runs side by side would fight over them.
        self._run_slots = RunSlots(s.instances_resolved)
        self.models = ModelStore(s, self._make_batcher, self.metrics)
        self._decode = ThreadPoolExecutor(s.decode_threads_resolved, thread_name_prefix="decode")
        try:
            await self.models.start()
            if not s.max_message_bytes:  # derived from the models loaded now: later loads must fit it
                self.models.receive_limit = self.max_receive_bytes()
            limits = Limits(s.max_request_images_resolved, s.max_image_pixels, s.max_decode_backlog_resolved)
            self.service = InferenceService(self.models, self.metrics, self._decode, _package_version(), limits)
            await self._listen()
        except BaseException:
            await self._close()
            raise
        self._trimmer = IdleTrimmer(lambda: sum(b.runs for b in self.batchers.values()), s.trim_memory_idle_s)
        self.models.open_deferred_instance_sessions()  # after every model is loaded and timed: no overlap
        self._poll = asyncio.ensure_future(self.models.poll_forever()) if s.model_control_mode == "poll" else None

    @property
    def repository(self) -> ModelStore:
        return self.models

    @property
    def batchers(self) -> dict[tuple[str, str], Batcher]:
        return self.models.batchers()

    def _make_batcher(self, model: Model, s: ServeSettings) -> Batcher:
        """A loaded version's batcher: ``s`` are the server's settings with its config.json applied."""
        return Batcher(
            model,
            max_batch_size=s.max_batch_size,
            max_queue_delay_us=s.max_queue_delay_us,
            max_queue_size=s.max_queue_size,
            max_queue_bytes=s.max_queue_bytes,
            instances=s.instances_resolved,
            run_slots=self._run_slots,
            metrics=self.metrics.for_model(model.name, model.version),
        )

    def max_receive_bytes(self) -> int:
        """--max-message-bytes, or what the largest allowed request needs: every image of the largest
        model at the image limit, raw (at least gRPC's usual 4 MiB, room for encoded photos)."""
        if self.settings.max_message_bytes:
            return self.settings.max_message_bytes
        images = self.settings.max_request_images_resolved
        largest = max((largest_request_bytes(m, images) for m in self.models), default=0)  # those loaded at start
        return max(DERIVED_RECEIVE_FLOOR, largest)

    async def _listen(self) -> None:
        s = self.settings
        self._grpc = grpc.aio.server(
            interceptors=[self._auth] if self._auth else None,
            options=grpc_options(s, self.max_receive_bytes()),
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
        )
        grpc_service.add_to_server(self.service, self._grpc)
        self._health = health.HealthServicer()
        health.add_to_server(self._health, self._grpc)
        if s.reflection_resolved:
            reflection.enable_server_reflection([INFERENCE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME], self._grpc)
        if s.metrics:  # first: gRPC cannot unbind a port it never served on
            try:
                self._metrics_http, self.metrics_port = serve_metrics(
                    s.metrics_port, s.metrics_host_resolved, self.metrics.registry, tls=metrics_tls(s)
                )
            except (OSError, UnicodeError) as exc:  # UnicodeError: a host name IDNA cannot encode ("a..b")
                flag = "check --metrics-host" if isinstance(exc, (socket.gaierror, UnicodeError)) else \
                    "choose another --metrics-port"
                raise OSError(
                    f"cannot serve metrics on {s.metrics_host_resolved}:{s.metrics_port}: "
                    f"{getattr(exc, 'strerror', None) or exc} ({flag}, or --no-metrics)"
                ) from None
        address = f"{s.host}:{s.port}"
        try:
            if self.tls:
                self.port = self._grpc.add_secure_port(address, self.tls.credentials())
            else:
                self.port = self._grpc.add_insecure_port(address)
        except RuntimeError:  # grpc says only "Failed to bind ... set GRPC_VERBOSITY=debug"
            raise OSError(
                f"cannot listen on {address}: the port is in use or the address is not this machine's "
                "(choose another --port or --host)"
            ) from None
        await self._grpc.start()
        # Health for the server ("", the inference service) and for each model by its name.
        await self._health.set_all(["", INFERENCE_SERVICE, *self.models.names()], health.SERVING)
        self.models.on_serving_changed = self._model_health
        self.service.ready = True
        self._log_serving()

    def _log_serving(self) -> None:
        s = self.settings
        security = {
            "tls": self.tls.describe() if self.tls else "off",
            "auth": "bearer tokens" if self._auth else "off",
            "reflection": s.reflection_resolved,
        }
        log.info(
            "serving",
            extra={
                "address": f"{s.host}:{self.port}",
                "metrics_port": self.metrics_port,
                "models": [f"{m.name}/{m.version}" for m in self.models],
                "model_control_mode": s.model_control_mode,
                "provider": next((m.provider for m in self.models), s.provider),
                "max_batch_size": s.max_batch_size,
                "max_queue_delay_us": s.max_queue_delay_us,
                "instances": s.instances_resolved,
                "intra_op_threads": s.intra_op_threads_resolved,
                "workers": s.workers,
                "max_request_images": s.max_request_images_resolved,
                "max_receive_bytes": self.max_receive_bytes(),
                **security,
            },
        )
        if not is_loopback(s.host) and not self.tls and not self._auth:
            log.warning(
                "serving a non-loopback address with neither TLS nor tokens: anyone who reaches it can use it "
                "(--tls-cert/--tls-key, --auth-token-file, or --host 127.0.0.1)",
                extra={"address": f"{s.host}:{self.port}"},
            )

    def _model_health(self, name: str, serving: bool) -> None:
        if self.service.ready:  # once draining, everything stays NOT_SERVING
            asyncio.ensure_future(self._health.set_all([name], health.SERVING if serving else health.NOT_SERVING))

    def reload_tls(self) -> None:
        """SIGHUP: re-read the certificate files; new connections get them, open ones stay."""
        if self.tls is not None:
            self.tls.reload()

    async def stop(self, grace: float | None, drain_delay: float = 0.0) -> None:
        """Drain: health NOT_SERVING at once; keep serving ``drain_delay`` seconds (endpoints update); then
        refuse new calls, answer every admitted one (within ``grace``), and only then stop gRPC."""
        self.service.ready = False
        await self._health.enter_graceful_shutdown()
        if drain_delay > 0:
            await asyncio.sleep(drain_delay)
        drain = self.service.drain
        drain.refusing = True
        started = time.monotonic()
        if grace is None or grace > 0:
            try:
                await asyncio.wait_for(drain.wait_idle(), timeout=grace)
            except asyncio.TimeoutError:
                pass
        if drain.in_flight:
            log.warning("grace ran out with requests in flight", extra={"in_flight": drain.in_flight})
        left = None if grace is None else max(0.0, grace - (time.monotonic() - started))
        stopped = asyncio.ensure_future(self._grpc.stop(left))
        await asyncio.sleep(0)  # the stop task has begun gRPC's shutdown (GOAWAY): answer the held calls now
        drain.release_refused()
        await stopped
        self._grpc = None
        await self._close()

    async def _close(self) -> None:
        """gRPC (when start-up failed half-way), the batchers' compute threads (answering what is still
        queued), the decode threads, metrics."""
        if getattr(self, "_poll", None) is not None:
            self._poll.cancel()
        if self._grpc is not None:
            await self._grpc.stop(0)  # also releases a port bound by a server that never started
            self._grpc = None
        if hasattr(self, "models"):
            await self.models.close()
        if hasattr(self, "_decode"):
            self._decode.shutdown(wait=False, cancel_futures=True)
        if hasattr(self, "_trimmer"):
            self._trimmer.stop()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None


DERIVED_RECEIVE_FLOOR = 4 * 1024 * 1024
# Responses are the server's own (logits, top-k strings): bounded by what it computes, not by clients.
MAX_SEND_BYTES = 64 * 1024 * 1024


def grpc_options(s: ServeSettings, max_receive_bytes: int) -> list[tuple[str, int]]:
    """gRPC core's limits and connection policy (keepalive enforcement and connection age as Triton's flags)."""
    options = [
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.max_concurrent_streams", s.max_concurrent_streams),
        ("grpc.max_metadata_size", s.max_metadata_bytes),
        ("grpc.keepalive_time_ms", int(s.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", int(s.keepalive_permit_without_calls)),
        ("grpc.http2.min_ping_interval_without_data_ms", int(s.min_ping_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", s.max_ping_strikes),
        # Several --workers processes bind the same port; a lone server must fail if it is taken.
        ("grpc.so_reuseport", 1 if s.workers > 1 else 0),
    ]
    if s.max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(s.max_connection_age_grace_s * 1000)),
        ]
    return options


def metrics_tls(s: ServeSettings) -> dict[str, str] | None:
    """The metrics endpoint takes the gRPC port's TLS files (HTTPS; mutual TLS with --tls-client-ca)."""
    if not s.tls:
        return None
    return {"certfile": str(s.tls_cert), "keyfile": str(s.tls_key),
            **({"client_cafile": str(s.tls_client_ca)} if s.tls_client_ca else {})}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- `edgecnn serve` ---------------------------------------------------------------------------


def run(settings: ServeSettings) -> int:
    """Serve until SIGTERM/SIGINT, then drain; the process exit code."""
    configure_logging(settings.log_level)
    if settings.workers > 1:
        return _run_workers(settings)
    return asyncio.run(_serve_until_signal(settings))


async def _serve_until_signal(settings: ServeSettings, started: Callable[[], None] | None = None) -> int:
    sys.setswitchinterval(settings.gil_switch_interval_us / 1e6)  # process-wide: only where we own the process
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = InferenceServer(settings)
    loop.add_signal_handler(signal.SIGHUP, server.reload_tls)  # before loading: a SIGHUP must never kill us
    await server.start()
    if started is not None:
        started()
    await stop.wait()
    log.info("draining", extra={"drain_delay_s": settings.drain_delay_s, "grace_s": settings.grace})
    await server.stop(settings.grace, settings.drain_delay_s)
    log.info("stopped")
    return 0


def _worker_main(settings: ServeSettings, ready: multiprocessing.connection.Connection) -> None:
    configure_logging(settings.log_level)
    try:
        code = asyncio.run(_serve_until_signal(settings, started=lambda: ready.send("ready")))
    except Exception as exc:  # noqa: BLE001 - the parent reports it and stops the others
        ready.send(f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from None
    raise SystemExit(code)


# How long the --workers parent waits for a worker to load its models and listen.
WORKER_START_TIMEOUT_S = 300.0


def _run_workers(settings: ServeSettings) -> int:
    """``workers`` processes share the port (SO_REUSEPORT); this one forwards signals and serves their metrics.

    The parent never waits forever: each worker says when it listens (or why it failed) within
    WORKER_START_TIMEOUT_S; one that fails stops the group; a drain that outlasts its delay and grace
    by 10 s ends in SIGKILL.
    """
    from prometheus_client import multiprocess

    metrics_dir = tempfile.mkdtemp(prefix="edgecnn-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir  # spawned workers record their metrics there
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no forked grpc or onnxruntime state
    stopping = False
    workers: list = []

    def stop_workers(signum=None, frame=None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_workers)
    signal.signal(signal.SIGINT, stop_workers)
    signal.signal(signal.SIGHUP, lambda *_: [os.kill(w.pid, signal.SIGHUP) for w in workers if w.is_alive()])
    pipes = []
    for i in range(settings.workers):
        receive, send = spawn.Pipe(duplex=False)
        worker = spawn.Process(target=_worker_main, args=(replace(settings, metrics=False), send),
                               name=f"edgecnn-worker-{i}")
        worker.start()
        send.close()
        workers.append(worker)
        pipes.append(receive)
    metrics_http = None
    exit_code = 0
    failure = _wait_for_workers(workers, pipes, WORKER_START_TIMEOUT_S)
    if failure:
        log.error("a worker failed to start; stopping the others", extra={"error": failure})
        stop_workers()
        exit_code = 1
    elif settings.metrics and not stopping:
        try:
            metrics_http, port = serve_metrics(settings.metrics_port, settings.metrics_host_resolved,
                                               tls=metrics_tls(settings))
            log.info("serving metrics of all workers", extra={"metrics_port": port})
        except OSError as exc:
            log.error("cannot serve metrics; stopping the workers",
                      extra={"error": f"{settings.metrics_host_resolved}:{settings.metrics_port}: {exc}"})
            stop_workers()
            exit_code = 1
    running = list(workers)
    kill_at = None
    while running:
        if stopping and kill_at is None:
            kill_at = time.monotonic() + settings.drain_delay_s + settings.grace + 10
        timeout = None if kill_at is None else max(0.0, kill_at - time.monotonic())
        ended = multiprocessing.connection.wait([w.sentinel for w in running], timeout=timeout if timeout else 1.0)
        if kill_at is not None and time.monotonic() >= kill_at:
            for worker in running:
                log.error("worker did not stop in time; killing it", extra={"worker_pid": worker.pid})
                worker.kill()
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


def _wait_for_workers(workers, pipes, timeout_s: float) -> str | None:
    """None once every worker listens; else why one did not (its error, its exit, or the time-out)."""
    deadline = time.monotonic() + timeout_s
    waiting = dict(zip(pipes, workers))
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            return f"{len(waiting)} worker(s) not listening after {timeout_s:.0f} s"
        for pipe in multiprocessing.connection.wait(list(waiting), timeout=left):
            worker = waiting.pop(pipe)
            try:
                message = pipe.recv()
            except EOFError:
                worker.join(1)
                return f"worker {worker.pid} exited (code {worker.exitcode}) before listening"
            if message != "ready":
                return f"worker {worker.pid}: {message}"
    return None


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

    def stop(self, grace: float | None = None, drain_delay: float = 0.0) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self.server.stop(grace, drain_delay))
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
