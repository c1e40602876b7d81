"""A request no route matches: the error the client receives names what it called (Dubbo's
interface and method, a multiplexed Thrift service's or else the listener's service, and the
method), and Istio's statistics count it against the listener's service, not ``unknown``; on
the plain request path and on the path of listeners with filters."""

from __future__ import annotations

import struct

import pytest
from thrift.Thrift import TApplicationException, TMessageType

from metamesh.codecs import ErrorKind
from metamesh.codecs.hessian2 import loads
from metamesh.proxy.config import (
    LocalRateLimitConfig,
    MatchKind,
    MetadataMatcher,
    Route,
    RouteAction,
    TokenBucket,
)
from metamesh.proxy.filters import LOCAL_RATELIMIT
from tests.codecs.dubbo import frames as dubbo
from tests.codecs.thrift import wire
from tests.proxy.filters.support import ROUTER
from tests.proxy.harness import Harness, call, cluster, parse_frames, snapshot

THRIFT_SVC = "outbound|9090||hello.test"
DUBBO_SVC = "outbound|20880||org.x.foo"
FILTERS = (LOCAL_RATELIMIT, ROUTER)
FILTER_CONFIGS = ((LOCAL_RATELIMIT, LocalRateLimitConfig(TokenBucket(100, 100, 1.0))),)


def only(method: str, target: str) -> Route:
    match = (MetadataMatcher("method", MatchKind.EXACT, method),)
    return Route(f"to-{method}", match, RouteAction(cluster=target))


def harness(codec: str, service: str, filtered: bool) -> Harness:
    """One route (method ``routed``); with ``filtered``, a local rate limit before the router,
    so requests take the filter chain's path."""
    filters, configs = (FILTERS, FILTER_CONFIGS) if filtered else ((ROUTER,), ())
    routes, clusters = [only("routed", service)], [cluster(service, 1)]
    return Harness(snapshot(routes, clusters, codec, None, filters, configs, stat_prefix=service))


def unrouted_count(h: Harness, service: str, protocol: str) -> list[int]:
    assert h.core.stats.local_replies[ErrorKind.ROUTE_NOT_FOUND] >= 1
    stats = h.core.stats
    assert stats.totals(destination_service="unknown") == [0, 0]
    return stats.totals(destination_service=service, request_protocol=protocol)


@pytest.mark.parametrize("filtered", [False, True], ids=["plain", "with-filters"])
def test_dubbo_names_interface_and_method(filtered: bool) -> None:
    h = harness("dubbo", DUBBO_SVC, filtered)
    d = h.client()
    h.send(d, dubbo.request(7, interface="org.x.Foo", method="bar"))
    data = bytes(h.sent.pop(d))
    _, _, status, rid, size = struct.unpack_from(">HBBQI", data)
    assert (status, rid) == (60, 7)  # SERVICE_NOT_FOUND
    assert loads(data[16 : 16 + size]) == "no route for org.x.Foo.bar"
    assert unrouted_count(h, "org.x.foo", "dubbo") == [0, 1]
    assert h.connects == []


def _thrift_error(data: bytes) -> tuple[str, int, TApplicationException]:
    """Apache's reading of a framed binary exception reply: (name, seqid, exception)."""
    name, mtype, seqid, p = wire.read_message("binary", wire.unwrap("framed", data))
    assert mtype == TMessageType.EXCEPTION
    error = TApplicationException()
    error.read(p)
    return name, seqid, error


@pytest.mark.parametrize("filtered", [False, True], ids=["plain", "with-filters"])
@pytest.mark.parametrize(
    ("wire_name", "text"),
    [
        ("sayHello", "no route for hello.test.sayHello"),  # the listener's service
        ("Greeter:sayHello", "no route for Greeter.sayHello"),  # multiplexed: its own
    ],
)
def test_thrift_names_service_and_method(wire_name: str, text: str, filtered: bool) -> None:
    h = harness("thrift", THRIFT_SVC, filtered)
    d = h.client()
    h.send(d, wire.frame("framed", "binary", wire_name, seqid=9))
    name, seqid, error = _thrift_error(bytes(h.sent.pop(d)))
    assert (name, seqid) == ("sayHello", 9)
    assert error.type == TApplicationException.UNKNOWN_METHOD
    assert error.message == text
    assert unrouted_count(h, "hello.test", "thrift") == [0, 1]


def test_a_listener_without_a_service_names_the_method_and_counts_unknown() -> None:
    h = Harness(snapshot([only("routed", "c")], [cluster("c", 1)]))  # stat_prefix ""
    d = h.client()
    h.send(d, call(3, method="zzz"))
    assert parse_frames(bytes(h.sent.pop(d)))[0][4] == b"no route for zzz"
    assert h.core.stats.totals(destination_service="unknown", request_protocol="kvrpc") == [0, 1]


def test_a_static_stat_prefix_is_the_service() -> None:
    h = Harness(snapshot([only("routed", "c")], [cluster("c", 1)], stat_prefix="kv"))
    d = h.client()
    h.send(d, call(3, method="zzz", service="Store"))
    assert parse_frames(bytes(h.sent.pop(d)))[0][4] == b"no route for Store.zzz"
    assert h.core.stats.totals(destination_service="kv", request_protocol="kvrpc") == [0, 1]
