"""The serve issue's "Must show" ratios, measured side by side in one run on this machine.

    python -m edgecnn.benchmarks.serve_ratios MODEL.onnx [--rounds 5] [--window 2] [--clients 1]

Starts `edgecnn serve MODEL` twice (dynamic batching on with the default flags, and off with
--max-batch-size 1) and the echo server, then in each round measures, one window after another:

  (a) 64-image RPCs at concurrency 4 (images/s)    vs  in-process onnxruntime at batch 64
  (b) 1-image RPCs at concurrency 16 (requests/s)  vs  the echo server, same requests, same client;
      and batching on vs off at that load
  (c) 1-image p50 at concurrency 1                 vs  echo p50 + in-process batch-1 p50
  and, to explain them: (a) vs two one-thread in-process runs side by side (what two instances do),
  and the echo server with a worker-thread round trip and no compute (echo.py --hop)

The in-process floors take the faster of the server's two session set-ups (every core; one thread,
which `edgecnn serve` uses for small batches), timed back to back.

Each ratio is computed within a round (A and B measured seconds apart) and the median over rounds
is reported, with the median figures. It prints a markdown block for benchmarks/RESULTS.md.

CPU contention: on a small machine the load generator shares the cores with the server. Use the
fewest client processes that are not saturated (``--clients``, default 1); the block reports each
client's CPU use and the machine's.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Callable

import numpy as np

from edgecnn.benchmarks.device import describe_device
from edgecnn.benchmarks.inprocess import open_session, random_feed, resolve_provider
from edgecnn.benchmarks.loadgen import LoadGenerator, LoadPoint
from edgecnn.benchmarks.payload import build_requests, fetch_model_spec, infer_once
from edgecnn.benchmarks.servers import exit_on_sigterm, start_echo_server, start_edgecnn_server
from edgecnn.benchmarks.timing import time_calls
from edgecnn.export.metadata import read_metadata

BIG_BATCH = 64
BIG_BATCH_CONCURRENCY = 4
SMALL_CONCURRENCY = 16


@dataclass
class Comparison:
    """One "Must show" line: a served figure against its floor, per round."""

    question: str
    unit: str
    target: str  # e.g. ">= 0.85x"
    meets: Callable[[float], bool]
    served: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    floor_label: str = ""
    diagnostic: bool = False  # not a target: explains another line

    def ratios(self) -> list[float]:
        return [s / f for s, f in zip(self.served, self.floor) if f > 0]


@dataclass
class Rig:
    """What every round measures with, started once: the servers, the client pool, the session."""

    loadgen: LoadGenerator
    batching_on: str  # addresses
    batching_off: str
    echo: str
    echo_hop: str  # the echo server answering after a worker-thread round trip (echo.py --hop)
    single: list[bytes]  # serialised 1-image requests
    big: list[bytes]  # serialised 64-image requests
    sessions: list[Any]  # in-process: the server's two set-ups, every core and one thread (for small batches)
    feeds: dict[int, dict[str, np.ndarray]]  # in-process inputs by batch size
    warmup_s: float
    window_s: float
    points: list[LoadPoint] = field(default_factory=list)  # every served window, for the diagnostics

    def served(self, address: str, requests: list[bytes], batch: int, concurrency: int) -> LoadPoint:
        point = self.loadgen.closed_loop("served", address, requests, batch, concurrency,
                                         warmup_s=self.warmup_s, duration_s=self.window_s)
        self.points.append(point)
        return point

    def in_process_seconds(self, batch: int) -> np.ndarray:
        """Seconds per run of the faster session set-up at this batch size: the floor is onnxruntime's best."""
        timings = [time_calls(lambda s=s: s.run(None, self.feeds[batch]), warmup=3, min_seconds=self.window_s / 2)
                   for s in self.sessions]
        return min(timings, key=np.median)

    def in_process_side_by_side_images_per_s(self, batch: int, callers: int = 2) -> float:
        """Images/s of ``callers`` threads each running the one-thread session, side by side: what
        `edgecnn serve` does with two instances (its default on 2 or more cores)."""
        single_thread, feed = self.sessions[1], self.feeds[batch]
        single_thread.run(None, feed)
        runs = [0] * callers
        stop_at = time.perf_counter() + self.window_s / 2

        def caller(index: int) -> None:
            while time.perf_counter() < stop_at:
                single_thread.run(None, feed)
                runs[index] += 1

        start = time.perf_counter()
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return batch * sum(runs) / (time.perf_counter() - start)


