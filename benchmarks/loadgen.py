"""The load generator: client processes that send pre-serialised ModelInfer requests to any OIP server.

Each client process runs one grpc.aio event loop with its own channel per address and takes jobs
over a pipe, so one pool serves every point of a run (and several targets, e.g. a server and its echo).

- Closed loop: ``concurrency`` streams in total, split over the processes; each stream sends its next
  request as soon as the previous one returns.
- Open loop: Poisson arrivals at ``rate`` requests/s in total; each process draws its own Poisson
  stream at rate/processes (a sum of independent Poisson streams is Poisson). Requests go out on
  schedule whether or not earlier ones have returned.

Latency is measured per request from send to response. Only requests sent inside the measurement
window (after ``warmup_s`` of unrecorded load) count. The generator reports its own saturation:
a client process busy for >= 90% of the window (``process_time`` over wall time, gRPC's threads
included), or, in open loop, sends falling behind schedule: a median lag over 1 ms (asyncio's timer
granularity) or a p99 lag over 10 ms.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgecnn.benchmarks.device import busy_fraction, host_cpu_times
from edgecnn.benchmarks.stats import LatencyStats, summarize
from edgecnn.serve.client import PLAINTEXT, ChannelSecurity

CLIENT_SATURATION_CPU = 0.9
OPEN_LOOP_LAG_P50_LIMIT_S = 0.001
OPEN_LOOP_LAG_P99_LIMIT_S = 0.010
SERVER_PARAMETERS = ("queue_us", "compute_us", "batch_size")  # int64 response parameters of edgecnn serve
START_DELAY_S = 0.05  # lets every process receive its job before the load starts


def poisson_arrivals(rate: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (s, from 0) of a Poisson process of ``rate`` per second over ``seconds``."""
    if rate <= 0:
        return np.empty(0)
    expected = rate * seconds
    gaps = rng.exponential(1.0 / rate, int(expected + 6 * np.sqrt(expected) + 16))
    times = np.cumsum(gaps)
    while times[-1] < seconds:  # statistically never; keeps the schedule exact if it happens
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1.0 / rate, len(gaps)))])
    return times[times < seconds]


@dataclass(frozen=True)
class Job:
    """One client process's share of one measurement point."""

    address: str
    requests: tuple[bytes, ...]  # serialised ModelInferRequests, sent in turn
    concurrency: int = 0  # closed loop: streams in this process
    rate: float = 0.0  # open loop: requests/s from this process
    warmup_s: float = 0.5
    duration_s: float = 3.0
    timeout_s: float = 10.0
    seed: int = 0
    security: ChannelSecurity = PLAINTEXT  # TLS, mutual TLS, bearer token


@dataclass
class JobResult:
    latencies_s: np.ndarray
    errors: Counter
    send_lag_s: np.ndarray
    cpu_s: float
    wall_s: float
    server_sums: dict[str, float]
    server_counts: dict[str, int]


@dataclass
class ClientLoad:
    """How hard the load generator itself worked at one point."""

    processes: int  # client processes that sent this point's load
    cpu_per_process_max: float  # busiest client process: CPU seconds / wall seconds (1.0 = one full core)
    host_cpu_busy: float | None  # the whole machine's busy fraction during the window (server included)
    send_lag_p50_ms: float | None  # open loop only
    send_lag_p99_ms: float | None
    saturated: bool


@dataclass
class LoadPoint:
    """One measurement point: a target under one closed-loop concurrency or open-loop rate."""

    target: str  # e.g. "served" or "echo"
    mode: str  # closed | open
    concurrency: int | None
    rate: float | None  # offered requests/s (open loop)
    batch_size: int
    duration_s: float
    requests_per_s: float
    images_per_s: float
    latency: LatencyStats | None
    errors: dict[str, int]
    server: dict[str, float]  # mean queue_ms, compute_ms, batch_size where the server reports them
    client: ClientLoad
    latencies_s: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    @property
    def p50_ms(self) -> float:
        """The median latency, NaN when no request was answered."""
        return self.latency.p50_ms if self.latency else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "latencies_s"}


