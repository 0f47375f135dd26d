"""Percentile math and the stability rule on known inputs."""

from __future__ import annotations

import numpy as np
import pytest
from edgecnn.benchmarks.stats import is_stable, ratio, relative_spread, summarize
from edgecnn.benchmarks.timing import interleaved, time_calls


def test_percentiles_of_1_to_100_ms_interpolate_linearly_between_ranks():
    stats = summarize(np.arange(1, 101) / 1e3)  # 1 ms .. 100 ms
    assert stats.count == 100
    assert stats.mean_ms == pytest.approx(50.5)
    # numpy's default (linear): rank = p/100 * (n - 1), interpolated between neighbours.
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p95_ms == pytest.approx(95.05)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.max_ms == pytest.approx(100.0)


def test_one_sample_is_every_percentile():
    stats = summarize([0.002])
    assert stats.p50_ms == stats.p99_ms == stats.max_ms == pytest.approx(2.0)


def test_order_does_not_matter_and_outliers_only_move_the_tail():
    rng = np.random.default_rng(0)
    samples = np.full(1000, 0.001)
    samples[:5] = 1.0  # five 1 s outliers in a thousand 1 ms calls
    shuffled = rng.permutation(samples)
    stats = summarize(shuffled)
    assert stats.p50_ms == stats.p90_ms == stats.p99_ms == pytest.approx(1.0)
    assert stats.max_ms == pytest.approx(1000.0)
    in_order = summarize(samples)
    assert (in_order.p50_ms, in_order.p99_ms, in_order.max_ms) == (stats.p50_ms, stats.p99_ms, stats.max_ms)
    assert in_order.mean_ms == pytest.approx(stats.mean_ms)


def test_items_per_second_at_the_median_latency():
    assert summarize([0.01, 0.01, 0.01], items_per_call=8).items_per_s == pytest.approx(800.0)


def test_no_samples_is_an_error():
    with pytest.raises(ValueError):
        summarize([])


def test_stability_rule_looks_at_the_last_three_windows_only():
    assert not is_stable([100, 100], tolerance=0.1)  # too few windows
    assert is_stable([10, 500, 100, 105, 109], tolerance=0.1)  # 9% spread over the last three
    assert not is_stable([100, 105, 112], tolerance=0.1)  # 12 / 105 > 10%
    assert relative_spread([90, 100, 110]) == pytest.approx(0.2)


def test_ratio_is_none_without_a_denominator():
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(3.0, None) is None
    assert ratio(None, 2.0) is None
    assert ratio(3.0, 0.0) is None


def test_time_calls_and_interleaved_return_seconds_per_call():
    calls = []
    samples = time_calls(lambda: calls.append(1), warmup=2, min_calls=7, min_seconds=0.0)
    assert samples.size == 7 and len(calls) == 9 and (samples >= 0).all()
    order = []
    out = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                      rounds=2, warmup=0, min_calls=1, min_seconds=0.0)
    assert set(out) == {"a", "b"} and order == ["a", "b", "a", "b"]
