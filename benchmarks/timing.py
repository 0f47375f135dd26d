"""Timing primitives shared by `edgecnn export` (per-variant speed) and `edgecnn bench`.

Timings on shared machines are noisy, so comparisons run side by side: `interleaved`
alternates the candidates (A B A B ...) and callers quote medians and ratios; `interleaved_rounds`
keeps each round's samples apart, for judging round by round.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

import numpy as np

from edgecnn.benchmarks.stats import LatencyStats, summarize

__all__ = ["LatencyStats", "summarize", "time_calls", "interleaved", "interleaved_rounds"]


def time_calls(
    fn: Callable[[], object], *, warmup: int = 3, min_calls: int = 10, min_seconds: float = 0.5
) -> np.ndarray:
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


def interleaved_rounds(
    candidates: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 5,
    warmup: int = 3,
    min_calls: int = 5,
    min_seconds: float = 0.2,
) -> dict[str, list[np.ndarray]]:
    """Time each candidate in alternation (A B A B ...), ``rounds`` windows each, after ``warmup`` untimed
    calls of each; per name, one array of seconds per call for each round (rounds paired across names)."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[np.ndarray]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            out[name].append(time_calls(fn, warmup=0, min_calls=min_calls, min_seconds=min_seconds))
    return out


def interleaved(
    candidates: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 5,
    warmup: int = 3,
    min_calls: int = 5,
    min_seconds: float = 0.2,
) -> dict[str, np.ndarray]:
    """Time each candidate in alternation (A B A B ...), ``rounds`` windows each; all samples per name."""
    windows = interleaved_rounds(candidates, rounds=rounds, warmup=warmup, min_calls=min_calls, min_seconds=min_seconds)
    return {name: np.concatenate(parts) for name, parts in windows.items()}
