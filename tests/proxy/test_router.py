"""Route matching: matcher kinds, AND/invert, first match wins, catch-all skips metadata."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from metamesh.codecs import Message, MessageType
from metamesh.proxy.config import (
    MatchKind,
    MetadataMatcher,
    RequestMirrorPolicy,
    Route,
    RouteAction,
    RouteConfiguration,
    WeightedCluster,
)
from metamesh.proxy.router import RouteTable


def msg(**metadata: str) -> Message:
    return Message(MessageType.REQUEST, 1, b"", 0, 0, metadata=dict(metadata))


def route(name: str, *matchers: MetadataMatcher, cluster: str = "c") -> Route:
    return Route(name, tuple(matchers), RouteAction(cluster=cluster))


def table(*routes: Route) -> RouteTable:
    return RouteTable(RouteConfiguration("rc", routes))


@pytest.mark.parametrize(
    ("kind", "value", "actual", "expected"),
    [
        (MatchKind.EXACT, "get", "get", True),
        (MatchKind.EXACT, "get", "getx", False),
        (MatchKind.PREFIX, "beta-", "beta-7", True),
        (MatchKind.PREFIX, "beta-", "alpha", False),
        (MatchKind.SAFE_REGEX, "get|put", "put", True),
        (MatchKind.SAFE_REGEX, "get|put", "output", False),  # full match, not search
        (MatchKind.PRESENT, "", "", True),
    ],
)
def test_matcher_kinds(kind: MatchKind, value: str, actual: str, expected: bool) -> None:
    t = table(route("r", MetadataMatcher("k", kind, value)))
    assert (t.match(msg(k=actual)) is not None) is expected
    assert t.match(msg(other="x")) is None  # absent key never matches
    inverted = table(route("r", MetadataMatcher("k", kind, value, invert=True)))
    assert (inverted.match(msg(k=actual)) is not None) is (not expected)
    assert inverted.match(msg(other="x")) is not None


def test_all_matchers_anded_and_first_match_wins() -> None:
    t = table(
        route(
            "both",
            MetadataMatcher("method", MatchKind.EXACT, "get"),
            MetadataMatcher("user", MatchKind.PREFIX, "beta-"),
        ),
        route("method-only", MetadataMatcher("method", MatchKind.EXACT, "get")),
        route("fallback"),
    )
    assert t.match(msg(method="get", user="beta-1")).name == "both"  # type: ignore[union-attr]
    assert t.match(msg(method="get", user="x")).name == "method-only"  # type: ignore[union-attr]
    assert t.match(msg(method="put")).name == "fallback"  # type: ignore[union-attr]


def test_no_route_and_empty_table() -> None:
    assert table(route("r", MetadataMatcher("m", MatchKind.EXACT, "x"))).match(msg()) is None
    assert table().match(msg()) is None


def test_catch_all_never_loads_metadata() -> None:
    def loader(m: Message) -> dict[str, str]:
        raise AssertionError("metadata was loaded")

    lazy = Message(MessageType.REQUEST, 1, b"", 0, 0, loader=loader)
    assert table(route("all")).match(lazy) is not None


def test_weighted_split_within_tolerance() -> None:
    action = RouteAction(weighted_clusters=(WeightedCluster("a", 80), WeightedCluster("b", 20)))
    r = table(Route("w", (), action)).routes[0]
    rng = random.Random(7)
    counts = Counter(r.pick_cluster(rng) for _ in range(10_000))
    assert 7_700 < counts["a"] < 8_300 and counts["a"] + counts["b"] == 10_000


def test_zero_weight_cluster_never_picked() -> None:
    action = RouteAction(weighted_clusters=(WeightedCluster("a", 0), WeightedCluster("b", 5)))
    r = table(Route("w", (), action)).routes[0]
    rng = random.Random(1)
    assert {r.pick_cluster(rng) for _ in range(1000)} == {"b"}


def test_mirror_fraction() -> None:
    action = RouteAction(
        cluster="c",
        request_mirror_policies=(RequestMirrorPolicy("m", 25.0), RequestMirrorPolicy("all")),
    )
    r = table(Route("m", (), action)).routes[0]
    rng = random.Random(3)
    picks = Counter(c for _ in range(4000) for c in r.mirror_clusters(rng))
    assert picks["all"] == 4000
    assert 850 < picks["m"] < 1150


PATHOLOGICAL = ["(a+)+$", "(a|aa)+$", "(a*)*b", "(x+x+)+y"]


@pytest.mark.parametrize("pattern", PATHOLOGICAL)
def test_pathological_regexes_match_in_linear_time(pattern: str) -> None:
    """With Python's re, ``(a+)+$`` against 28 a's and a '!' took 6 s, doubling per character;
    RE2 answers 100,000 characters of it at once (the bound is generous: linear time is what
    is shown, not a speed)."""
    import time

    t = table(route("evil", MetadataMatcher("method", MatchKind.SAFE_REGEX, pattern)))
    for n in (28, 1_000, 100_000):
        start = time.perf_counter()
        assert t.match(msg(method="a" * n + "!")) is None
        assert time.perf_counter() - start < 0.5, (pattern, n)


@pytest.mark.parametrize("pattern", ["a(?=b)", "(a)\\1", "a" * 1025])
def test_a_pattern_re2_refuses_fails_the_table(pattern: str) -> None:
    from metamesh.api.regex import RegexError

    with pytest.raises(RegexError):
        table(route("bad", MetadataMatcher("method", MatchKind.SAFE_REGEX, pattern)))
