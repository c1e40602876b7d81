"""Fixed-window counting: which Redis keys a request increments, and what the counts mean.

A limit of N per ``unit`` counts hits in windows aligned to the epoch (``window_start =
floor(now / unit) * unit``). The counter of a request descriptor lives at the key
``<domain>_<key1>_<value1>_<key2>_<value2>_..._<window_start>`` (the reference service's key
layout), so a wildcard limit (``key`` with no ``value``) counts each value separately, and
every server process that talks to the same Redis shares the counters.

:func:`plan_hits` and :func:`decide` are pure (``now`` is an argument, counts come in): window
arithmetic is tested with any clock. :class:`RedisCounter` is the only I/O: one ``MULTI``
transaction of ``INCRBY key hits`` + ``EXPIRE key unit`` per limited descriptor, so a key
never outlives its window and concurrent servers never lose an increment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from metamesh.ratelimit.limits import Limits, RateLimit


@dataclass(frozen=True, slots=True)
class Hit:
    """One limited descriptor of a request: the counter to bump and the limit it checks."""

    key: str
    hits: int
    limit: RateLimit
    shadow_mode: bool
    reset_after: float  # seconds until the window ends


@dataclass(frozen=True, slots=True)
class DescriptorDecision:
    """The answer for one request descriptor (``limit`` None: no limit applies)."""

    over_limit: bool
    limit: RateLimit | None = None
    remaining: int = 0
    reset_after: float = 0.0


def window_start(now: float, window_seconds: int) -> int:
    """Start (epoch seconds) of the fixed window containing ``now``."""
    return math.floor(now / window_seconds) * window_seconds


def counter_key(domain: str, entries: Sequence[tuple[str, str]], start: int) -> str:
    parts = [domain]
    for key, value in entries:
        parts += (key, value)
    parts.append(str(start))
    return "_".join(parts)


def plan_hits(
    limits: Limits,
    domain: str,
    descriptors: Sequence[tuple[Sequence[tuple[str, str]], int]],
    now: float,
) -> list[Hit | None]:
    """For each ``(entries, hits)`` descriptor: the counter to bump, or None (not limited)."""
    plan: list[Hit | None] = []
    for entries, hits in descriptors:
        node = limits.find(domain, entries)
        limit = node.rate_limit if node is not None else None
        if node is None or limit is None or limit.unlimited:
            plan.append(None)
            continue
        size = limit.window_seconds
        start = window_start(now, size)
        key = counter_key(domain, entries, start)
        plan.append(Hit(key, hits, limit, node.shadow_mode, start + size - now))
    return plan


def decide(
    plan: Sequence[Hit | None], counts: Sequence[int]
) -> tuple[bool, list[DescriptorDecision]]:
    """Turn counts after increment (one per planned hit, in order) into answers.

    Returns ``(over_limit, per-descriptor decisions)``; a shadow-mode descriptor reports its
    own status but never makes the request over limit.
    """
    decisions: list[DescriptorDecision] = []
    over = False
    counted = iter(counts)
    for hit in plan:
        if hit is None:
            decisions.append(DescriptorDecision(False))
            continue
        after = next(counted)
        allowed = hit.limit.requests_per_unit
        hit_over = after > allowed
        over = over or (hit_over and not hit.shadow_mode)
        remaining = max(0, allowed - after)
        decisions.append(DescriptorDecision(hit_over, hit.limit, remaining, hit.reset_after))
    return over, decisions


class RedisCounter:
    """Counts hits in Redis (``redis://host:port/db``); errors propagate to the caller."""

    def __init__(self, url: str, timeout: float = 1.0) -> None:
        self.url = url
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    async def count(self, hits: Sequence[Hit]) -> list[int]:
        """Increment every hit's counter in one transaction; the counts after increment."""
        if not hits:
            return []
        async with self.client.pipeline(transaction=True) as pipe:
            for hit in hits:
                pipe.incrby(hit.key, hit.hits)
                pipe.expire(hit.key, hit.limit.window_seconds)
            results = await pipe.execute()
        return [int(n) for n in results[0::2]]

    async def close(self) -> None:
        await self.client.aclose()
