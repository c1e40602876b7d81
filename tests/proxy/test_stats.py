"""Duration histogram buckets: Prometheus ``le`` semantics (a bound includes its own value)."""

from __future__ import annotations

import bisect

import pytest

from metamesh.proxy.stats import DURATION_BUCKETS_MS, RequestStats, duration_bucket


@pytest.mark.parametrize(
    ("ms", "index"),
    [(0.0, 0), (0.5, 0), (0.51, 1), (1.0, 1), (4.9, 2), (3_600_000.0, 18), (3_600_000.1, 19)],
)
def test_bucket_bounds_are_inclusive(ms: float, index: int) -> None:
    assert duration_bucket(ms) == index


def test_bucket_matches_bisect_everywhere() -> None:
    points = [b * f for b in DURATION_BUCKETS_MS for f in (0.5, 0.999, 1.0, 1.001, 2.0)]
    for ms in points:
        assert duration_bucket(ms) == bisect.bisect_left(DURATION_BUCKETS_MS, ms), ms


def test_observe_counts_sum_and_bucket_per_code() -> None:
    stats = RequestStats()
    stats.observe(0, 0.2)
    stats.observe(0, 7.0)
    stats.observe(1, 7_200_000.0)
    assert stats.count == [2, 1]
    assert stats.sum_ms == [7.2, 7_200_000.0]
    assert stats.buckets[0][0] == 1 and stats.buckets[0][3] == 1
    assert stats.buckets[1][len(DURATION_BUCKETS_MS)] == 1
