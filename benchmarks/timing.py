"""Timing primitives shared by `edgecnn export` (per-variant speed) and `edgecnn bench`.

Timings on shared machines are noisy, so comparisons run side by side: `interleaved`
alternates the candidates (A B A B ...) and callers quote medians and ratios.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    items_per_s: float  # items (images) per second at the median latency

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(seconds: np.ndarray | list[float], items_per_call: int = 1) -> LatencyStats:
    """Percentiles (linear interpolation, as numpy) of per-call latencies in seconds."""
    s = np.asarray(seconds, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no samples to summarize")
    p50, p90, p95, p99 = np.percentile(s, [50, 90, 95, 99])
    return LatencyStats(
        count=int(s.size),
        mean_ms=float(s.mean() * 1e3),
        p50_ms=float(p50 * 1e3),
        p90_ms=float(p90 * 1e3),
        p95_ms=float(p95 * 1e3),
        p99_ms=float(p99 * 1e3),
        max_ms=float(s.max() * 1e3),
        items_per_s=float(items_per_call / p50) if p50 > 0 else float("inf"),
    )


def time_calls(fn: Callable[[], object], *, warmup: int = 3, min_calls: int = 10, min_seconds: float = 0.5) -> np.ndarray:
    """Call ``fn`` until both ``min_calls`` and ``min_seconds`` are reached; seconds per call."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_calls or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return np.asarray(samples)


def interleaved(
    candidates: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 5,
    warmup: int = 3,
    min_calls: int = 5,
    min_seconds: float = 0.2,
) -> dict[str, np.ndarray]:
    """Time each candidate in alternation (A B A B ...), ``rounds`` windows each; all samples per name."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[np.ndarray]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            out[name].append(time_calls(fn, warmup=0, min_calls=min_calls, min_seconds=min_seconds))
    return {name: np.concatenate(parts) for name, parts in out.items()}
