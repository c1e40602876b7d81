"""``aeraki.meta_protocol.filters.local_ratelimit``: token buckets per listener (Aeraki semantics).

The first condition whose match holds for the request's metadata picks its bucket; otherwise the
default bucket applies; with neither, the request passes. A bucket starts full with
``max_tokens``; every full ``fill_interval`` since its last fill adds ``tokens_per_fill`` (capped
at ``max_tokens``). Refills are computed from ``now`` when a request arrives, so no timer runs.
An empty bucket answers with an ``OVER_LIMIT`` local reply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from metamesh.codecs import ErrorKind
from metamesh.proxy.config import LocalRateLimitConfig, TokenBucket
from metamesh.proxy.filters.base import CONTINUE, Filter, FilterContext, FilterResult, LocalReply
from metamesh.proxy.router import compile_matcher, matches

if TYPE_CHECKING:
    from metamesh.proxy.upstream import ActiveRequest

_EPSILON: Final = 1e-9  # float slack so that 0.3 s is three fills of 0.1 s
_OVER_LIMIT: Final = LocalReply(ErrorKind.OVER_LIMIT, "local rate limit exceeded")


class Bucket:
    """One token bucket; ``take(now)`` refills from elapsed time and takes a token."""

    __slots__ = ("config", "last_fill", "tokens")

    def __init__(self, config: TokenBucket) -> None:
        self.config = config
        self.tokens = config.max_tokens
        self.last_fill: float | None = None

    def take(self, now: float) -> bool:
        config = self.config
        last = self.last_fill
        if last is None:
            self.last_fill = now
        elif now - last + _EPSILON >= config.fill_interval:
            fills = int((now - last + _EPSILON) // config.fill_interval)
            self.tokens = min(config.max_tokens, self.tokens + fills * config.tokens_per_fill)
            self.last_fill = last + fills * config.fill_interval
        if self.tokens > 0:
            self.tokens -= 1
            return True
        return False


class LocalRateLimitFilter(Filter):
    __slots__ = ("conditions", "ctx", "default")

    def __init__(self, config: LocalRateLimitConfig, ctx: FilterContext) -> None:
        self.ctx = ctx
        self.default = Bucket(config.token_bucket) if config.token_bucket else None
        self.conditions = tuple(
            (tuple(compile_matcher(m) for m in match), Bucket(bucket))
            for match, bucket in config.conditions
        )

    def on_request(self, req: ActiveRequest, now: float) -> FilterResult:
        bucket = self.default
        if self.conditions:
            metadata = req.request.metadata
            for matchers, candidate in self.conditions:
                if matches(matchers, metadata):
                    bucket = candidate
                    break
        if bucket is None:
            return CONTINUE
        stats = self.ctx.stats
        if bucket.take(now):
            stats.ratelimit_ok += 1
            return CONTINUE
        stats.ratelimit_over_limit += 1
        return _OVER_LIMIT


def create_local_ratelimit(config: object | None, ctx: FilterContext) -> Filter | None:
    if config is None:
        return None  # no bucket at all: every request passes
    if not isinstance(config, LocalRateLimitConfig):
        raise TypeError(f"local_ratelimit needs a LocalRateLimitConfig, got {type(config)}")
    return LocalRateLimitFilter(config, ctx)
