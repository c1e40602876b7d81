"""Local rate limit: a bucket admits exactly its size per interval, conditions pick buckets."""

from __future__ import annotations

from metamesh.codecs import ErrorKind
from metamesh.proxy.config import LocalRateLimitConfig, MatchKind, MetadataMatcher, TokenBucket
from metamesh.proxy.filters import LOCAL_RATELIMIT
from metamesh.proxy.filters.local_ratelimit import Bucket
from tests.proxy.filters.support import ROUTER, policy_harness, route, tick
from tests.proxy.harness import Harness, call

PUT = (MetadataMatcher("method", MatchKind.EXACT, "put"),)


def limited(config: LocalRateLimitConfig) -> Harness:
    return policy_harness(
        [route()], filters=(LOCAL_RATELIMIT, ROUTER), filter_configs=((LOCAL_RATELIMIT, config),)
    )


def over_limit(h: Harness, d: object, n: int, method: str = "get") -> int:
    h.send(d, b"".join(call(i, method=method) for i in range(n)))  # type: ignore[arg-type]
    return sum(1 for f in h.take(d) if f[3] == {"error": "over_limit"})


def test_admits_bucket_size_per_interval_then_refills() -> None:
    h = limited(LocalRateLimitConfig(TokenBucket(5, 5, 1.0)))
    d = h.client()
    assert over_limit(h, d, 8) == 3
    tick(h, 0.999)
    assert over_limit(h, d, 1) == 1
    tick(h, 1.0)
    assert over_limit(h, d, 6) == 1
    tick(h, 3.0)  # two fills, capped at max_tokens
    assert over_limit(h, d, 7) == 2
    assert h.core.stats.ratelimit_over_limit == 7 and h.core.stats.ratelimit_ok == 15
    assert h.core.stats.local_replies[ErrorKind.OVER_LIMIT] == 7


def test_first_matching_condition_wins_and_no_default_means_unlimited() -> None:
    h = limited(LocalRateLimitConfig(None, ((PUT, TokenBucket(2, 1, 1.0)),)))
    d = h.client()
    assert over_limit(h, d, 5, "put") == 3
    assert over_limit(h, d, 50, "get") == 0


def test_bucket_refill_is_exact_for_decimal_intervals() -> None:
    b = Bucket(TokenBucket(1, 1, 0.1))
    assert b.take(0.0) and not b.take(0.05)
    assert b.take(0.1) and b.take(0.2) and b.take(0.3) and not b.take(0.3)
