"""The served benchmark of one model on one Open Inference Protocol server.

- Sweep: closed loop at each ``--concurrency``; open loop (Poisson) at each ``--rate``.
- MLPerf-style scenarios: single-stream (concurrency 1, its p90 latency), offline (the highest
  throughput of the closed-loop sweep), server (the highest Poisson rate whose p99 stays within
  ``--latency-bound-ms``, by bisection below the offline throughput).
- Floors: right after each sweep point the same client sends the same requests at the same load
  to an echo server (transport floor); in-process onnxruntime results (compute floor) come from
  the caller. Every point carries its ratios to both.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

from edgecnn.benchmarks.inprocess import InProcessResult, best_floor
from edgecnn.benchmarks.loadgen import LoadGenerator, LoadPoint
from edgecnn.benchmarks.payload import build_requests, fetch_model_spec, infer_once, load_images
from edgecnn.benchmarks.servers import start_echo_server
from edgecnn.benchmarks.settings import BenchSettings
from edgecnn.benchmarks.stats import ratio
from edgecnn.serve.client import PLAINTEXT, ChannelSecurity

OFFLINE_CONCURRENCY = 32  # the offline scenario's load when the sweep is empty


@dataclass
class ComparedPoint:
    """A served point, the echo server at the same load, and their ratios to the floors."""

    served: LoadPoint
    echo: LoadPoint | None
    ratios: dict[str, float | None]

    def as_dict(self) -> dict[str, Any]:
        return {
            "served": self.served.as_dict(),
            "echo": self.echo.as_dict() if self.echo else None,
            "ratios": self.ratios,
        }


@dataclass
class ServedRun:
    label: str  # the model variant (fp32, int8, ...) or name
    address: str
    model: str
    platform: str
    batch_size: int
    points: list[ComparedPoint] = field(default_factory=list)
    scenarios: dict[str, Any] = field(default_factory=dict)
    compute_floor: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "address": self.address,
            "model": self.model,
            "platform": self.platform,
            "batch_size": self.batch_size,
            "compute_floor": self.compute_floor,
            "points": [p.as_dict() for p in self.points],
            "scenarios": self.scenarios,
        }


def compute_floor(inprocess: list[InProcessResult], batch_size: int) -> dict[str, Any] | None:
    """The strictest in-process figures a served point is held against: the lowest p50 of any layout at the
    request's batch size, and the most images/s of any batch size and layout (the server's own layout of
    one-thread runs side by side included). The best single caller stays beside it as a diagnostic."""
    if not inprocess:
        return None
    same_batch = [r for r in inprocess if r.batch_size == batch_size]
    best = best_floor(inprocess)
    single_callers = [r for r in inprocess if r.callers == 1]
    best_single = best_floor(single_callers) if single_callers else None
    return {
        "model": best.model,
        "provider": best.provider,
        "p50_ms_at_request_batch": min(r.latency.p50_ms for r in same_batch) if same_batch else None,
        "best_images_per_s": best.images_per_s,
        "best_batch_size": best.batch_size,
        "best_layout": best.layout,
        "single_caller_images_per_s": best_single.images_per_s if best_single else None,
    }


def floor_ratios(served: LoadPoint, echo: LoadPoint | None, floor: dict[str, Any] | None) -> dict[str, float | None]:
    served_p50 = served.latency.p50_ms if served.latency else None
    echo_p50 = echo.latency.p50_ms if echo and echo.latency else None
    compute_p50 = floor["p50_ms_at_request_batch"] if floor else None
    return {
        "requests_per_s_vs_echo": ratio(served.requests_per_s, echo.requests_per_s if echo else None),
        "p50_vs_echo": ratio(served_p50, echo_p50),
        "images_per_s_vs_compute": ratio(served.images_per_s, floor["best_images_per_s"] if floor else None),
        "p50_vs_echo_plus_compute": ratio(served_p50, _sum_or_none(echo_p50, compute_p50)),
    }


def _sum_or_none(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


@dataclass
class Measurer:
    """Sends one run's pre-built requests at a given load, to the served model and then to the echo server."""

    address: str
    echo_address: str | None
    requests: list[bytes]
    settings: BenchSettings
    loadgen: LoadGenerator
    run: ServedRun
    progress: Callable[[str], None]
    security: ChannelSecurity = PLAINTEXT

    def point(self, address: str, target: str, mode: str, load: float) -> LoadPoint:
        s = self.settings
        timing = dict(warmup_s=s.point_warmup_s, duration_s=s.duration_s, timeout_s=s.timeout_s)
        if address == self.address:  # the echo server is always plaintext
            timing["security"] = self.security
        if mode == "closed":
            return self.loadgen.closed_loop(target, address, self.requests, s.batch_size, int(load), **timing)
        return self.loadgen.open_loop(target, address, self.requests, s.batch_size, load, seed=s.seed, **timing)

    def compared(self, mode: str, load: float) -> ComparedPoint:
        """The served point, the echo at the same load right after, and their ratios; recorded in the run."""
        served = self.point(self.address, "served", mode, load)
        echo = self.point(self.echo_address, "echo", mode, load) if self.echo_address else None
        point = ComparedPoint(served, echo, floor_ratios(served, echo, self.run.compute_floor))
        self.progress(_progress_line(self.run.label, point))
        self.run.points.append(point)
        return point


