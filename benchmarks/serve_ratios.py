"""The serve issue's "Must show" ratios, measured side by side in one run on this machine.

    python -m edgecnn.benchmarks.serve_ratios MODEL.onnx [--rounds 5] [--window 2] [--clients 1]

Starts `edgecnn serve MODEL` twice (dynamic batching on with the default flags, and off with
--max-batch-size 1) and the echo server, then in each round measures, one window after another:

  (a) 64-image RPCs at concurrency 4 (images/s)    vs  the best in-process layout at batch 64
  (b) 1-image RPCs at concurrency 16 (requests/s)  vs  the echo server, same requests, same client;
      and batching on vs off at that load (a "never slower" claim: judged on every round)
  (c) 1-image p50 at concurrency 1                 vs  echo p50 + in-process batch-1 p50
  and, to explain them: (a) vs the echo server answering the same 64-image RPCs (what the transport
  and the client leave on this machine), (a) vs one in-process caller on every core (the floor before
  the server's layout was counted), and the echo server with a worker-thread round trip and no
  compute (echo.py --hop)

The throughput floor is the fastest in-process layout in that round: one caller on every core, one
caller on one thread, or the server's own layout of one-thread callers side by side (benchmarks/
inprocess.py ComputeFloor). The latency floor is the lower batch-1 p50 of the two one-caller set-ups.

Each ratio is computed within a round (A and B measured seconds apart); the median over rounds is
reported with the WORST round beside it. Targets are met on the median, except "never slower"
claims, which must hold in every round. It prints a markdown block for benchmarks/RESULTS.md.

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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Callable


from edgecnn.benchmarks.device import describe_device
from edgecnn.benchmarks.hardening import side_by_side_parser
from edgecnn.benchmarks.inprocess import ComputeFloor, best_of, layout_name, resolve_provider
from edgecnn.benchmarks.loadgen import LoadGenerator, LoadPoint
from edgecnn.benchmarks.payload import build_requests, fetch_model_spec, infer_once
from edgecnn.benchmarks.stats import median_and_worst
from edgecnn.benchmarks.servers import exit_on_sigterm, start_echo_server, start_edgecnn_server
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
    every_round: bool = False  # a "never slower" claim: met only if every round meets it
    lower_is_better: bool = False  # latency ratios: the worst round is the highest

    def ratios(self) -> list[float]:
        return [s / f for s, f in zip(self.served, self.floor) if f > 0]

    def worst(self) -> float:
        return median_and_worst(self.ratios(), self.lower_is_better)[1]

    def verdict(self) -> str:
        """yes / **no** on the median (every round for "never slower"), naming a failed round either way."""
        if self.diagnostic:
            return "n/a"
        on_median, on_every_round = self.meets(median(self.ratios())), all(self.meets(r) for r in self.ratios())
        if self.every_round:
            return "yes, every round" if on_every_round else "**not met** (a round failed)"
        if on_median and not on_every_round:
            return "yes on the median; **not** in every round"
        return "yes" if on_median else "**no**"


@dataclass
class Rig:
    """What every round measures with, started once: the servers, the client pool, the session."""

    loadgen: LoadGenerator
    batching_on: str  # addresses
    batching_off: str
    echo: str
    echo_hop: str  # the echo server answering after a worker-thread round trip (echo.py --hop)
    echo_big: str  # the echo server answering the 64-image requests with the real 64-image response
    single: list[bytes]  # serialised 1-image requests
    big: list[bytes]  # serialised 64-image requests
    floor: ComputeFloor  # in-process: every layout, sessions open
    warmup_s: float
    window_s: float
    points: list[LoadPoint] = field(default_factory=list)  # every served window, for the diagnostics
    best_layouts: Counter = field(default_factory=Counter)  # which in-process layout was the floor, per round

    def served(self, address: str, requests: list[bytes], batch: int, concurrency: int) -> LoadPoint:
        point = self.loadgen.closed_loop("served", address, requests, batch, concurrency,
                                         warmup_s=self.warmup_s, duration_s=self.window_s)
        self.points.append(point)
        return point

    def in_process_images_per_s(self, batch: int) -> dict[str, float]:
        return self.floor.images_per_s(batch, self.window_s / 2)

    def in_process_p50_ms(self, batch: int) -> float:
        return self.floor.p50_ms(batch, self.window_s / 2)


def must_show() -> dict[str, Comparison]:
    return {
        "a": Comparison(f"(a) {BIG_BATCH}-image RPCs at concurrency {BIG_BATCH_CONCURRENCY}: served images/s vs "
                        f"the best in-process layout at batch {BIG_BATCH}", "images/s", ">= 0.85x",
                        lambda r: r >= 0.85, floor_label=f"best in-process, batch {BIG_BATCH}"),
        "b": Comparison(f"(b) 1-image RPCs at concurrency {SMALL_CONCURRENCY}: served requests/s vs echo server "
                        "(same requests, same client)", "req/s", ">= 0.75x", lambda r: r >= 0.75, floor_label="echo"),
        "batching": Comparison(f"(b) dynamic batching on vs off (--max-batch-size 1), 1-image RPCs at concurrency "
                               f"{SMALL_CONCURRENCY}: requests/s", "req/s", ">= 1.0x (never slower)",
                               lambda r: r >= 1.0, floor_label="batching off", every_round=True),
        "c": Comparison("(c) 1-image p50 latency at concurrency 1 vs echo p50 + in-process batch-1 p50", "ms",
                        "<= 1.2x", lambda r: r <= 1.2, floor_label="echo + in-process", lower_is_better=True),
        "echo-a": Comparison(f"Diagnostic: (a) vs the echo server answering the same {BIG_BATCH}-image RPCs at "
                             f"concurrency {BIG_BATCH_CONCURRENCY} with the real response (transport and client, no "
                             "compute)", "images/s", "-", lambda r: True, floor_label="echo", diagnostic=True),
        "single-a": Comparison(f"Diagnostic: (a) vs ONE in-process caller on every core at batch {BIG_BATCH} "
                               "(the floor before the server's layout was counted)", "images/s", "-", lambda r: True,
                               floor_label="in-process, one caller", diagnostic=True),
        "hop-b": Comparison(f"Diagnostic: echo with a worker-thread round trip and no compute (echo.py --hop), "
                            f"1-image RPCs at concurrency {SMALL_CONCURRENCY}, vs the echo", "req/s", "-",
                            lambda r: True, floor_label="echo", diagnostic=True),
        "hop-c": Comparison("Diagnostic: the same, p50 latency at concurrency 1, vs the echo", "ms", "-",
                            lambda r: True, floor_label="echo", diagnostic=True, lower_is_better=True),
    }


def one_round(rig: Rig, lines: dict[str, Comparison]) -> list[LoadPoint]:
    """Every comparison once, A and B seconds apart; returns the batching-on points at concurrency 16."""
    lines["a"].served.append(rig.served(rig.batching_on, rig.big, BIG_BATCH, BIG_BATCH_CONCURRENCY).images_per_s)
    layouts = rig.in_process_images_per_s(BIG_BATCH)
    best_layout, best = best_of(layouts)
    rig.best_layouts[best_layout] += 1
    lines["a"].floor.append(best)
    lines["echo-a"].served.append(lines["a"].served[-1])
    lines["echo-a"].floor.append(rig.served(rig.echo_big, rig.big, BIG_BATCH, BIG_BATCH_CONCURRENCY).images_per_s)
    lines["single-a"].served.append(lines["a"].served[-1])
    lines["single-a"].floor.append(layouts[layout_name(1, 0)])

    on = rig.served(rig.batching_on, rig.single, 1, SMALL_CONCURRENCY)
    lines["b"].served.append(on.requests_per_s)
    lines["b"].floor.append(rig.served(rig.echo, rig.single, 1, SMALL_CONCURRENCY).requests_per_s)
    lines["batching"].served.append(on.requests_per_s)
    lines["batching"].floor.append(rig.served(rig.batching_off, rig.single, 1, SMALL_CONCURRENCY).requests_per_s)

    lines["hop-b"].served.append(rig.served(rig.echo_hop, rig.single, 1, SMALL_CONCURRENCY).requests_per_s)
    lines["hop-b"].floor.append(lines["b"].floor[-1])

    lines["c"].served.append(rig.served(rig.batching_on, rig.single, 1, 1).p50_ms)
    echo_p50 = rig.served(rig.echo, rig.single, 1, 1).p50_ms
    lines["c"].floor.append(echo_p50 + rig.in_process_p50_ms(1))
    lines["hop-c"].served.append(rig.served(rig.echo_hop, rig.single, 1, 1).p50_ms)
    lines["hop-c"].floor.append(echo_p50)
    return [on]


def main(argv: list[str] | None = None) -> int:
    parser = side_by_side_parser(__doc__)
    parser.add_argument("--server-args", default="", help="more `edgecnn serve` flags for both servers")
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
        single, big = build_requests(spec, 1, 8), build_requests(spec, BIG_BATCH, 2)
        canned, canned_big = infer_once(batching_on.address, single[0]), infer_once(batching_on.address, big[0])
        with start_echo_server(canned) as echo, start_echo_server(canned, hop=True) as echo_hop, \
                start_echo_server(canned_big) as echo_big:
            floor = ComputeFloor(args.model, resolve_provider("cpu"), batch_sizes=(1, BIG_BATCH))
            rig = Rig(loadgen, batching_on.address, batching_off.address, echo.address, echo_hop.address,
                      echo_big.address, single, big, floor, args.warmup, args.window)
            lines = must_show()
            batching_points = []
            for round_ in range(1, args.rounds + 1):
                batching_points += one_round(rig, lines)
                print(f"round {round_}/{args.rounds}: " + "; ".join(
                    f"{key} {c.served[-1]:.4g} vs {c.floor[-1]:.4g} {c.unit}" for key, c in lines.items()
                ), file=sys.stderr, flush=True)
    return markdown(args, command, spec.name, list(lines.values()), rig, batching_points)


def markdown(args: argparse.Namespace, command: str, model_name: str, comparisons: list[Comparison],
             rig: Rig, batching_points: list[LoadPoint]) -> str:
    points = rig.points
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
        f"each ratio is taken within a round; the median over rounds is shown with the median figures and the "
        f"worst round beside it. Targets are judged on the median, \"never slower\" claims on every round. "
        f"Load: {args.clients} client process(es) (grpc.aio, pre-serialised requests); "
        f"servers: `edgecnn serve` ({args.server_args or 'default flags'}: batching on), the same with "
        "`--max-batch-size 1` (batching off), the echo server (benchmarks/echo.py, one answering 1-image and one "
        "64-image requests), and the same echo with `--hop`.",
        "",
        "| Must show | Served | Floor | Ratio (median) | Worst round | Target | Met |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for comp in comparisons:
        served = f"{_fmt(median(comp.served))} {comp.unit}"
        floor = f"{comp.floor_label}: {_fmt(median(comp.floor))} {comp.unit}"
        lines.append(f"| {comp.question} | {served} | {floor} | {median(comp.ratios()):.2f}x | {comp.worst():.2f}x "
                     f"| {comp.target} | {comp.verdict()} |")
    busy = [p.client.host_cpu_busy for p in points if p.client.host_cpu_busy is not None]
    saturated = any(p.client.saturated for p in points)
    layouts = ", ".join(f"{name} ({count} of {args.rounds} rounds)" for name, count in rig.best_layouts.most_common())
    lines += [
        "",
        f"- The best in-process layout at batch {BIG_BATCH}: {layouts}.",
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
