"""Every tunable of `edgecnn serve` in one typed object: its defaults ARE the CLI defaults.

`edgecnn serve` builds its flags from these fields (default and help text), so a value
changed here changes the command, the docs (`--help`) and `start_server` alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, get_args

Provider = Literal["cpu", "cuda", "auto"]
PROVIDERS: tuple[str, ...] = get_args(Provider)


def _flag(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServeSettings:
    model: Path = field(metadata={"help": "An exported MODEL.onnx, or a repository folder NAME/VERSION/model.onnx."})
    host: str = _flag("0.0.0.0", "Interface to listen on (127.0.0.1 for this machine only).")
    port: int = _flag(8001, "gRPC port (0: any free port).")
    metrics: bool = _flag(True, "Serve Prometheus metrics over HTTP on --metrics-port.")
    metrics_port: int = _flag(8002, "Prometheus metrics port (0: any free port).")
    provider: Provider = _flag("auto", "onnxruntime execution provider: cpu, cuda, or auto (cuda when available).")
    max_batch_size: int = _flag(64, "Most images the dynamic batcher merges into one onnxruntime run.")
    max_queue_delay_us: int = _flag(
        100,
        "Longest a request waits for company while a batch is already running; an idle server never waits.",
    )
    max_queue_size: int = _flag(1024, "Requests waiting per model before new ones get RESOURCE_EXHAUSTED.")
    workers: int = _flag(1, "Server processes sharing the port (SO_REUSEPORT), each with its own sessions.")
    instances: int = _flag(
        0,
        "Batches each model may run side by side (Triton's instance count), each on its own compute thread; "
        "the second and later only while half a full batch is queued. 0: 2 where a worker's cores hold two "
        "runs at --intra-op-threads, else 1.",
    )
    intra_op_threads: int = _flag(
        0, "onnxruntime threads per run (0: usable cores / (workers x instances))."
    )
    single_thread_below: int = _flag(
        0,
        "Batches smaller than this run on a second, single-threaded session: on small batches, waking "
        "onnxruntime's thread pool costs more than it saves. 0: measured at load; 1: never.",
    )
    inter_op_threads: int = _flag(1, "onnxruntime threads across independent graph nodes (1: sequential, best for CNNs).")
    ort_spinning: bool = _flag(
        False, "Let idle onnxruntime threads spin between runs: faster on an idle machine, less CPU for gRPC under load."
    )
    gil_switch_interval_us: int = _flag(
        250,
        "Python's GIL switch interval. The default 5 ms lets a busy gRPC loop hold a finished onnxruntime "
        "thread for up to 5 ms; shorter hands batches back sooner.",
    )
    decode_threads: int = _flag(0, "Threads decoding PNG/JPEG inputs (0: usable cores).")
    max_message_bytes: int = _flag(64 * 1024 * 1024, "Largest request or response message; larger gets RESOURCE_EXHAUSTED.")
    grace: float = _flag(10.0, "Seconds in-flight requests get to finish after SIGTERM/SIGINT.")
    log_level: str = _flag("info", "debug, info, warning or error (logs are JSON lines on stderr).")

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))  # frozen; accept a str path too
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}")
        for name in ("max_batch_size", "max_queue_size", "workers", "inter_op_threads", "gil_switch_interval_us"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_queue_delay_us", "instances", "intra_op_threads", "single_thread_below", "decode_threads", "port",
                     "metrics_port"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.workers > 1 and self.port == 0:
            raise ValueError("--workers > 1 needs a fixed --port: the processes share it")

    @property
    def instances_resolved(self) -> int:
        # Measured on 2 cores: two single-threaded runs side by side served 64-image RPCs 11-18% faster
        # than one run on both cores, and in-process they run 20% faster too (no per-node thread sync).
        if self.instances:
            return self.instances
        cores = usable_cores() // self.workers
        if self.intra_op_threads:  # as many runs as the cores hold at the threads asked for, at most 2
            return max(1, min(2, cores // self.intra_op_threads))
        return 2 if cores >= 2 else 1

    @property
    def intra_op_threads_resolved(self) -> int:
        # Every core goes to onnxruntime, split over the instances: on 2 cores, leaving one to the gRPC
        # loop served 1-image RPCs no faster and 64-image RPCs a quarter slower.
        return self.intra_op_threads or max(1, usable_cores() // (self.workers * self.instances_resolved))

    @property
    def decode_threads_resolved(self) -> int:
        return self.decode_threads or usable_cores()


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def help_of(name: str) -> str:
    """The help text of one setting, for its CLI flag."""
    return next(f.metadata["help"] for f in fields(ServeSettings) if f.name == name)
