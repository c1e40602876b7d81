"""Metadata exchange between metamesh proxies (sans-IO): the outbound proxy's workload rides on
the first request of each upstream connection; an inbound listener labels the connection's
source with it. KV-RPC headers and Thrift THeader carry it; framed Thrift cannot."""

from __future__ import annotations

import json

import pytest

from metamesh.proxy import exchange
from metamesh.proxy.config import (
    Cluster,
    Endpoint,
    Listener,
    Route,
    RouteAction,
    RouteConfiguration,
    Snapshot,
)
from metamesh.proxy.telemetry import UNKNOWN, Workload, local_workload
from tests.codecs.thrift import wire
from tests.proxy.harness import Harness, call, parse_frames

INBOUND = "inbound|9000||kv.shop.svc.cluster.local"
OUTBOUND = "outbound|9000||kv.shop.svc.cluster.local"
WEB = json.dumps({"w": "web-v3", "ns": "shop", "app": "web", "v": "v3", "c": "east"})


def proxy(inbound: bool, codec: str = "kvrpc") -> Harness:
    name = INBOUND if inbound else OUTBOUND
    listener = Listener("l", "127.0.0.1", 0, codec, "rc", stat_prefix=name)
    route = Route("all", (), RouteAction(cluster=name))
    snap = Snapshot.build(
        [listener],
        [Cluster(name, (Endpoint("127.0.0.1", 1),))],
        [RouteConfiguration("rc", (route,))],
    )
    h = Harness(snap)
    h.core.stats.local = local_workload("kv-1", "shop", [("app", "kv"), ("version", "v1")], "kv")
    return h


def test_inbound_labels_the_source_with_what_the_peer_told() -> None:
    h = proxy(inbound=True)
    d = h.core.downstream_connected("l", "p", 0.0, "cluster.local/ns/front/sa/web")
    h.send(d, call(1, method="get", **{exchange.HEADER: WEB}))
    source = d.origin.source
    assert source == Workload(
        name="web-v3",
        namespace="front",  # the verified namespace wins over the told one
        principal="spiffe://cluster.local/ns/front/sa/web",
        app="web",
        version="v3",
        cluster="east",
    )
    assert d.origin.security == "mutual_tls" and d.origin.reporter == "destination"
    # only the first request is looked at
    h.send(d, call(2, method="get", **{exchange.HEADER: json.dumps({"w": "other"})}))
    assert d.origin.source.name == "web-v3"
    # the local app sees the client's frames as they came: this proxy tells it nothing
    up = h.connects[0]
    h.connect(up)
    first, second = h.take(up)
    assert first[3][exchange.HEADER] == WEB
    assert second[3][exchange.HEADER] != WEB
    assert up.tell is False


@pytest.mark.parametrize(
    "value",
    ["", "not json", "[1]", json.dumps({"w": "x" * 300}), json.dumps({"w": 5}), "{" * 3000],
)
def test_bad_or_empty_headers_leave_the_source_unknown(value: str) -> None:
    h = proxy(inbound=True)
    d = h.core.downstream_connected("l", "p")
    h.send(d, call(1, method="get", **{exchange.HEADER: value}))
    assert d.origin.source == Workload()
    assert not d.hear


def test_a_told_principal_is_never_taken() -> None:
    told = exchange.decode(json.dumps({"w": "a", "principal": "spiffe://x/ns/y/sa/z"}))
    assert told == Workload(name="a")
    assert exchange.source_of(Workload(), told).principal == UNKNOWN


def test_origins_are_capped() -> None:
    h = proxy(inbound=True)
    for i in range(exchange.MAX_ORIGINS + 5):
        d = h.core.downstream_connected("l", "p")
        h.send(d, call(1, method="get", **{exchange.HEADER: json.dumps({"w": f"w{i}"})}))
    assert len(h.core.stats.origins) == exchange.MAX_ORIGINS
    last = h.core.downstream_connected("l", "p")
    assert not last.hear


def test_outbound_tells_once_per_upstream_connection() -> None:
    h = proxy(inbound=False)
    d = h.core.downstream_connected("l", "p")
    h.send(d, call(1, method="get") + call(2, method="get"))
    up = h.connects[0]
    h.connect(up)
    first, second = parse_frames(bytes(h.sent.pop(up)))
    assert exchange.decode(first[3][exchange.HEADER]) == Workload(
        name="kv-v1", namespace="shop", app="kv", version="v1"
    )
    assert exchange.HEADER not in second[3]


@pytest.mark.parametrize(("transport", "carried"), [("header", True), ("framed", False)])
def test_thrift_carries_it_in_theader_only(transport: str, carried: bool) -> None:
    h = proxy(inbound=False, codec="thrift")
    d = h.core.downstream_connected("l", "p")
    h.send(d, wire.frame(transport, "binary", "echo", seqid=3))
    up = h.connects[0]
    h.connect(up)
    sent = bytes(h.sent.pop(up))
    assert (exchange.HEADER.encode() in sent) is carried
    assert up.codec.dropped_mutations == 0 and d.codec.dropped_mutations == 0
