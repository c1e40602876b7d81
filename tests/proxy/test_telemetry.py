"""Istio's label set on the core's request and connection statistics (sans-IO, KV-RPC).

Outbound listeners report as the source (this proxy's workload, the endpoint's labels as the
destination); inbound listeners as the destination (this proxy), the source from the client's
verified principal. Local replies carry Envoy's response flag; sizes are whole frames."""

from __future__ import annotations

import json

from metamesh.proxy.config import (
    Cluster,
    Endpoint,
    Listener,
    Route,
    RouteAction,
    RouteConfiguration,
    Snapshot,
)
from metamesh.proxy.listener import Downstream
from metamesh.proxy.stats import SIZE_BUCKETS, size_bucket
from metamesh.proxy.telemetry import (
    BASE_LABELS,
    ISTIO_LABELS,
    UNKNOWN,
    Workload,
    full_labels,
    local_workload,
    principal_workload,
    service_names,
)
from tests.proxy.harness import Harness, call, reply

SVC = "outbound|9000|v1|kv.shop.svc.cluster.local"
V1 = Endpoint("127.0.0.1", 1001, labels=(("app", "kv"), ("version", "v1")))
V1_NAMED = Endpoint(
    "127.0.0.1",
    1002,
    labels=(
        ("app", "kv"),
        ("metamesh.io/workload", "kv-canary"),
        ("metamesh.io/namespace", "shop"),
    ),
)


def mesh(
    listener_name: str = "l", stat_prefix: str = "kv", endpoints: tuple[Endpoint, ...] = (V1,)
) -> Harness:
    route = Route("all", (), RouteAction(cluster=SVC))
    listener = Listener(listener_name, "127.0.0.1", 0, "kvrpc", "rc", stat_prefix=stat_prefix)
    snap = Snapshot.build(
        [listener], [Cluster(SVC, endpoints)], [RouteConfiguration("rc", (route,))]
    )
    h = Harness(snap)
    h.core.stats.local = local_workload(
        "web-1", "shop", [("app", "web"), ("version", "v3")], "web-sa"
    )
    return h


def roundtrip(h: Harness, d: Downstream, rid: int) -> None:
    """One request from ``d`` answered by the (first) upstream."""
    h.send(d, call(rid, method="get"))
    up = h.connects[0]
    h.connect(up)
    for _, _, uid, _, _ in h.take(up):
        h.respond(up, reply(uid))


def labels_of(h: Harness) -> list[dict[str, str]]:
    """The label sets that counted a request."""
    return [
        dict(zip(BASE_LABELS, k, strict=True))
        for k, rs in h.core.stats.requests.items()
        if sum(rs.count) or rs.flagged
    ]


def test_outbound_labels_come_from_this_proxy_and_the_endpoint() -> None:
    h = mesh()
    d = h.core.downstream_connected("l", "peer")
    request = call(1, b"abc", method="get")
    h.send(d, request)
    [up] = h.connects
    h.connect(up)
    sent = bytes(h.sent[up])
    [(_, _, uid, headers, _)] = h.take(up)
    # the metadata exchange: this proxy's workload rides on the connection's first request
    assert json.loads(headers["x-metamesh-peer"]) == {
        "w": "web-v3",
        "ns": "shop",
        "app": "web",
        "v": "v3",
    }
    answer = reply(uid, b"x" * 2000)
    h.respond(up, answer)
    [labels] = labels_of(h)
    assert labels == {
        "reporter": "source",
        "source_workload": "web-v3",
        "source_workload_namespace": "shop",
        "source_principal": "spiffe://cluster.local/ns/shop/sa/web-sa",
        "source_app": "web",
        "source_version": "v3",
        "source_cluster": UNKNOWN,
        "source_canonical_service": "web",
        "source_canonical_revision": "v3",
        "destination_workload": "kv-v1",
        "destination_workload_namespace": UNKNOWN,
        "destination_principal": UNKNOWN,
        "destination_app": "kv",
        "destination_version": "v1",
        "destination_service": "kv.shop.svc.cluster.local",
        "destination_service_name": "kv",
        "destination_service_namespace": "shop",
        "destination_cluster": UNKNOWN,
        "destination_canonical_service": "kv",
        "destination_canonical_revision": "v1",
        "request_protocol": "kvrpc",
        "connection_security_policy": UNKNOWN,
    }
    [rs] = [rs for rs in h.core.stats.requests.values() if sum(rs.count)]
    assert rs.count == [1, 0]
    assert rs.request_bytes[0] == len(sent)  # as sent upstream
    assert rs.request_buckets[0][size_bucket(len(sent))] == 1
    assert rs.response_bytes[0] == len(answer) and rs.response_buckets[0][4] == 1  # <= 10 kB
    assert d.bytes_in == len(request) and d.bytes_out == len(answer)
    tcp = d.tcp
    assert (tcp.closed, tcp.received, tcp.sent) == (0, 0, 0)  # open: counted at scrape time
    h.core.downstream_closed(d, h.now)
    assert (tcp.closed, tcp.received, tcp.sent) == (1, len(request), len(answer))


