"""Each worker's share of a local rate limit adds up to the configured bucket (bucket_share)."""

from __future__ import annotations

from typing import Any

import pytest

from metamesh.proxy.config import (
    Listener,
    LocalRateLimitConfig,
    MatchKind,
    MetadataMatcher,
    Snapshot,
    TokenBucket,
)
from metamesh.proxy.filters.base import LOCAL_RATELIMIT
from metamesh.proxy.filters.local_ratelimit import Bucket
from metamesh.runtime.bucket_share import bucket_share, share_local_rate_limits


def passed(bucket: TokenBucket, times: list[float]) -> int:
    """Requests a bucket lets through when one arrives at each of ``times``."""
    b = Bucket(bucket)
    return sum(b.take(t) for t in times)


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize(
    "bucket", [TokenBucket(10, 10, 1.0), TokenBucket(7, 3, 0.5), TokenBucket(30, 4, 2.0)]
)
def test_shares_add_up_to_the_bucket(bucket: TokenBucket, count: int) -> None:
    shares = [bucket_share(bucket, i, count) for i in range(count)]
    assert sum(s.max_tokens for s in shares) == bucket.max_tokens
    rate = sum(s.tokens_per_fill / s.fill_interval for s in shares)
    assert rate == pytest.approx(bucket.tokens_per_fill / bucket.fill_interval)
    # under a flood, every share of the proxy together passes what one bucket would
    times = [k * 0.001 for k in range(20_000)]  # 20 s of 1000 req/s to each worker
    together = sum(passed(s, times) for s in shares)
    assert passed(bucket, times) - count * bucket.tokens_per_fill <= together
    assert together <= passed(bucket, times)


def test_fewer_tokens_than_workers_gives_each_one() -> None:
    assert [bucket_share(TokenBucket(1, 1, 1.0), i, 2).max_tokens for i in range(2)] == [1, 1]


def test_snapshot_share_rewrites_only_local_rate_limits() -> None:
    match = ((MetadataMatcher("method", MatchKind.EXACT, "add"),), TokenBucket(9, 9, 60.0))
    limited = Listener(
        "a", "127.0.0.1", 1, "thrift", "r",
        filter_configs=((LOCAL_RATELIMIT, LocalRateLimitConfig(TokenBucket(4, 2, 1.0), (match,))),),
    )  # fmt: skip
    plain = Listener("b", "127.0.0.1", 2, "thrift", "r")
    snapshot = Snapshot.build([limited, plain], [], [], version="7")
    assert share_local_rate_limits(snapshot, 0, 1) is snapshot
    first, second = (share_local_rate_limits(snapshot, i, 2) for i in range(2))
    assert first.version == "7" and first.listeners["b"] == plain
    configs: list[Any] = [s.listeners["a"].filter_config(LOCAL_RATELIMIT) for s in (first, second)]
    assert isinstance(configs[0], LocalRateLimitConfig)
    assert isinstance(configs[1], LocalRateLimitConfig)
    assert [c.token_bucket for c in configs] == [TokenBucket(2, 1, 1.0), TokenBucket(2, 1, 1.0)]
    assert bucket_share(TokenBucket(4, 1, 1.0), 1, 2) == TokenBucket(2, 1, 2.0)
    assert [c.conditions[0][1] for c in configs] == [
        TokenBucket(5, 5, 60.0),
        TokenBucket(4, 4, 60.0),
    ]
    assert configs[0].conditions[0][0] == match[0]
