"""Every tunable of `edgecnn serve` in one typed object: its defaults ARE the CLI defaults.

`edgecnn serve` builds its flags from these fields (default and help text), so a value
changed here changes the command, the docs (`--help`) and `start_server` alike.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, get_args

Provider = Literal["cpu", "cuda", "auto"]
PROVIDERS: tuple[str, ...] = get_args(Provider)
ModelControlMode = Literal["none", "poll", "explicit"]
MODEL_CONTROL_MODES: tuple[str, ...] = get_args(ModelControlMode)


LOG_LEVELS = ("debug", "info", "warning", "error")

# Pillow refuses images over twice its MAX_IMAGE_PIXELS (89,478,485) whatever we allow.
PILLOW_PIXEL_LIMIT = 2 * 89_478_485


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
    model_control_mode: ModelControlMode = _flag(
        "none",
        "none: serve the repository as it is at start; poll: rescan it every --repository-poll-s and load new or "
        "changed versions beside the serving ones, unload removed ones; explicit: load only --load-model at start, "
        "then what RepositoryModelLoad/Unload ask (the admin scope when tokens are on).",
    )
    repository_poll_s: float = _flag(15.0, "Seconds between repository scans with --model-control-mode poll.")
    load_model: tuple[str, ...] | None = _flag(
        None, "A model to load at start with --model-control-mode explicit (repeatable)."
    )
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
    max_message_bytes: int = _flag(
        0,
        "Largest request message; larger gets RESOURCE_EXHAUSTED before it is parsed. 0: derived from the models "
        "served (--max-request-images x the largest image's bytes, at least 4 MiB for encoded images).",
    )
    max_request_images: int = _flag(
        0, "Most images one ModelInfer may carry; more gets INVALID_ARGUMENT before any decode. 0: --max-batch-size."
    )
    max_image_pixels: int = _flag(
        16_000_000,
        "Most pixels (width x height) of one encoded PNG/JPEG, read from its header before decoding "
        f"(at most {PILLOW_PIXEL_LIMIT:,}, Pillow's own).",
    )
    max_queue_bytes: int = _flag(
        256 * 1024 * 1024,
        "Bytes of images waiting per model before new requests get RESOURCE_EXHAUSTED (with --max-queue-size, "
        "which counts requests).",
    )
    max_decode_backlog: int = _flag(
        0, "Encoded images waiting for the decode threads before new ones get RESOURCE_EXHAUSTED. 0: 4 x --max-request-images."
    )
    max_concurrent_rpcs: int = _flag(
        512,
        "RPCs handled at once by a server process; more get RESOURCE_EXHAUSTED from gRPC. With the receive "
        "limit it bounds the memory requests can hold: at most this x --max-message-bytes.",
    )
    max_concurrent_streams: int = _flag(256, "Concurrent RPCs one client connection may open (HTTP/2 streams).")
    max_metadata_bytes: int = _flag(16 * 1024, "Largest request metadata (headers) gRPC accepts.")
    max_connection_age_s: float = _flag(
        0.0,
        "Close each client connection (GOAWAY) after this many seconds so clients re-resolve and spread over "
        "replicas behind an L4 balancer; in-flight calls finish within --max-connection-age-grace-s. 0: never.",
    )
    max_connection_age_grace_s: float = _flag(30.0, "Time calls on an aged-out connection get to finish.")
    keepalive_time_s: float = _flag(
        7200.0, "Seconds between the server's keepalive pings on an idle connection (Triton's default: 2 h)."
    )
    keepalive_timeout_s: float = _flag(20.0, "Seconds a keepalive ping waits for its ack before the connection closes.")
    keepalive_permit_without_calls: bool = _flag(
        False, "Accept client keepalive pings on connections with no call in flight."
    )
    min_ping_interval_s: float = _flag(
        300.0,
        "Shortest interval between client pings the server tolerates without calls in flight (gRPC's "
        "http2.min_ping_interval_without_data); faster pings are strikes.",
    )
    max_ping_strikes: int = _flag(2, "Pings too soon before the server answers GOAWAY and closes (0: unlimited).")
    tls_cert: Path | None = _flag(None, "Server certificate chain (PEM): serve TLS only. Re-read on SIGHUP.")
    tls_key: Path | None = _flag(None, "Private key (PEM) of --tls-cert. Re-read on SIGHUP.")
    tls_client_ca: Path | None = _flag(
        None, "CA bundle (PEM) for mutual TLS: every client must present a certificate it signed. Re-read on SIGHUP."
    )
    auth_token_file: Path | None = _flag(
        None,
        "Bearer tokens, one per line, each optionally followed by its scopes (TOKEN inference,metadata,admin); "
        "no scopes: all. Clients send 'authorization: Bearer TOKEN'. Every RPC is denied without one, except health.",
    )
    auth_health: bool = _flag(False, "Require a token for health too (grpc.health.v1, ServerLive, ServerReady).")
    reflection: bool | None = _flag(None, "gRPC server reflection. Default: on, off when TLS or tokens are on.")
    metrics_host: str = _flag("", "Interface for the metrics endpoint (default: --host). 127.0.0.1 keeps it private.")
    trim_memory_idle_s: float = _flag(
        2.0,
        "Once no batch has run for this long after a burst, hand freed heap memory back to the system "
        "(glibc malloc_trim), so RSS settles near its baseline. 0: never.",
    )
    ort_arena: bool = _flag(
        True,
        "onnxruntime's CPU memory arena: faster runs, but the memory of the largest batch stays with each session.",
    )
    drain_delay_s: float = _flag(
        1.0,
        "After SIGTERM/SIGINT: health NOT_SERVING at once, but keep serving this long (load balancers and "
        "Kubernetes endpoints catch up), then refuse new RPCs with UNAVAILABLE and finish in-flight ones.",
    )
    grace: float = _flag(10.0, "Seconds in-flight requests get to finish once new ones are refused after SIGTERM/SIGINT.")
    log_level: str = _flag("info", "debug, info, warning or error (logs are JSON lines on stderr).")

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))  # frozen; accept a str path too
        for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_token_file"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}")
        if self.model_control_mode not in MODEL_CONTROL_MODES:
            raise ValueError(f"--model-control-mode must be one of {', '.join(MODEL_CONTROL_MODES)}, "
                             f"got {self.model_control_mode!r}")
        object.__setattr__(self, "load_model", tuple(self.load_model or ()))
        if self.load_model and self.model_control_mode != "explicit":
            raise ValueError("--load-model goes with --model-control-mode explicit")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.repository_poll_s <= 0:
            raise ValueError(f"--repository-poll-s must be > 0, got {self.repository_poll_s}")
        for name in ("max_batch_size", "max_queue_size", "workers", "inter_op_threads", "gil_switch_interval_us",
                     "max_image_pixels", "max_queue_bytes", "max_concurrent_rpcs", "max_concurrent_streams", "max_metadata_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_queue_delay_us", "instances", "intra_op_threads", "single_thread_below", "decode_threads", "port",
                     "metrics_port", "max_message_bytes", "max_request_images",
                     "max_decode_backlog", "max_connection_age_s", "max_connection_age_grace_s", "keepalive_time_s",
                     "keepalive_timeout_s", "min_ping_interval_s", "max_ping_strikes", "drain_delay_s", "grace",
                     "trim_memory_idle_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("port", "metrics_port"):
            if getattr(self, name) > 65535:
                raise ValueError(f"--{name.replace('_', '-')} must be at most 65535, got {getattr(self, name)}")
        if self.max_image_pixels > PILLOW_PIXEL_LIMIT:
            raise ValueError(f"--max-image-pixels can be at most {PILLOW_PIXEL_LIMIT:,} (Pillow's own limit)")
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

    @property
    def max_request_images_resolved(self) -> int:
        return self.max_request_images or self.max_batch_size

    @property
    def max_decode_backlog_resolved(self) -> int:
        return self.max_decode_backlog or 4 * self.max_request_images_resolved

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def reflection_resolved(self) -> bool:
        if self.reflection is not None:
            return self.reflection
        return not (self.tls or self.auth_token_file is not None)

    @property
    def metrics_host_resolved(self) -> str:
        return self.metrics_host or self.host


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity (taskset, cpusets), capped by a cgroup CPU quota
    (a container limited to 2 CPUs on a 64-core host gets 2, not 64)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup quota allows (cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``); None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # v2: "max 100000" or "200000 100000"
    except (OSError, ValueError):
        try:  # v1
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return int(quota) / int(period) if int(quota) > 0 and int(period) > 0 else None
    except ValueError:
        return None


def help_of(name: str) -> str:
    """The help text of one setting, for its CLI flag."""
    return next(f.metadata["help"] for f in fields(ServeSettings) if f.name == name)
