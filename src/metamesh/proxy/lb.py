"""Load balancers: pick an endpoint of a cluster for one request.

Each policy is a small class with ``pick(hash_key) -> index | None`` over the cluster's endpoint
tuple; ``None`` means no endpoint can take the request (empty cluster or all unhealthy).
Policies follow Envoy's names:

* ``ROUND_ROBIN``: weighted, by cycling a schedule in which an endpoint of weight w appears w
  times (weights are reduced by their gcd, so equal weights give a plain cycle).
* ``RANDOM``: weighted random.
* ``LEAST_REQUEST``: power of two choices on the live active-request counts the upstream layer
  keeps in :attr:`active` (Envoy's default choice_count=2).
* ``RING_HASH``: a ketama-style ring of 100 points per unit of weight, keyed by a stable 64-bit
  hash (BLAKE2b, never Python's salted ``hash()``), so a given hash key maps to the same endpoint
  in every process and across restarts; removing an endpoint only moves that endpoint's keys.

Randomness comes from an injected ``random.Random``; requests without a hash key on a ring-hash
cluster get a random point on the ring.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from functools import reduce
from itertools import accumulate
from typing import Final

from mypy_extensions import mypyc_attr

from metamesh.proxy.config import Endpoint, LbPolicy

RING_POINTS_PER_WEIGHT: Final = 100


def stable_hash(data: bytes) -> int:
    """A 64-bit hash that is the same in every process."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def hash_metadata(values: Iterable[str]) -> int:
    """The request hash for a route's ``hash_policy`` values (in policy order)."""
    return stable_hash("\x00".join(values).encode())


@mypyc_attr(allow_interpreted_subclasses=True)
class LoadBalancer:
    """Base class: ``healthy[i]`` gates endpoint ``i``; ``active[i]`` counts its requests."""

    __slots__ = ("active", "endpoints", "healthy", "rng")

    def __init__(self, endpoints: Sequence[Endpoint], rng: random.Random) -> None:
        self.endpoints = tuple(endpoints)
        self.rng = rng
        self.active = [0] * len(self.endpoints)
        self.healthy = [True] * len(self.endpoints)

    def pick(self, hash_key: int | None = None) -> int | None:
        raise NotImplementedError

    def _first_healthy_from(self, start: int) -> int | None:
        n = len(self.endpoints)
        for k in range(n):
            i = (start + k) % n
            if self.healthy[i]:
                return i
        return None


class RoundRobin(LoadBalancer):
    __slots__ = ("_next", "_schedule")

    def __init__(self, endpoints: Sequence[Endpoint], rng: random.Random) -> None:
        super().__init__(endpoints, rng)
        weights = [e.weight for e in self.endpoints]
        g = reduce(math.gcd, weights, 0) or 1
        # Interleave (1, 2, 1, 2, 2) rather than (1, 2, 2, 2): sort slots by their fraction.
        slots = sorted(
            ((k + 0.5) / (w // g), i) for i, w in enumerate(weights) for k in range(w // g)
        )
        self._schedule = [i for _, i in slots] or [0]
        self._next = rng.randrange(len(self._schedule)) if self.endpoints else 0

    def pick(self, hash_key: int | None = None) -> int | None:
        if not self.endpoints:
            return None
        schedule = self._schedule
        i = schedule[self._next % len(schedule)]
        self._next += 1
        return i if self.healthy[i] else self._first_healthy_from(i)


class Random(LoadBalancer):
    __slots__ = ("_cumulative",)

    def __init__(self, endpoints: Sequence[Endpoint], rng: random.Random) -> None:
        super().__init__(endpoints, rng)
        self._cumulative = list(accumulate(e.weight for e in self.endpoints))

    def pick(self, hash_key: int | None = None) -> int | None:
        if not self.endpoints:
            return None
        i = bisect.bisect_right(self._cumulative, self.rng.random() * self._cumulative[-1])
        return i if self.healthy[i] else self._first_healthy_from(i)


class LeastRequest(LoadBalancer):
    __slots__ = ()

    def pick(self, hash_key: int | None = None) -> int | None:
        n = len(self.endpoints)
        if n == 0:
            return None
        if n == 1:
            return 0 if self.healthy[0] else None
        rand = self.rng.randrange
        a, b = rand(n), rand(n)
        active, healthy = self.active, self.healthy
        if not healthy[a]:
            a = b
        if not healthy[b]:
            b = a
        if not healthy[a]:
            return self._first_healthy_from(a)
        # Weighted: compare active/weight (Envoy divides by weight when weights differ).
        wa, wb = self.endpoints[a].weight, self.endpoints[b].weight
        return a if active[a] * wb <= active[b] * wa else b


class RingHash(LoadBalancer):
    __slots__ = ("_owners", "_points")

    def __init__(self, endpoints: Sequence[Endpoint], rng: random.Random) -> None:
        super().__init__(endpoints, rng)
        ring = sorted(
            (stable_hash(f"{e.address}:{e.port}_{k}".encode()), i)
            for i, e in enumerate(self.endpoints)
            for k in range(RING_POINTS_PER_WEIGHT * e.weight)
        )
        self._points = [p for p, _ in ring]
        self._owners = [i for _, i in ring]

    def pick(self, hash_key: int | None = None) -> int | None:
        if not self._points:
            return None
        if hash_key is None:
            hash_key = self.rng.getrandbits(64)
        pos = bisect.bisect_left(self._points, hash_key)
        n = len(self._points)
        for k in range(n):
            i = self._owners[(pos + k) % n]
            if self.healthy[i]:
                return i
        return None


_POLICIES: Final[dict[LbPolicy, type[LoadBalancer]]] = {
    LbPolicy.ROUND_ROBIN: RoundRobin,
    LbPolicy.RANDOM: Random,
    LbPolicy.LEAST_REQUEST: LeastRequest,
    LbPolicy.RING_HASH: RingHash,
}


def create_load_balancer(
    policy: LbPolicy, endpoints: Sequence[Endpoint], rng: random.Random
) -> LoadBalancer:
    """The load balancer for ``policy`` over ``endpoints``."""
    return _POLICIES[policy](endpoints, rng)