class LoadGenerator:
    """A pool of client processes; use as a context manager so they are always stopped."""

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")  # gRPC does not survive fork
        self._pipes: list[multiprocessing.connection.Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for _ in range(processes):
            parent, child = context.Pipe()
            process = context.Process(target=_client_main, args=(child,), daemon=True)
            process.start()
            child.close()
            self._pipes.append(parent)
            self._processes.append(process)

    @property
    def processes(self) -> int:
        return len(self._processes)

    def __enter__(self) -> "LoadGenerator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for pipe in self._pipes:
            try:
                pipe.send(None)
            except (BrokenPipeError, OSError):
                pass
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        self._pipes.clear()
        self._processes.clear()

    def closed_loop(self, target: str, address: str, requests: list[bytes], batch_size: int, concurrency: int,
                    *, warmup_s: float, duration_s: float, timeout_s: float = 10.0,
                    security: ChannelSecurity = PLAINTEXT) -> LoadPoint:
        shares = split_evenly(concurrency, self.processes)
        jobs = [Job(address, tuple(requests), concurrency=share, warmup_s=warmup_s, duration_s=duration_s,
                    timeout_s=timeout_s, security=security) for share in shares]
        return self._run(target, "closed", jobs, batch_size, concurrency=concurrency, rate=None)

    def open_loop(self, target: str, address: str, requests: list[bytes], batch_size: int, rate: float,
                  *, warmup_s: float, duration_s: float, timeout_s: float = 10.0, seed: int = 0,
                  security: ChannelSecurity = PLAINTEXT) -> LoadPoint:
        share = rate / self.processes
        jobs = [Job(address, tuple(requests), rate=share, warmup_s=warmup_s, duration_s=duration_s,
                    timeout_s=timeout_s, seed=seed * 1000 + i, security=security) for i in range(self.processes)]
        return self._run(target, "open", jobs, batch_size, concurrency=None, rate=rate)

    def _run(self, target: str, mode: str, jobs: list[Job], batch_size: int, *,
             concurrency: int | None, rate: float | None) -> LoadPoint:
        busy = [(pipe, job) for pipe, job in zip(self._pipes, jobs) if job.concurrency > 0 or job.rate > 0]
        for pipe, job in busy:
            pipe.send(job)
        warmup_s, duration_s = jobs[0].warmup_s, jobs[0].duration_s
        time.sleep(START_DELAY_S + warmup_s)
        host_before = host_cpu_times()
        time.sleep(duration_s)
        host_after = host_cpu_times()
        replies = [pipe.recv() for pipe, _ in busy]  # every reply, so no pipe is left holding a stale one
        failures = [r for r in replies if isinstance(r, BaseException)]
        if failures:
            raise RuntimeError(f"a client process failed: {failures[0]!r}") from failures[0]
        return merge(target, mode, replies, batch_size, duration_s, concurrency, rate,
                     busy_fraction(host_before, host_after))


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` integers differing by at most one (larger first)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def merge(target: str, mode: str, results: list[JobResult], batch_size: int, duration_s: float,
          concurrency: int | None, rate: float | None, host_busy: float | None) -> LoadPoint:
    latencies = np.concatenate([r.latencies_s for r in results])
    lags = np.concatenate([r.send_lag_s for r in results])
    errors: Counter = sum((r.errors for r in results), Counter())
    cpu_max = max(r.cpu_s / r.wall_s for r in results)
    lag_p50, lag_p99 = (np.percentile(lags, [50, 99]) if lags.size else (None, None))
    behind_schedule = lags.size > 0 and (lag_p50 > OPEN_LOOP_LAG_P50_LIMIT_S or lag_p99 > OPEN_LOOP_LAG_P99_LIMIT_S)
    saturated = cpu_max >= CLIENT_SATURATION_CPU or behind_schedule
    server = {}
    for name in SERVER_PARAMETERS:
        count = sum(r.server_counts.get(name, 0) for r in results)
        if count:
            mean = sum(r.server_sums.get(name, 0.0) for r in results) / count
            server[name.replace("_us", "_ms")] = mean / 1e3 if name.endswith("_us") else mean
    requests_per_s = latencies.size / duration_s
    return LoadPoint(
        target=target,
        mode=mode,
        concurrency=concurrency,
        rate=rate,
        batch_size=batch_size,
        duration_s=duration_s,
        requests_per_s=requests_per_s,
        images_per_s=requests_per_s * batch_size,
        latency=summarize(latencies, batch_size) if latencies.size else None,
        errors=dict(errors),
        server=server,
        client=ClientLoad(
            processes=len(results),
            cpu_per_process_max=round(cpu_max, 3),
            host_cpu_busy=None if host_busy is None else round(host_busy, 3),
            send_lag_p50_ms=None if lag_p50 is None else float(lag_p50 * 1e3),
            send_lag_p99_ms=None if lag_p99 is None else float(lag_p99 * 1e3),
            saturated=bool(saturated),
        ),
        latencies_s=latencies,
    )


# ---- inside a client process ------------------------------------------------------------------


def _client_main(pipe: multiprocessing.connection.Connection) -> None:
    from edgecnn.benchmarks.payload import MODEL_INFER

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # grpc.aio channels bind to the current loop when created
    calls: dict[tuple[str, ChannelSecurity], Any] = {}  # one channel per address (and credentials), kept across jobs

    def call_for(job: Job) -> Any:
        key = (job.address, job.security)
        if key not in calls:
            channel = job.security.channel(job.address, aio=True)
            calls[key] = channel.unary_unary(MODEL_INFER)  # bytes in, bytes out: no serialisers
        return calls[key]

    while True:
        job = pipe.recv()
        if job is None:
            break
        try:
            pipe.send(loop.run_until_complete(_run_job(call_for(job), job)))
        except Exception as exc:  # reported to the parent, which raises it
            pipe.send(exc)
    loop.close()


class _Recorder:
    """Per-process results of one job: latencies of requests sent inside the window, errors, server times."""

    def __init__(self, window_start: float, window_end: float, metadata: tuple = ()) -> None:
        import grpc

        from edgecnn.protos.grpc_predict_v2_pb2 import ModelInferResponse

        self._rpc_error = grpc.aio.AioRpcError
        self._parse_response = ModelInferResponse.FromString
        self.window_start = window_start
        self.window_end = window_end
        self.metadata = metadata or None  # a bearer token, if any
        self.latencies: list[float] = []
        self.errors: Counter = Counter()
        self.server_sums: dict[str, float] = {}
        self.server_counts: dict[str, int] = {}

    async def send(self, call: Any, request: bytes, timeout_s: float) -> None:
        sent = time.perf_counter()
        try:
            raw = await call(request, timeout=timeout_s, metadata=self.metadata)
        except self._rpc_error as exc:
            if self.window_start <= sent < self.window_end:
                self.errors[exc.code().name] += 1
            return
        done = time.perf_counter()
        if not self.window_start <= sent < self.window_end:
            return
        self.latencies.append(done - sent)
        parameters = self._parse_response(raw).parameters
        for name in SERVER_PARAMETERS:
            if name in parameters:
                self.server_sums[name] = self.server_sums.get(name, 0.0) + parameters[name].int64_param
                self.server_counts[name] = self.server_counts.get(name, 0) + 1


async def _run_job(call: Any, job: Job) -> JobResult:
    start = time.perf_counter() + START_DELAY_S
    recorder = _Recorder(start + job.warmup_s, start + job.warmup_s + job.duration_s, job.security.metadata)
    cpu = asyncio.ensure_future(_cpu_seconds_in_window(recorder.window_start, recorder.window_end))
    if job.concurrency:
        lags: list[float] = []
        await asyncio.gather(*(_closed_stream(call, job, recorder, i) for i in range(job.concurrency)))
    else:
        lags = await _open_loop(call, job, recorder, start)
    return JobResult(
        latencies_s=np.asarray(recorder.latencies),
        errors=recorder.errors,
        send_lag_s=np.asarray(lags),
        cpu_s=await cpu,
        wall_s=job.duration_s,
        server_sums=recorder.server_sums,
        server_counts=recorder.server_counts,
    )


async def _closed_stream(call: Any, job: Job, recorder: _Recorder, stream: int) -> None:
    await asyncio.sleep(max(0.0, recorder.window_start - job.warmup_s - time.perf_counter()))
    turn = stream
    while time.perf_counter() < recorder.window_end:
        await recorder.send(call, job.requests[turn % len(job.requests)], job.timeout_s)
        turn += job.concurrency


async def _open_loop(call: Any, job: Job, recorder: _Recorder, start: float) -> list[float]:
    arrivals = poisson_arrivals(job.rate, job.warmup_s + job.duration_s, np.random.default_rng(job.seed))
    lags: list[float] = []
    in_flight = set()
    for turn, offset in enumerate(arrivals):
        scheduled = start + offset
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if scheduled >= recorder.window_start:
            lags.append(time.perf_counter() - scheduled)
        task = asyncio.ensure_future(recorder.send(call, job.requests[turn % len(job.requests)], job.timeout_s))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)
    return lags


async def _cpu_seconds_in_window(window_start: float, window_end: float) -> float:
    await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
    before = time.process_time()
    await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
    return time.process_time() - before
