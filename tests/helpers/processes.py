"""`edgecnn serve` in a child process, and free loopback ports for the servers tests start."""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import threading

EDGECNN = [sys.executable, "-c", "from edgecnn.serve.cli import main; main()"]
# Flags for a server on loopback with ports the kernel picks and one thread: the tests share a small machine.
LOOPBACK = ("--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--provider", "cpu", "--intra-op-threads", "1")


class ServeProcess:
    """`edgecnn serve ...` in a child process; its JSON log lines are collected from stderr.

    Example: ``server = ServeProcess("model.onnx", *LOOPBACK); port = server.wait_for_log("serving")["port"]``.
    """

    def __init__(self, *args: str, command: list[str] = EDGECNN) -> None:
        self.process = subprocess.Popen(
            [*command, "serve", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)
            self.lines.put(line)

    def wait_for_log(self, msg: str, timeout: float = 60.0) -> dict:
        """The next JSON log entry whose ``msg`` is ``msg``; fails with the log so far after ``timeout``."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {msg!r} log line; log so far:\n{''.join(self.log)}") from None
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("msg") == msg:
                return entry

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on at ``host`` right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_on_every_host(hosts: tuple[str, ...]) -> int:
    """One port free on every address in ``hosts`` (replicas that share a port on 127.0.0.2, .3, ...)."""
    for _ in range(20):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
            return port
        except OSError:
            continue
    raise AssertionError("no port free on every replica address")