def must_show() -> dict[str, Comparison]:
    return {
        "a": Comparison(f"(a) {BIG_BATCH}-image RPCs at concurrency {BIG_BATCH_CONCURRENCY}: served images/s vs "
                        f"in-process onnxruntime at batch {BIG_BATCH}", "images/s", ">= 0.85x", lambda r: r >= 0.85,
                        floor_label=f"in-process batch {BIG_BATCH}"),
        "b": Comparison(f"(b) 1-image RPCs at concurrency {SMALL_CONCURRENCY}: served requests/s vs echo server "
                        "(same requests, same client)", "req/s", ">= 0.75x", lambda r: r >= 0.75, floor_label="echo"),
        "batching": Comparison(f"(b) dynamic batching on vs off (--max-batch-size 1), 1-image RPCs at concurrency "
                               f"{SMALL_CONCURRENCY}: requests/s", "req/s", ">= 1.0x (never slower)",
                               lambda r: r >= 1.0, floor_label="batching off"),
        "c": Comparison("(c) 1-image p50 latency at concurrency 1 vs echo p50 + in-process batch-1 p50", "ms",
                        "<= 1.2x", lambda r: r <= 1.2, floor_label="echo + in-process"),
        "side-a": Comparison(f"Diagnostic: (a) vs in-process onnxruntime as two one-thread runs side by side at "
                             f"batch {BIG_BATCH}", "images/s", "-", lambda r: True,
                             floor_label="in-process side by side", diagnostic=True),
        "hop-b": Comparison(f"Diagnostic: echo with a worker-thread round trip and no compute (echo.py --hop), "
                            f"1-image RPCs at concurrency {SMALL_CONCURRENCY}, vs the echo", "req/s", "-",
                            lambda r: True, floor_label="echo", diagnostic=True),
        "hop-c": Comparison("Diagnostic: the same, p50 latency at concurrency 1, vs the echo", "ms", "-",
                            lambda r: True, floor_label="echo", diagnostic=True),
    }


def one_round(rig: Rig, lines: dict[str, Comparison]) -> list[LoadPoint]:
    """Every comparison once, A and B seconds apart; returns the batching-on points at concurrency 16."""
    lines["a"].served.append(rig.served(rig.batching_on, rig.big, BIG_BATCH, BIG_BATCH_CONCURRENCY).images_per_s)
    lines["a"].floor.append(BIG_BATCH * _calls_per_s(rig.in_process_seconds(BIG_BATCH)))
    lines["side-a"].served.append(lines["a"].served[-1])
    lines["side-a"].floor.append(rig.in_process_side_by_side_images_per_s(BIG_BATCH))

    on = rig.served(rig.batching_on, rig.single, 1, SMALL_CONCURRENCY)
    lines["b"].served.append(on.requests_per_s)
    lines["b"].floor.append(rig.served(rig.echo, rig.single, 1, SMALL_CONCURRENCY).requests_per_s)
    lines["batching"].served.append(on.requests_per_s)
    lines["batching"].floor.append(rig.served(rig.batching_off, rig.single, 1, SMALL_CONCURRENCY).requests_per_s)

    lines["hop-b"].served.append(rig.served(rig.echo_hop, rig.single, 1, SMALL_CONCURRENCY).requests_per_s)
    lines["hop-b"].floor.append(lines["b"].floor[-1])

    lines["c"].served.append(_p50(rig.served(rig.batching_on, rig.single, 1, 1)))
    echo_p50 = _p50(rig.served(rig.echo, rig.single, 1, 1))
    lines["c"].floor.append(echo_p50 + float(np.median(rig.in_process_seconds(1))) * 1e3)
    lines["hop-c"].served.append(_p50(rig.served(rig.echo_hop, rig.single, 1, 1)))
    lines["hop-c"].floor.append(echo_p50)
    return [on]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="an exported MODEL.onnx")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; figures are medians over them")
    parser.add_argument("--window", type=float, default=2.0, help="seconds measured per window")
    parser.add_argument("--warmup", type=float, default=0.3, help="unrecorded load before each window, seconds")
    parser.add_argument("--clients", type=int, default=1, help="load-generator processes")
    parser.add_argument("--server-args", default="", help="more `edgecnn serve` flags for both servers")
    parser.add_argument("--out", type=Path, help="also write the markdown block to this file")
    args = parser.parse_args(argv)
    command = "python -m edgecnn.benchmarks.serve_ratios " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    exit_on_sigterm()
    block = measure(args, command)
    print(block)
    if args.out:
        args.out.write_text(block)
    return 0