def run_served(
    address: str,
    model_name: str,
    label: str,
    settings: BenchSettings,
    loadgen: LoadGenerator,
    inprocess: list[InProcessResult],
    progress: Callable[[str], None] = print,
    security: ChannelSecurity | None = None,
) -> ServedRun:
    """``security``: how to reach the server, when the caller has already read it from ``settings``."""
    security = security or settings.security()
    spec, metadata_raw = fetch_model_spec(address, model_name, settings.model_version, settings.timeout_s, security)
    images = load_images(settings.images, spec.inputs[0]) if settings.images else None
    requests = build_requests(spec, settings.batch_size, settings.distinct_requests, images, settings.seed)
    run = ServedRun(label, address, spec.name, spec.platform, settings.batch_size,
                    compute_floor=compute_floor(inprocess, settings.batch_size))
    canned_response = infer_once(address, requests[0], settings.timeout_s, security)  # the echo answers with these
    echo_server = start_echo_server(canned_response, metadata_raw) if settings.floors else contextlib.nullcontext()
    with echo_server as echo:
        measurer = Measurer(address, echo.address if echo else None, requests, settings, loadgen, run, progress,
                            security)
        sweep = [measurer.compared("closed", c) for c in settings.concurrency]
        for rate in settings.rates:
            measurer.compared("open", rate)
        run.scenarios = scenarios(measurer, sweep)
    return run


def scenarios(measurer: Measurer, sweep: list[ComparedPoint]) -> dict[str, Any]:
    """The MLPerf-style scenarios, reusing the sweep's points where it has them."""
    wanted = measurer.settings.scenarios
    results: dict[str, Any] = {}
    if "single-stream" in wanted:
        single = next((p for p in sweep if p.served.concurrency == 1), None) or measurer.compared("closed", 1)
        results["single-stream"] = _scenario_figures(single.served, "p90_ms")
    if "offline" in wanted or "server" in wanted:
        offline = (max(sweep, key=lambda p: p.served.images_per_s) if sweep
                   else measurer.compared("closed", OFFLINE_CONCURRENCY))
        if "offline" in wanted:
            results["offline"] = _scenario_figures(offline.served, "images_per_s")
        if "server" in wanted:
            results["server"] = server_scenario(measurer, offline.served.requests_per_s)
    return results


def server_scenario(measurer: Measurer, ceiling_rps: float) -> dict[str, Any]:
    """Bisect the Poisson rate in (0, ceiling]: the highest rate whose p99 is within the bound, without errors."""
    settings = measurer.settings
    low, high = 0.0, ceiling_rps
    best: LoadPoint | None = None
    steps = []
    for _ in range(settings.search_steps):
        rate = (low + high) / 2
        point = measurer.point(measurer.address, "served", "open", rate)
        p99 = point.latency.p99_ms if point.latency else None
        passed = p99 is not None and p99 <= settings.latency_bound_ms and not point.errors
        steps.append({"rate": rate, "p99_ms": p99, "passed": passed, "errors": point.errors,
                      "client_saturated": point.client.saturated})
        shown = f"{p99:7.2f} ms" if p99 is not None else "no answers"
        measurer.progress(f"  {measurer.run.label} server scenario: {rate:8.1f} req/s -> p99 {shown} "
                          f"{'pass' if passed else 'fail'}")
        if passed:
            low, best = rate, point
        else:
            high = rate
    return {
        "latency_bound_ms": settings.latency_bound_ms,
        "max_rate": best.rate if best else None,
        "requests_per_s": best.requests_per_s if best else None,
        "images_per_s": best.images_per_s if best else None,
        "p99_ms": best.latency.p99_ms if best and best.latency else None,
        "client_saturated": best.client.saturated if best else None,
        "steps": steps,
    }


def _scenario_figures(point: LoadPoint, headline: str) -> dict[str, Any]:
    latency = point.latency.as_dict() if point.latency else {}
    figures = {"concurrency": point.concurrency, "requests_per_s": point.requests_per_s,
               "images_per_s": point.images_per_s, "p50_ms": latency.get("p50_ms"), "p90_ms": latency.get("p90_ms"),
               "p99_ms": latency.get("p99_ms"), "client_saturated": point.client.saturated}
    return {"headline": headline, **figures}


def _progress_line(label: str, point: ComparedPoint) -> str:
    served = point.served
    load = f"c={served.concurrency}" if served.mode == "closed" else f"rate={served.rate:g}/s"
    p50 = f"{served.latency.p50_ms:.2f}" if served.latency else "-"
    vs_echo = point.ratios["requests_per_s_vs_echo"]
    echo = f" ({vs_echo:.2f}x echo)" if vs_echo is not None else ""
    warning = " [client saturated: more --clients, or fewer cores for the server]" if served.client.saturated else ""
    return f"  {label} {load}: {served.requests_per_s:8.1f} req/s{echo}, p50 {p50} ms{warning}"
