"""Every tunable of `edgecnn bench` and `edgecnn demo`, each in one typed object.

The CLI builds its flags from these fields: the default and the help text live here, once.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgecnn.serve.settings import usable_cores

SCENARIOS = ("single-stream", "server", "offline")
IN_PROCESS, SERVED, OUTPUT = "In-process (compute floor)", "Served (any Open Inference Protocol server)", "Output"


def _flag(default: Any, help: str, panel: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "panel": panel})


@dataclass(frozen=True)
class BenchSettings:
    providers: tuple[str, ...] = _flag(("cpu",), "In-process providers: cpu, cuda, auto or onnxruntime names.", IN_PROCESS)
    batch_sizes: tuple[int, ...] = _flag((1, 8, 64), "In-process batch sizes.", IN_PROCESS)
    threads: int = _flag(0, "In-process onnxruntime intra-op threads (0: onnxruntime's default).", IN_PROCESS)
    side_by_side: int = _flag(0, "One-thread in-process callers timed side by side as well, the server's own layout "
                              "(0: as many instances as `edgecnn serve` runs here by default; 1: none). The compute "
                              "floor is the fastest layout.", IN_PROCESS)
    warmup_s: float = _flag(0.5, "In-process warm-up seconds per configuration.", IN_PROCESS)
    window_s: float = _flag(0.5, "In-process measurement window, seconds.", IN_PROCESS)
    stability: float = _flag(0.10, "Stop when the last three windows' throughputs vary by at most this...", IN_PROCESS)
    max_seconds: float = _flag(8.0, "...or after this many seconds per configuration.", IN_PROCESS)

    server: str = _flag("", "HOST:PORT of a running Open Inference Protocol server (ours, Triton, ...); several "
                        "comma-separated, or dns:///NAME:PORT, are balanced round robin.", SERVED)
    start_server: bool = _flag(False, "Start `edgecnn serve MODEL` for each model file and benchmark it.", SERVED)
    server_args: str = _flag("", 'More `edgecnn serve` flags with --start-server, e.g. "--max-batch-size 1".', SERVED)
    model: str = _flag("", "Model name on the server (default: the model file's metadata name, else the only "
                       "model the server serves).", SERVED)
    model_version: str = _flag("", "Model version on the server (default: the server's choice).", SERVED)
    batch_size: int = _flag(1, "Images per request.", SERVED)
    concurrency: tuple[int, ...] = _flag((1, 2, 4, 8, 16, 32), "Closed-loop concurrency sweep ('' for none).", SERVED)
    rates: tuple[float, ...] = _flag((), "Open-loop Poisson arrival rates, requests/s.", SERVED)
    scenarios: tuple[str, ...] = _flag(SCENARIOS, f"MLPerf-style scenarios: {', '.join(SCENARIOS)} ('' for none).",
                                       SERVED)
    latency_bound_ms: float = _flag(10.0, "The server scenario's p99 latency bound.", SERVED)
    search_steps: int = _flag(6, "Open-loop runs of the server scenario's rate bisection.", SERVED)
    point_warmup_s: float = _flag(0.5, "Unrecorded load before each served point, seconds.", SERVED)
    duration_s: float = _flag(3.0, "Measurement window of each served point, seconds.", SERVED)
    clients: int = _flag(0, "Load-generator processes (0: one per four cores, at least one).", SERVED)
    images: str = _flag("", "Folder of real images to send (default: random pixels).", SERVED)
    distinct_requests: int = _flag(8, "Pre-built requests sent in turn.", SERVED)
    timeout_s: float = _flag(10.0, "Per-request deadline, seconds.", SERVED)
    floors: bool = _flag(True, "Measure the echo server (transport floor) at every served point.", SERVED)
    tls: bool = _flag(False, "Reach the server over TLS, trusting the system's roots (or --tls-ca).", SERVED)
    tls_ca: str = _flag("", "CA bundle (PEM) the server's certificate must chain to; turns TLS on.", SERVED)
    tls_cert: str = _flag("", "Client certificate (PEM) for a mutual-TLS server, with --tls-key.", SERVED)
    tls_key: str = _flag("", "Private key (PEM) of --tls-cert.", SERVED)
    token_file: str = _flag("", "File holding the bearer token to send (its first line's first field).", SERVED)

    seed: int = _flag(0, "Seed of random inputs and Poisson schedules.", OUTPUT)
    out: str = _flag("bench-results", "Folder for bench.json, bench.md and the PNG plots.", OUTPUT)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __post_init__(self) -> None:
        unknown = set(self.scenarios) - set(SCENARIOS)
        if unknown:
            raise ValueError(f"unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
        if self.server and self.start_server:
            raise ValueError("give either --server HOST:PORT or --start-server, not both")
        if self.side_by_side < 0:
            raise ValueError("--side-by-side must be >= 0 (0 = the server's default layout, 1 = none)")
        if self.clients < 0 or self.batch_size < 1:
            raise ValueError("--clients must be >= 0 (0 = auto) and --batch-size >= 1")
        if not self.providers or not self.batch_sizes:
            raise ValueError("--provider and --batch-sizes need at least one value each")
        at_least = {"--batch-sizes": (self.batch_sizes, 1), "--concurrency": (self.concurrency, 1),
                    "--distinct-requests": ((self.distinct_requests,), 1), "--search-steps": ((self.search_steps,), 1),
                    "--threads": ((self.threads,), 0),
                    "--warmup": ((self.warmup_s,), 0), "--point-warmup": ((self.point_warmup_s,), 0),
                    "--stability": ((self.stability,), 0)}
        for flag, (values, low) in at_least.items():
            if any(v < low for v in values):
                raise ValueError(f"{flag} must be >= {low}, got {as_csv(values)}")
        above_zero = {"--rate": self.rates, "--window": (self.window_s,), "--max-seconds": (self.max_seconds,),
                      "--duration": (self.duration_s,), "--timeout": (self.timeout_s,),
                      "--latency-bound-ms": (self.latency_bound_ms,)}
        for flag, values in above_zero.items():
            if any(v <= 0 for v in values):
                raise ValueError(f"{flag} must be > 0, got {as_csv(values)}")
        try:
            shlex.split(self.server_args)
        except ValueError as exc:
            raise ValueError(f"--server-args {self.server_args!r} is not a command line: {exc}") from None

    def security(self):
        """The served target's TLS and token, as the client and load generator take them."""
        from edgecnn.serve.client import ChannelSecurity

        return ChannelSecurity.from_files(tls=self.tls, tls_ca=self.tls_ca or None, tls_cert=self.tls_cert or None,
                                          tls_key=self.tls_key or None, token_file=self.token_file or None)

    def client_processes(self) -> int:
        return self.clients or max(1, usable_cores() // 4)


@dataclass(frozen=True)
class DemoSettings:
    out: str = _flag("edgecnn-demo", "Folder for everything the demo writes.")
    model: str = _flag("mnist-cnn", "Seed CNN to train (small enough to train in seconds on a CPU).")
    epochs: int = _flag(2, "Training epochs.")
    images: int = _flag(8, "Real test images to classify over gRPC.")
    top_k: int = _flag(3, "Labels shown per image.")
    bench_seconds: float = _flag(1.5, "Measurement window of each served benchmark point, seconds.")
    seed: int = _flag(0, "Seed of training and of the images picked.")

    def __post_init__(self) -> None:
        from edgecnn.train.data import AGREED_TRAIN_IMAGES

        test_images = 10_000 - AGREED_TRAIN_IMAGES  # the embedded set's test split
        for flag, value in {"--epochs": self.epochs, "--images": self.images, "--top-k": self.top_k}.items():
            if value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        if self.images > test_images:
            raise ValueError(f"--images can be at most {test_images:,} (the embedded test split), got {self.images}")
        if self.bench_seconds <= 0:
            raise ValueError(f"--bench-seconds must be > 0, got {self.bench_seconds:g}")


def as_csv(values: tuple) -> str:
    """A tuple setting as its flag writes it: 1,8,64."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def help_of(settings: type, name: str) -> dict[str, str]:
    """A field's help text and help panel, for its CLI flag."""
    meta = next(f.metadata for f in fields(settings) if f.name == name)
    return {"help": meta["help"], "rich_help_panel": meta["panel"]}
