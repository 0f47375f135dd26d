"""Prometheus metrics of the server, per model: requests by status, latencies, batch sizes, queue depth.

Each server gets its own registry (several can live in one test process). With ``--workers N``
the processes write to a shared multiprocess directory and the parent serves their sum.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# 50 us .. 10 s: single images on a small CNN take well under a millisecond.
LATENCY_BUCKETS = (
    50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class ModelMetrics:
    """The children of every metric for one model (labels resolved once, off the hot path)."""

    request_seconds: Histogram
    queue_seconds: Histogram
    compute_seconds: Histogram
    batch_size: Histogram
    queue_depth: Gauge

    def observe_batch(self, size: int, compute_s: float) -> None:
        self.batch_size.observe(size)
        self.compute_seconds.observe(compute_s)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        labels = ("model", "version")
        self._request_counters: dict[tuple[str, str, str], Counter] = {}
        self.requests = Counter(
            "edgecnn_requests", "ModelInfer requests by final gRPC status.", (*labels, "status"), registry=r
        )
        self.request_seconds = Histogram(
            "edgecnn_request_seconds", "ModelInfer time in the server, end to end.", labels,
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_seconds = Histogram(
            "edgecnn_queue_seconds", "Time a request waited in the batcher queue.", labels,
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.compute_seconds = Histogram(
            "edgecnn_compute_seconds", "onnxruntime time per batch.", labels, buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "edgecnn_batch_size", "Images per onnxruntime run.", labels, buckets=BATCH_BUCKETS, registry=r
        )
        self.model_loads = Counter(
            "edgecnn_model_loads", "Model version loads by outcome (ok, failed).", ("model", "outcome"), registry=r
        )
        self.model_unloads = Counter("edgecnn_model_unloads", "Model versions unloaded.", ("model",), registry=r)
        self.models_loaded = Gauge(
            "edgecnn_models_loaded", "Model versions serving.", multiprocess_mode="livesum", registry=r
        )
        self.queue_depth = Gauge(
            "edgecnn_queue_depth", "Requests left waiting in the batcher queue when it last took a batch.", labels,
            multiprocess_mode="livesum", registry=r,
        )

    def for_model(self, name: str, version: str) -> ModelMetrics:
        return ModelMetrics(
            request_seconds=self.request_seconds.labels(name, version),
            queue_seconds=self.queue_seconds.labels(name, version),
            compute_seconds=self.compute_seconds.labels(name, version),
            batch_size=self.batch_size.labels(name, version),
            queue_depth=self.queue_depth.labels(name, version),
        )

    def count_load(self, name: str, outcome: str) -> None:
        self.model_loads.labels(name, outcome).inc()

    def count_unload(self, name: str) -> None:
        self.model_unloads.labels(name).inc()

    def count_request(self, name: str, version: str, status: str) -> None:
        key = (name, version, status)
        counter = self._request_counters.get(key)
        if counter is None:  # resolve the labels once per combination, not once per request
            counter = self._request_counters[key] = self.requests.labels(*key)
        counter.inc()


def serve_metrics(port: int, host: str, registry: CollectorRegistry | None = None, tls: dict | None = None):
    """Start the /metrics HTTP endpoint on a daemon thread; returns (http server, bound port).

    Without a registry it serves the sum over the worker processes of a ``--workers`` group.
    ``tls``: prometheus_client's certfile/keyfile/client_cafile (HTTPS; a client CA requires client certificates).
    """
    if registry is None:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=os.environ[MULTIPROC_ENV])
    tls = dict(tls or {})
    if tls.get("client_cafile"):
        tls["client_auth_required"] = True
    server, _thread = start_http_server(port, addr=host, registry=registry, **tls)
    return server, server.server_port