def test_named_workload_and_namespace_labels_win() -> None:
    h = mesh(endpoints=(V1_NAMED,))
    roundtrip(h, h.core.downstream_connected("l", "peer"), 1)
    [labels] = labels_of(h)
    assert labels["destination_workload"] == "kv-canary"
    assert labels["destination_workload_namespace"] == "shop"
    assert labels["destination_version"] == "v1"  # no version label: the subset's name


def test_inbound_reports_as_destination_with_the_client_principal() -> None:
    h = mesh("inbound_127.0.20.1_9000", "inbound|9000||kv.shop.svc.cluster.local")
    tls = h.core.downstream_connected(
        "inbound_127.0.20.1_9000", "p", 0.0, "cluster.local/ns/front/sa/ui"
    )
    plain = h.core.downstream_connected("inbound_127.0.20.1_9000", "p")
    roundtrip(h, tls, 1)
    roundtrip(h, plain, 2)
    by_policy = {x["connection_security_policy"]: x for x in labels_of(h)}
    assert set(by_policy) == {"mutual_tls", "none"}
    mtls = by_policy["mutual_tls"]
    assert mtls["reporter"] == "destination"
    assert mtls["source_principal"] == "spiffe://cluster.local/ns/front/sa/ui"
    assert mtls["source_workload_namespace"] == "front"
    assert mtls["source_workload"] == UNKNOWN
    assert mtls["destination_workload"] == "web-v3"  # this proxy
    assert mtls["destination_principal"] == "spiffe://cluster.local/ns/shop/sa/web-sa"
    assert by_policy["none"]["source_principal"] == UNKNOWN


def test_local_replies_carry_envoy_response_flags() -> None:
    h = mesh(endpoints=())
    d = h.core.downstream_connected("l", "peer")
    h.send(d, call(1, method="get"))  # no endpoint: UH
    [rs] = [rs for rs in h.core.stats.requests.values() if rs.flagged]
    assert rs.count == [0, 0]
    assert {f: c.count for f, c in rs.flagged.items()} == {"UH": [0, 1]}
    assert h.core.stats.totals(destination_service="kv.shop.svc.cluster.local") == [0, 1]


def test_series_labels_are_istios_in_order() -> None:
    base = tuple(f"v{i}" for i in range(len(BASE_LABELS)))
    values = dict(zip(ISTIO_LABELS, full_labels(base, "0", "-"), strict=True))
    assert values["response_code"] == "0" and values["response_flags"] == "-"
    assert values["grpc_response_status"] == ""
    assert all(values[n] == v for n, v in zip(BASE_LABELS, base, strict=True))


def test_identity_helpers() -> None:
    assert local_workload("node-7", None, [], None) == Workload(name="node-7")
    assert local_workload("n", "ns", [("app", "a")], "sa").name == "a"
    assert principal_workload("spiffe://td/ns/x/sa/y") == Workload(
        namespace="x", principal="spiffe://td/ns/x/sa/y"
    )
    assert principal_workload("") == Workload()
    assert service_names("hello.thrift.example", "demo") == (
        "hello.thrift.example",
        "hello.thrift.example",
        "demo",
    )
    assert size_bucket(0) == 0 and size_bucket(10) == 1 and size_bucket(11) == 2
    assert size_bucket(10**10) == len(SIZE_BUCKETS)