def measure(args: argparse.Namespace, command: str) -> str:
    on_log, off_log = (Path(tempfile.gettempdir()) / f"edgecnn-serve-ratios-{kind}.log" for kind in ("on", "off"))
    off_args = f"{args.server_args} --max-batch-size 1"
    with start_edgecnn_server(args.model, args.server_args, log=on_log) as batching_on, \
            start_edgecnn_server(args.model, off_args, log=off_log) as batching_off, \
            LoadGenerator(args.clients) as loadgen:
        spec, _ = fetch_model_spec(batching_on.address, read_metadata(args.model).name)
        single = build_requests(spec, 1, 8)
        canned = infer_once(batching_on.address, single[0])
        with start_echo_server(canned) as echo, start_echo_server(canned, hop=True) as echo_hop:
            sessions = [open_session(args.model, resolve_provider("cpu"), threads) for threads in (0, 1)]
            rig = Rig(loadgen, batching_on.address, batching_off.address, echo.address, echo_hop.address, single,
                      build_requests(spec, BIG_BATCH, 2), sessions,
                      {n: random_feed(sessions[0], n) for n in (1, BIG_BATCH)}, args.warmup, args.window)
            lines = must_show()
            batching_points = []
            for round_ in range(1, args.rounds + 1):
                batching_points += one_round(rig, lines)
                print(f"round {round_}/{args.rounds}: " + "; ".join(
                    f"{key} {c.served[-1]:.4g} vs {c.floor[-1]:.4g} {c.unit}" for key, c in lines.items()
                ), file=sys.stderr, flush=True)
    return markdown(args, command, spec.name, list(lines.values()), rig.points, batching_points)


def _calls_per_s(latencies: np.ndarray) -> float:
    return latencies.size / float(latencies.sum())


def _p50(point: LoadPoint) -> float:
    return point.latency.p50_ms if point.latency else float("nan")


def markdown(args: argparse.Namespace, command: str, model_name: str, comparisons: list[Comparison],
             points: list[LoadPoint], batching_points: list[LoadPoint]) -> str:
    device = describe_device()
    today = datetime.date.today().isoformat()
    lines = [
        f"### Serving ratios: `{args.model}` ({model_name}), {device['cpu_model']}, {device['usable_cores']} cores, "
        f"{today}",
        "",
        "```",
        command,
        "```",
        "",
        f"{args.rounds} interleaved rounds of {args.window:g} s windows (after {args.warmup:g} s of unrecorded load); "
        f"each ratio is taken within a round, the median over rounds is shown with the median figures. "
        f"Load: {args.clients} client process(es) (grpc.aio, pre-serialised requests); "
        f"servers: `edgecnn serve` ({args.server_args or 'default flags'}: batching on), the same with "
        "`--max-batch-size 1` (batching off), the echo server (benchmarks/echo.py), and the same echo with `--hop`.",
        "",
        "| Must show | Served | Floor | Ratio (median) | Ratio range | Target | Met |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for comp in comparisons:
        ratios = comp.ratios()
        mid = median(ratios)
        served = f"{_fmt(median(comp.served))} {comp.unit}"
        floor = f"{comp.floor_label}: {_fmt(median(comp.floor))} {comp.unit}"
        met = "n/a" if comp.diagnostic else "yes" if comp.meets(mid) else "**no**"
        lines.append(f"| {comp.question} | {served} | {floor} | {mid:.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x "
                     f"| {comp.target} | {met} |")
    busy = [p.client.host_cpu_busy for p in points if p.client.host_cpu_busy is not None]
    saturated = any(p.client.saturated for p in points)
    lines += [
        "",
        f"- Client: the busiest client process used {max(p.client.cpu_per_process_max for p in points):.2f} of a core "
        f"at most; saturated in any window: {'**yes**' if saturated else 'no'}."
        + (f" Machine CPU busy (median over windows): {median(busy):.0%}." if busy else ""),
    ]
    server = [p.server for p in batching_points if p.server]
    if server:
        mean_batch, queue_ms, compute_ms = (median(s.get(k, 0) for s in server)
                                            for k in ("batch_size", "queue_ms", "compute_ms"))
        lines.append(f"- Batching on at concurrency {SMALL_CONCURRENCY}: mean server batch {mean_batch:.1f} images, "
                     f"queue {queue_ms:.2f} ms, compute {compute_ms:.2f} ms (medians over rounds of each window's means).")
    errors: dict[str, int] = {}
    for p in points:
        for code, count in p.errors.items():
            errors[code] = errors.get(code, 0) + count
    lines.append(f"- Errors: {', '.join(f'{k} {v}' for k, v in errors.items()) if errors else 'none'}.")
    lines.append(f"- onnxruntime {device['onnxruntime']}, grpcio {device['grpcio']}, {device['os']}.")
    return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
