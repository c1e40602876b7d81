"""Request statistics: histogram buckets with Prometheus ``le`` semantics (a bound includes its
own value), per-code counts, sums and sizes."""

from __future__ import annotations

import bisect

import pytest

from metamesh.proxy.stats import (
    DURATION_BUCKETS_MS,
    SIZE_BUCKETS,
    RequestStats,
    duration_bucket,
    size_bucket,
)


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


def test_size_bucket_matches_bisect_everywhere() -> None:
    points = [0, 1, 2, 255, 256, 257] + [b + d for b in SIZE_BUCKETS for d in (-1, 0, 1)]
    for size in points:
        assert size_bucket(size) == bisect.bisect_left(SIZE_BUCKETS, size), size


def test_observe_keeps_sizes_apart_per_code() -> None:
    stats = RequestStats()
    stats.observe(0, 1.0, 90, 2_000)
    stats.observe(1, 1.0, 5, 0)
    assert stats.request_bytes == [90, 5] and stats.response_bytes == [2_000, 0]
    assert stats.request_buckets[0][2] == 1 and stats.request_buckets[1][1] == 1
    assert stats.response_buckets[0][4] == 1 and stats.response_buckets[1][0] == 1
    assert sum(stats.buckets[0]) == sum(stats.buckets[1]) == 1
