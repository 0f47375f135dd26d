"""Client failover under faults: three `edgecnn serve` replicas on 127.0.0.2-4 behind our client.

    python -m edgecnn.benchmarks.failover MODEL.onnx [--callers 16] [--phase 6]

16 callers (threads, one InferenceClient over the three addresses: round robin, health checking,
retries on UNAVAILABLE, a 1 s per-attempt timeout) send 1-image requests without pause. Phases of
--phase seconds each: steady; one replica drained (SIGTERM) and restarted; one killed (SIGKILL) and
restarted; one hung (SIGSTOP, then SIGCONT). Per phase: requests answered, failures, p50 and p99
of the requests sent in it. Prints a markdown block for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from edgecnn.benchmarks.hardening import command_line, machine_line, print_block
from edgecnn.benchmarks.servers import exit_on_sigterm, free_port, spawn_edgecnn_server, stop_process
from edgecnn.export.metadata import read_metadata
from edgecnn.serve.client import InferenceClient

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def start_replica(model: Path, host: str, port: int, log: Path) -> subprocess.Popen:
    return spawn_edgecnn_server(model, host, port, log=log).process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--phase", type=float, default=6.0, help="seconds of each phase")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    command = command_line("edgecnn.benchmarks.failover", argv)
    meta = read_metadata(args.model)
    name = meta.name
    port = free_port()
    log = Path("/tmp/edgecnn-failover.log")
    replicas = {host: start_replica(args.model, host, port, log) for host in HOSTS}
    records: list[tuple[float, float, str]] = []  # (sent, seconds, status)
    lock = threading.Lock()
    stop = threading.Event()
    pixels = np.random.default_rng(0).integers(0, 256, (1, meta.height, meta.width, meta.channels), dtype=np.uint8)
    phases: list[tuple[str, float, float]] = []
    try:
        with InferenceClient(",".join(f"{h}:{port}" for h in HOSTS), timeout=15, attempt_timeout=1.0) as client:

            def caller() -> None:
                while not stop.is_set():
                    sent = time.monotonic()
                    try:
                        client.infer(name, pixels)
                        status = "OK"
                    except grpc.RpcError as error:
                        status = error.code().name
                    with lock:
                        records.append((sent, time.monotonic() - sent, status))

            threads = [threading.Thread(target=caller) for _ in range(args.callers)]
            for thread in threads:
                thread.start()
            time.sleep(1.0)  # warm-up, not reported

            def phase(label: str, fault) -> None:
                start = time.monotonic()
                fault()
                time.sleep(max(0.0, args.phase - (time.monotonic() - start)))
                phases.append((label, start, time.monotonic()))

            def drain() -> None:
                replicas[HOSTS[0]].send_signal(signal.SIGTERM)
                replicas[HOSTS[0]].wait(60)
                replicas[HOSTS[0]] = start_replica(args.model, HOSTS[0], port, log)

            def kill() -> None:
                replicas[HOSTS[1]].kill()
                replicas[HOSTS[1]].wait(60)
                replicas[HOSTS[1]] = start_replica(args.model, HOSTS[1], port, log)

            phase("steady", lambda: None)
            phase(f"{HOSTS[0]} drained (SIGTERM), restarted", drain)
            phase("steady", lambda: None)
            phase(f"{HOSTS[1]} killed (SIGKILL), restarted", kill)
            phase("steady", lambda: None)
            phase(f"{HOSTS[2]} hung (SIGSTOP)", lambda: replicas[HOSTS[2]].send_signal(signal.SIGSTOP))
            replicas[HOSTS[2]].send_signal(signal.SIGCONT)
            stop.set()
            for thread in threads:
                thread.join()
    finally:
        stop.set()
        for process in replicas.values():
            process.send_signal(signal.SIGCONT)
            stop_process(process)
    rows = []
    for label, start, end in phases:
        inside = [(s, status) for sent, s, status in records if start <= sent < end]
        ok = np.array([s for s, status in inside if status == "OK"])
        failed = [status for _, status in inside if status != "OK"]
        p50, p99 = (np.percentile(ok, [50, 99]) * 1e3) if ok.size else (float("nan"),) * 2
        rows.append(f"| {label} | {end - start:.1f} | {len(ok):,} | {len(failed)} {sorted(set(failed)) or ''} "
                    f"| {ok.size / (end - start):,.0f} | {p50:.2f} | {p99:.2f} |")
    block = "\n".join([
        f"```\n{command}\n```", "",
        f"Machine: {machine_line()}. Model: {args.model} ({name}); three replicas with default flags on "
        f"{', '.join(HOSTS)} port {port}; {args.callers} callers, one InferenceClient over the three "
        "addresses (1 s per-attempt timeout, 15 s deadline).", "",
        "| phase | seconds | answered | failed | req/s | p50 ms | p99 ms |",
        "|---|---:|---:|---|---:|---:|---:|",
        *rows,
    ])
    print_block(block, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
