"""Merging the client processes' results: errors by status, the server's own times, saturation."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from edgecnn.benchmarks.loadgen import JobResult, merge


def job(latencies=(0.001, 0.002), errors=None, lags=(), cpu_s=0.2, server=None) -> JobResult:
    server = server or {}
    return JobResult(
        latencies_s=np.asarray(latencies),
        errors=Counter(errors or {}),
        send_lag_s=np.asarray(lags),
        cpu_s=cpu_s,
        wall_s=1.0,
        server_sums={k: sum(v) for k, v in server.items()},
        server_counts={k: len(v) for k, v in server.items()},
    )


def merged(*jobs: JobResult, batch_size: int = 4):
    return merge("served", "closed", list(jobs), batch_size, 2.0, concurrency=8, rate=None, host_busy=0.5)


def test_throughput_latency_and_errors_add_up_over_processes():
    point = merged(job(latencies=[0.001] * 10, errors={"UNAVAILABLE": 1}),
                   job(latencies=[0.003] * 10, errors={"UNAVAILABLE": 2, "DEADLINE_EXCEEDED": 1}))
    assert point.requests_per_s == pytest.approx(10.0)  # 20 answered requests in a 2 s window
    assert point.images_per_s == pytest.approx(40.0)
    assert point.latency.count == 20 and point.latency.p50_ms == pytest.approx(2.0)
    assert point.errors == {"UNAVAILABLE": 3, "DEADLINE_EXCEEDED": 1}
    assert point.client.processes == 2 and not point.client.saturated


def test_server_times_are_averaged_over_the_requests_that_report_them():
    point = merged(job(server={"queue_us": [100, 300], "compute_us": [1000, 1000], "batch_size": [2, 4]}),
                   job(server={"queue_us": [200], "compute_us": [4000], "batch_size": [6]}))
    assert point.server == pytest.approx({"queue_ms": 0.2, "compute_ms": 2.0, "batch_size": 4.0})
    assert merged(job(), job()).server == {}  # a server that reports nothing (Triton, the echo)


def test_a_busy_client_process_is_saturated():
    assert merged(job(cpu_s=0.5), job(cpu_s=0.95)).client.saturated
    assert merged(job(cpu_s=0.5)).client.cpu_per_process_max == pytest.approx(0.5)


def test_an_open_loop_behind_schedule_is_saturated():
    on_time = merge("served", "open", [job(lags=[0.0002] * 100)], 1, 2.0, None, 100.0, None)
    late = merge("served", "open", [job(lags=[0.003] * 100)], 1, 2.0, None, 100.0, None)
    assert not on_time.client.saturated and on_time.client.send_lag_p50_ms == pytest.approx(0.2)
    assert late.client.saturated


def test_no_answers_means_no_latency_figures():
    point = merged(job(latencies=[], errors={"UNAVAILABLE": 5}))
    assert point.latency is None and point.requests_per_s == 0.0
