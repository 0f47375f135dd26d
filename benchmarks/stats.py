"""Latency statistics: percentiles of per-call latencies and the stability rule for repeated windows."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LatencyStats:
    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    items_per_s: float  # items (images) per second at the median latency of one sequential caller

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(seconds: np.ndarray | Sequence[float], items_per_call: int = 1) -> LatencyStats:
    """Percentiles (linear interpolation between closest ranks, numpy's default) of latencies in seconds."""
    s = np.asarray(seconds, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no samples to summarize")
    p50, p90, p95, p99 = np.percentile(s, PERCENTILES)
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


def relative_spread(values: Sequence[float]) -> float:
    """(max - min) / median: how much a few throughput measurements disagree (0.1 = 10%)."""
    v = np.asarray(values, dtype=np.float64)
    median = float(np.median(v))
    return float((v.max() - v.min()) / median) if median > 0 else float("inf")


def is_stable(window_throughputs: Sequence[float], tolerance: float, last: int = 3) -> bool:
    """The stability rule: the last ``last`` windows' throughputs vary by at most ``tolerance``."""
    return len(window_throughputs) >= last and relative_spread(window_throughputs[-last:]) <= tolerance


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None where either side is missing or the denominator is zero."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return float(numerator / denominator)


def median_and_worst(ratios: Sequence[float], lower_is_better: bool = False) -> tuple[float, float]:
    """The median over rounds and the worst round: the highest where lower is better (latency), else the lowest."""
    return float(np.median(ratios)), max(ratios) if lower_is_better else min(ratios)
