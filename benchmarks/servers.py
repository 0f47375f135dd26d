"""Servers the benchmarks start themselves, each in its own process: the echo server (transport
floor) and `edgecnn serve`. Both are context managers that always stop what they started."""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from edgecnn.benchmarks.payload import wait_until_ready
from edgecnn.serve.client import PLAINTEXT, ChannelSecurity

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def exit_on_sigterm() -> None:
    """Turn SIGTERM (a `timeout`, a CI runner) into SystemExit, so the `with` blocks below stop the servers
    and load generators they started instead of leaving them running with no parent."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class ServerStartError(RuntimeError):
    """A server the benchmark started exited or never became ready: bad --server-args, a bad model file."""


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@contextlib.contextmanager
def start_echo_server(
    response: bytes | None = None, metadata: bytes | None = None, hop: bool = False
) -> Iterator[ServerProcess]:
    """The echo server (benchmarks/echo.py) on a free loopback port, answering with ``response``
    (after a worker-thread round trip with ``hop``)."""
    with tempfile.TemporaryDirectory(prefix="edgecnn-echo-") as tmp:
        command = [sys.executable, "-m", "edgecnn.benchmarks.echo", "--port", "0", *(["--hop"] if hop else [])]
        for flag, payload in (("--response", response), ("--metadata", metadata)):
            if payload is not None:
                path = Path(tmp) / flag.lstrip("-")
                path.write_bytes(payload)
                command += [flag, str(path)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            yield ServerProcess(process, _announced_port(process))
        finally:
            stop_process(process)


@contextlib.contextmanager
def start_edgecnn_server(
    model: str | Path, extra_args: str | Sequence[str] = (), log: Path | None = None,
    security: ChannelSecurity = PLAINTEXT, python: str = sys.executable,
) -> Iterator[ServerProcess]:
    """`edgecnn serve MODEL` on a free loopback port (metrics on any free port), until the block ends.

    ``extra_args`` are more `edgecnn serve` flags, e.g. "--max-batch-size 1". Its logs go to ``log``
    (or are discarded): a benchmark's terminal stays readable. ``security``: how to reach it when
    ``extra_args`` turn on TLS or tokens. ``python``: the interpreter of another installed edgecnn
    (an older checkout's venv, for before/after comparisons).
    """
    args = shlex.split(extra_args) if isinstance(extra_args, str) else list(extra_args)
    server = spawn_edgecnn_server(model, "127.0.0.1", free_port(), args, log, security, python)
    try:
        yield server
    finally:
        stop_process(server.process)


def spawn_edgecnn_server(
    model: str | Path, host: str, port: int, args: Sequence[str] = (), log: Path | None = None,
    security: ChannelSecurity = PLAINTEXT, python: str = sys.executable,
) -> ServerProcess:
    """`edgecnn serve MODEL` on ``host:port``, once it answers ServerReady; the caller stops it
    (stop_process). Its output is appended to ``log`` (or discarded)."""
    command = [python, "-c", "from edgecnn.serve.cli import main; main()", "serve", str(model),
               "--host", host, "--port", str(port), "--metrics-port", "0", *args]
    with open(log, "ab") if log else open(os.devnull, "wb") as sink:  # the child keeps its own descriptor
        process = subprocess.Popen(command, stdout=sink, stderr=sink)
    server = ServerProcess(process, port, host)
    try:
        _wait_ready(server, security, log)
    except BaseException:
        stop_process(process)
        raise
    return server


def _wait_ready(server: ServerProcess, security: ChannelSecurity = PLAINTEXT, log: Path | None = None) -> None:
    """Until the server answers ServerReady; a server that exits (bad flags, a bad model) fails at once."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            wait_until_ready(server.address, 1.0, security)
            return
        except TimeoutError:
            code = server.process.poll()
            if code is None and time.monotonic() < deadline:
                continue
        what = f"exited with code {code}" if code is not None else f"was not ready after {READY_TIMEOUT_S:.0f} s"
        where = f"its log {log} says why" if log else "run it alone to see why"
        raise ServerStartError(f"`edgecnn {shlex.join(server.process.args[3:])}` {what}: {where}")


def free_port() -> int:
    """A loopback port free right now (another process could take it before we bind it: rare)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM (a graceful drain), then SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def _announced_port(process: subprocess.Popen) -> int:
    """The port from the echo server's ``LISTENING <port>`` line."""
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT_S)
    line = process.stdout.readline() if readable else ""
    if not line.startswith("LISTENING "):
        raise RuntimeError(f"echo server did not start (exit code {process.poll()}, said {line!r})")
    return int(line.split()[1])
