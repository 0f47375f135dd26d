"""Smoke test of an installed edgecnn: start `edgecnn serve` on a tiny model, wait until it is ready, classify
one image over gRPC, stop it with SIGTERM and check that it exits 0. Torch-free: it runs on the edge install.

    python -m edgecnn.serve.smoke                        # the tiny model shipped in the package, on the CPU
    python -m edgecnn.serve.smoke --provider cuda        # a GPU image: fails in one line when CUDA is unusable
    python -m edgecnn.serve.smoke --model m.onnx         # any self-describing model file or repository

The Dockerfiles' builds run it, and so does the install test of the suite (tests/test_installs.py), so an
image is checked by the same steps CI proves. Every step has a deadline: it never hangs. Exit 0 when every
step passed; otherwise exit 1 and one line on stderr naming the step that failed and why, then the tail of
the server's log.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

SMOKE_MODEL = Path(__file__).with_name("data") / "smoke.onnx"
SMOKE_LABELS = ("zero", "one", "two")  # the shipped model's labels (tests/helpers/models.py wrote it)
LOG_TAIL_LINES = 20


class SmokeFailure(Exception):
    """A step that failed: ``step`` names it, the message says why."""

    def __init__(self, step: str, why: str) -> None:
        super().__init__(f"{step}: {why}")
        self.step = step


def edgecnn_command() -> list[str]:
    """The `edgecnn` console script of this interpreter's environment (what a user runs), else the module."""
    script = Path(sys.executable).with_name("edgecnn")
    if script.is_file():
        return [str(script)]
    found = shutil.which("edgecnn")
    return [found] if found else [sys.executable, "-c", "from edgecnn.serve.cli import main; main()"]


class _Server:
    """`edgecnn serve MODEL` on a free loopback port, its JSON log lines read from stderr."""

    def __init__(self, model: Path, provider: str, extra: list[str]) -> None:
        args = [*edgecnn_command(), "serve", str(model), "--host", "127.0.0.1", "--port", "0",
                "--no-metrics", "--provider", provider, *extra]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.log.append(line.rstrip("\n"))
            self._lines.put(line)
        self._lines.put(None)  # the server closed stderr: it has exited

    def address(self, deadline: float) -> str:
        """The address of the "serving" log line; fails when the server exits or the deadline passes first."""
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SmokeFailure("start", "the server did not report serving before the deadline") from None
            if line is None:
                code = self.process.wait()
                raise SmokeFailure("start", f"the server exited with code {code} before serving: {self.last_error()}")
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("msg") == "serving":
                return entry["address"]

    def last_error(self) -> str:
        for line in reversed(self.log):
            if line.startswith("error:"):
                return line
        return self.log[-1] if self.log else "(no output)"

    def stop(self, deadline: float) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise SmokeFailure("stop", "the server did not exit after SIGTERM before the deadline") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _check_serving(address: str, deadline: float, labels: tuple[str, ...] | None) -> str:
    """Health SERVING, then one image of the model's shape classified (with one of ``labels``, when
    known, and a probability); returns "MODEL: LABEL"."""
    import grpc
    import numpy as np
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from edgecnn.serve.client import InferenceClient

    with InferenceClient(address, timeout=max(1.0, deadline - time.monotonic())) as client:
        try:
            health = health_pb2_grpc.HealthStub(client.channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=max(1.0, deadline - time.monotonic()))
        except grpc.RpcError as error:
            raise SmokeFailure("health", f"grpc.health.v1 Check failed: {error.code().name}") from None
        if health.status != health_pb2.HealthCheckResponse.SERVING:
            raise SmokeFailure("health", f"grpc.health.v1 says {health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}")
        try:
            metadata = client.model_metadata()
            shape = [1 if dim < 0 else dim for dim in metadata.inputs[0].shape]
            result = client.infer(metadata.name, np.zeros(shape, np.uint8), top_k=1)
        except grpc.RpcError as error:
            raise SmokeFailure("infer", f"{error.code().name}: {error.details()}") from None
        best = result.top_k[0][0]
        if not 0.0 <= best.score <= 1.0 or (labels is not None and best.label not in labels):
            raise SmokeFailure("infer", f"the answer {best.label!r} (score {best.score}) is not a class of the model")
        return f"{metadata.name}: {best.label}"


def run_smoke(model: Path = SMOKE_MODEL, provider: str = "cpu", timeout_s: float = 120.0,
              extra_serve_args: list[str] | None = None) -> str:
    """Start, check and stop a server; returns a one-line summary or raises SmokeFailure.

    Example:
        >>> run_smoke()  # doctest: +SKIP
        'smoke: OK (smoke: one) in 2.1 s'
    """
    started = time.monotonic()
    deadline = started + timeout_s
    if not Path(model).exists():
        raise SmokeFailure("model", f"{model}: no such model file or repository")
    server = _Server(Path(model), provider, list(extra_serve_args or []))
    try:
        labels = SMOKE_LABELS if Path(model) == SMOKE_MODEL else None
        answer = _check_serving(server.address(deadline), deadline, labels)
        code = server.stop(deadline)
        if code != 0:
            raise SmokeFailure("stop", f"the server exited with code {code} after SIGTERM")
    except SmokeFailure as failure:
        failure.log = server.log  # type: ignore[attr-defined]
        raise
    finally:
        server.kill()
    return f"smoke: OK ({answer}) in {time.monotonic() - started:.1f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgecnn.serve.smoke", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=SMOKE_MODEL,
                        help="model file or repository to serve (default: the tiny model shipped in the package)")
    parser.add_argument("--provider", choices=("cpu", "cuda", "auto"), default="cpu",
                        help="execution provider, as `edgecnn serve --provider` (default: cpu)")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="deadline for all steps (default: 120)")
    parser.add_argument("serve_args", nargs=argparse.REMAINDER,
                        help="after --: more `edgecnn serve` flags (e.g. -- --intra-op-threads 1)")
    args = parser.parse_args(argv)
    extra = args.serve_args[1:] if args.serve_args[:1] == ["--"] else args.serve_args
    try:
        print(run_smoke(args.model, args.provider, args.timeout_s, extra))
    except SmokeFailure as failure:
        print(f"smoke: FAILED at {failure}", file=sys.stderr)
        tail = getattr(failure, "log", [])[-LOG_TAIL_LINES:]
        if tail:
            print("smoke: the server's last log lines:\n  " + "\n  ".join(tail), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
