"""Local rate limits with several workers: each worker runs its share of every token bucket.

A token bucket lives in one process's core (``metamesh.filters.local_ratelimit`` is sans-IO and
knows nothing of workers), so with ``--workers N`` each process gets a rewritten copy of the
snapshot whose local rate limit buckets hold 1/N of the configured tokens:

* **burst**: ``max_tokens`` is divided, the remainder going to the first workers, so the shares
  add up to the configured burst exactly (a worker's share is at least one token: with fewer
  tokens than workers the whole proxy's burst is the number of workers);
* **rate**: ``tokens_per_fill`` is divided the same way, every worker keeping ``fill_interval``;
  with fewer tokens per fill than workers, each adds all of them every ``N * fill_interval``.
  Either way the refills of all workers add up to the configured rate (a worker refills at most
  to its burst share, so a bucket whose burst is below N times its fill can give less).

The kernel spreads client connections over the workers (``SO_REUSEPORT`` hashes each
connection), so a single client connection only ever draws on one worker's share: the limit
holds for the proxy as a whole (never more than configured), and a lone connection may be
limited at 1/N of it. This is the even split the issue allows; a bucket shared across
processes would need a lock in shared memory on every request.

The remote (global) rate limit is unaffected: its counters already live in one server.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from metamesh.proxy.config import Listener, LocalRateLimitConfig, Snapshot, TokenBucket
from metamesh.proxy.filters.base import LOCAL_RATELIMIT


def bucket_share(bucket: TokenBucket, index: int, count: int) -> TokenBucket:
    """Worker ``index``'s (0-based) share of ``bucket`` among ``count`` workers."""
    burst = bucket.max_tokens // count + (1 if index < bucket.max_tokens % count else 0)
    tokens = bucket.tokens_per_fill
    if tokens >= count:
        per_fill = tokens // count + (1 if index < tokens % count else 0)
        interval = bucket.fill_interval
    else:  # fewer tokens per fill than workers: each refills all of them, N times less often
        per_fill, interval = tokens, bucket.fill_interval * count
    return TokenBucket(max(burst, 1), per_fill, interval)


def _share_config(config: LocalRateLimitConfig, index: int, count: int) -> LocalRateLimitConfig:
    default = config.token_bucket
    return LocalRateLimitConfig(
        bucket_share(default, index, count) if default is not None else None,
        tuple((match, bucket_share(b, index, count)) for match, b in config.conditions),
    )


def _share_listener(listener: Listener, index: int, count: int) -> Listener:
    configs = tuple(
        (name, _share_config(c, index, count))
        if name == LOCAL_RATELIMIT and isinstance(c, LocalRateLimitConfig)
        else (name, c)
        for name, c in listener.filter_configs
    )
    return dataclasses.replace(listener, filter_configs=configs)


def share_local_rate_limits(snapshot: Snapshot, index: int, count: int) -> Snapshot:
    """``snapshot`` with every local rate limit bucket cut to worker ``index``'s share; the
    same object when there is nothing to cut (one worker, or no local rate limit)."""
    if count <= 1 or not any(
        isinstance(listener.filter_config(LOCAL_RATELIMIT), LocalRateLimitConfig)
        for listener in snapshot.listeners.values()
    ):
        return snapshot
    listeners = {
        name: _share_listener(listener, index, count)
        for name, listener in snapshot.listeners.items()
    }
    return dataclasses.replace(snapshot, listeners=MappingProxyType(listeners))
