"""Load balancers: distribution, weights, health, least-request and ring-hash stickiness."""

from __future__ import annotations

import random
from collections import Counter

from metamesh.proxy.config import Endpoint, LbPolicy
from metamesh.proxy.lb import (
    LeastRequest,
    RingHash,
    RoundRobin,
    create_load_balancer,
    hash_metadata,
    stable_hash,
)


def eps(*weights: int) -> list[Endpoint]:
    return [Endpoint("127.0.0.1", 1000 + i, weight=w) for i, w in enumerate(weights)]


def test_round_robin_cycles_and_respects_weights() -> None:
    lb = RoundRobin(eps(1, 1, 1), random.Random(0))
    first = [lb.pick() for _ in range(6)]
    assert sorted(first[:3]) == [0, 1, 2] and first[:3] == first[3:]
    weighted = RoundRobin(eps(1, 3), random.Random(0))
    assert Counter(weighted.pick() for _ in range(400)) == {0: 100, 1: 300}


def test_unhealthy_endpoints_skipped() -> None:
    for policy in LbPolicy:
        lb = create_load_balancer(policy, eps(1, 1, 1), random.Random(5))
        lb.healthy[1] = False
        picks = {lb.pick(hash_key=k) for k in range(300)}
        assert picks <= {0, 2} and picks, policy
        lb.healthy = [False, False, False]
        assert lb.pick(hash_key=1) is None, policy


def test_empty_cluster_picks_nothing() -> None:
    for policy in LbPolicy:
        assert create_load_balancer(policy, [], random.Random(0)).pick(hash_key=3) is None


def test_random_weighted_within_tolerance() -> None:
    lb = create_load_balancer(LbPolicy.RANDOM, eps(1, 4), random.Random(11))
    counts = Counter(lb.pick() for _ in range(10_000))
    assert 1_800 < counts[0] < 2_200


def test_least_request_prefers_idle_endpoint() -> None:
    lb = LeastRequest(eps(1, 1, 1), random.Random(2))
    lb.active[:] = [50, 0, 50]
    counts = Counter(lb.pick() for _ in range(3000))
    # Endpoint 1 wins whenever it is one of the two choices: 1 - (2/3)^2 = 5/9 of picks.
    assert 1_500 < counts[1] < 1_850
    assert counts[1] > counts[0] and counts[1] > counts[2]


def test_ring_hash_same_key_same_endpoint_and_stable_across_instances() -> None:
    a = RingHash(eps(1, 1, 1, 1), random.Random(1))
    b = RingHash(eps(1, 1, 1, 1), random.Random(99))
    keys = [hash_metadata([f"user-{i}"]) for i in range(500)]
    picks = [a.pick(k) for k in keys]
    assert picks == [a.pick(k) for k in keys] == [b.pick(k) for k in keys]
    assert set(picks) == {0, 1, 2, 3}  # keys spread over the ring


def test_ring_hash_removing_endpoint_moves_only_its_keys() -> None:
    endpoints = eps(1, 1, 1, 1)
    full = RingHash(endpoints, random.Random(0))
    fewer = RingHash(endpoints[:3], random.Random(0))
    keys = [hash_metadata([str(i)]) for i in range(1000)]
    moved = [k for k in keys if full.pick(k) != 3 and full.pick(k) != fewer.pick(k)]
    assert moved == []


def test_stable_hash_is_process_independent() -> None:
    # A fixed value: BLAKE2b-64 of b"abc", not Python's per-process salted hash().
    assert stable_hash(b"abc") == 0xD8BB14D833D59559
