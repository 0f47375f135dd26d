"""The lifecycle issue's benchmarks: reloads under load, and memory across load/unload cycles.

    python -m edgecnn.benchmarks.reload swaps MODEL.onnx [--seconds 30] [--every 3] [--rounds 2]
    python -m edgecnn.benchmarks.reload cycles MODEL.onnx [--cycles 200]

swaps   `edgecnn serve --model-control-mode explicit` on a repository holding MODEL as version 1.
        1-image requests at concurrency 8 for --seconds, once steady and once while a new version is
        published (renamed in) and loaded with RepositoryModelLoad every --every seconds; the two
        windows alternate for --rounds. Reported: requests, failures, p50 and p99 of each window.
cycles  The same server; RepositoryModelUnload + RepositoryModelLoad --cycles times, the server's RSS
        read every tenth of the way: growth from the first reading, and per cycle.

Each prints a markdown block for benchmarks/RESULTS.md with its command and the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

import grpc

from edgecnn.benchmarks.hardening import command_line, machine_line, print_block, rss_mib
from edgecnn.benchmarks.loadgen import LoadGenerator
from edgecnn.benchmarks.payload import build_requests, fetch_model_spec
from edgecnn.benchmarks.servers import exit_on_sigterm, start_edgecnn_server
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.protos import grpc_predict_v2_pb2_grpc as pb_grpc

NAME = "model"
CONCURRENCY = 8


def publish(root: Path, model: Path, version: int) -> None:
    """Write the version under a hidden name, then rename it in: the safe way to publish."""
    hidden = root / NAME / f".{version}"
    hidden.mkdir(parents=True)
    shutil.copyfile(model, hidden / "model.onnx")
    os.replace(hidden, root / NAME / str(version))


class Swapper:
    """Publishes and loads a new version every ``every`` seconds on a thread, until stopped."""

    def __init__(self, address: str, root: Path, model: Path, first_version: int, every: float) -> None:
        self.loads, self.failures, self.version = 0, [], first_version
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(address, root, model, every), daemon=True)
        self._thread.start()

    def _run(self, address: str, root: Path, model: Path, every: float) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not self._stop.wait(every):
                self.version += 1
                publish(root, model, self.version)
                try:
                    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=NAME), timeout=60)
                    self.loads += 1
                except grpc.RpcError as error:
                    self.failures.append(error.code().name)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.version


def swaps(args: argparse.Namespace) -> str:
    root = Path(tempfile.mkdtemp(prefix="edgecnn-reload-"))
    publish(root, args.model, 1)
    flags = "--model-control-mode explicit --load-model " + NAME
    rows, version = [], 1
    with start_edgecnn_server(root, flags, log=root / "server.log") as server, LoadGenerator(1) as loadgen:
        spec, _ = fetch_model_spec(server.address, NAME)
        requests = build_requests(spec, 1, 8)
        for round_ in range(args.rounds):
            for swapping in (False, True):
                swapper = Swapper(server.address, root, args.model, version, args.every) if swapping else None
                point = loadgen.closed_loop("swaps" if swapping else "steady", server.address, requests, 1,
                                            CONCURRENCY, warmup_s=0.5, duration_s=args.seconds)
                loads = 0
                if swapper:
                    version = swapper.stop()
                    loads = swapper.loads
                    if swapper.failures:
                        raise RuntimeError(f"loads failed: {swapper.failures}")
                failed = sum(point.errors.values())
                rows.append((round_ + 1, "swapping" if swapping else "steady", loads, point.requests_per_s * args.seconds,
                             failed, point.latency.p50_ms, point.latency.p99_ms))
                print(rows[-1], file=sys.stderr)
    lines = [
        f"Machine: {machine_line()}. Model: {args.model}, served as `{NAME}` by `edgecnn serve {flags}` "
        f"(default flags otherwise). 1-image requests, concurrency {CONCURRENCY}, {args.seconds:g} s windows; "
        f"a new version published and loaded every {args.every:g} s in the swapping windows.",
        "",
        "| round | window | versions swapped in | requests | failed | p50 ms | p99 ms |",
        "|---:|---|---:|---:|---:|---:|---:|",
        *(f"| {r} | {w} | {n} | {q:,.0f} | {f} | {p50:.2f} | {p99:.2f} |" for r, w, n, q, f, p50, p99 in rows),
    ]
    steady = [r[6] for r in rows if r[1] == "steady"]
    swapping = [r[6] for r in rows if r[1] == "swapping"]
    lines += ["", f"p99 while swapping vs steady: {median(swapping) / median(steady):.2f}x (medians over rounds); "
                  f"failed requests in all: {sum(r[4] for r in rows)}."]
    return "\n".join(lines)


def cycles(args: argparse.Namespace) -> str:
    root = Path(tempfile.mkdtemp(prefix="edgecnn-cycles-"))
    publish(root, args.model, 1)
    flags = "--model-control-mode explicit --load-model " + NAME
    readings = []
    with start_edgecnn_server(root, flags, log=root / "server.log") as server, \
            grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        pid = server.process.pid
        step = max(1, args.cycles // 10)
        seconds = 0.0  # in the RPCs only
        for cycle in range(args.cycles + 1):
            if cycle % step == 0:
                time.sleep(0.2)  # let retired versions finish stopping
                readings.append((cycle, rss_mib(pid)["VmRSS"]))
            if cycle == args.cycles:
                break
            started = time.perf_counter()
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=NAME), timeout=60)
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=NAME), timeout=60)
            seconds += time.perf_counter() - started
    first, last = readings[0][1], readings[-1][1]
    second_half = [r for r in readings if r[0] >= args.cycles // 2]
    late_growth = (second_half[-1][1] - second_half[0][1]) / max(1, second_half[-1][0] - second_half[0][0])
    return "\n".join([
        f"Machine: {machine_line()}. Model: {args.model}, `edgecnn serve {flags}`. {args.cycles} unload + load "
        f"cycles in {seconds:.1f} s ({seconds / args.cycles * 1e3:.0f} ms each).",
        "",
        "| cycles done | RSS MiB |",
        "|---:|---:|",
        *(f"| {c} | {r:.1f} |" for c, r in readings),
        "",
        f"Growth: {last - first:+.1f} MiB over {args.cycles} cycles ({(last - first) / args.cycles * 1024:+.1f} KiB "
        f"per cycle); over the second half {late_growth * 1024:+.1f} KiB per cycle.",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="what", required=True)
    for name in ("swaps", "cycles"):
        sub = commands.add_parser(name)
        sub.add_argument("model", type=Path, help="an exported MODEL.onnx")
        sub.add_argument("--out", type=Path, help="also write the markdown block to this file")
        if name == "swaps":
            sub.add_argument("--seconds", type=float, default=30.0)
            sub.add_argument("--every", type=float, default=3.0)
            sub.add_argument("--rounds", type=int, default=2)
        else:
            sub.add_argument("--cycles", type=int, default=200)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    command = command_line("edgecnn.benchmarks.reload", argv)
    print_block(f"```\n{command}\n```\n\n" + {"swaps": swaps, "cycles": cycles}[args.what](args), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
