"""The open-loop schedule: a Poisson process (exponential gaps at the asked mean rate)."""

from __future__ import annotations

import numpy as np
import pytest
from edgecnn.benchmarks.loadgen import poisson_arrivals, split_evenly


@pytest.mark.parametrize("rate", [50.0, 2000.0])
def test_mean_rate_matches_within_statistical_bounds(rate):
    seconds = 20.0
    arrivals = poisson_arrivals(rate, seconds, np.random.default_rng(1))
    expected = rate * seconds
    # The count is Poisson(expected): 5 standard deviations either way.
    assert abs(arrivals.size - expected) < 5 * np.sqrt(expected)
    assert arrivals.min() >= 0 and arrivals.max() < seconds
    assert np.all(np.diff(arrivals) > 0)


def test_gaps_are_exponential():
    rate = 500.0
    gaps = np.diff(poisson_arrivals(rate, 40.0, np.random.default_rng(2)))
    n = gaps.size
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)  # coefficient of variation of an exponential
    # Kolmogorov-Smirnov distance to the exponential CDF; 1.63/sqrt(n) is the 1% critical value, doubled.
    ordered = np.sort(gaps)
    cdf = 1 - np.exp(-rate * ordered)
    empirical_hi = np.arange(1, n + 1) / n
    empirical_lo = np.arange(0, n) / n
    distance = max(np.max(empirical_hi - cdf), np.max(cdf - empirical_lo))
    assert distance < 2 * 1.63 / np.sqrt(n)
    # Memorylessness: as many gaps above the mean as an exponential has (e^-1 of them).
    assert np.mean(gaps > 1 / rate) == pytest.approx(np.exp(-1), abs=0.02)


def test_the_same_seed_gives_the_same_schedule():
    a = poisson_arrivals(100.0, 5.0, np.random.default_rng(7))
    b = poisson_arrivals(100.0, 5.0, np.random.default_rng(7))
    assert np.array_equal(a, b)


def test_no_rate_no_arrivals():
    assert poisson_arrivals(0.0, 5.0, np.random.default_rng(0)).size == 0


def test_concurrency_is_split_over_client_processes_evenly():
    assert split_evenly(16, 3) == [6, 5, 5]
    assert split_evenly(2, 4) == [1, 1, 0, 0]
    assert sum(split_evenly(33, 4)) == 33
