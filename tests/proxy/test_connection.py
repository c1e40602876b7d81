"""The connection manager over in-memory peers: the request lifecycle, byte for byte."""

from __future__ import annotations

from metamesh.codecs import ErrorKind
from metamesh.proxy.config import (
    CircuitBreakers,
    MatchKind,
    MetadataMatcher,
    RequestMirrorPolicy,
    Route,
    RouteAction,
)
from metamesh.proxy.upstream import UpstreamState
from tests.proxy.harness import Harness, call, cluster, parse_frames, reply, snapshot

V1, V2, MIRROR = "outbound|9|v1|svc.test", "outbound|9|v2|svc.test", "outbound|9||mirror.test"


def by_method(method: str, target: str, **kw: object) -> Route:
    return Route(
        f"to-{method}",
        (MetadataMatcher("method", MatchKind.EXACT, method),),
        RouteAction(cluster=target),
        **kw,  # type: ignore[arg-type]
    )


def two_versions(**kw: object) -> Harness:
    routes = [by_method("get", V1), by_method("put", V2)]
    return Harness(snapshot(routes, [cluster(V1, 1001), cluster(V2, 1002)]), **kw)  # type: ignore[arg-type]


def test_multiplexes_downstreams_onto_one_upstream_and_restores_ids() -> None:
    h = two_versions()
    clients = [h.client() for _ in range(3)]
    for i, d in enumerate(clients):
        h.send(d, call(7, f"hello {i}".encode(), method="get"))  # every client uses id 7
    assert len(h.connects) == 1
    up = h.connects[0]
    assert up.state is UpstreamState.CONNECTING and h.take(up) == []  # held until connected
    h.connect(up)
    frames = h.take(up)
    assert [f[4] for f in frames] == [b"hello 0", b"hello 1", b"hello 2"]
    upstream_ids = [f[2] for f in frames]
    assert len(set(upstream_ids)) == 3
    # Answer in reverse order, all in one read.
    answers = [reply(rid, b"re:" + f[4]) for rid, f in zip(upstream_ids, frames, strict=True)]
    h.respond(up, b"".join(reversed(answers)))
    for i, d in enumerate(clients):
        assert h.take(d) == [(2, 0, 7, {}, f"re:hello {i}".encode())]
    assert h.core.stats.active_requests == 0
    # A new request from another client reuses the same upstream connection.
    d4 = h.client()
    h.send(d4, call(1, method="get"))
    assert len(h.connects) == 1 and len(h.take(up)) == 1


def test_a_free_client_id_goes_upstream_unchanged_and_a_taken_one_is_rewritten() -> None:
    h = two_versions()
    a, b = h.client(), h.client()
    h.send(a, call(40, b"a", method="get"))
    up = h.connects[0]
    h.connect(up)
    h.send(b, call(41, b"b", method="get") + call(40, b"b2", method="get"))
    frames = h.take(up)
    ids = [f[2] for f in frames]
    assert ids[:2] == [40, 41] and ids[2] not in (40, 41)  # 40 is in flight for client a
    h.respond(up, b"".join(reply(rid, b"re:" + f[4]) for rid, f in zip(ids, frames, strict=True)))
    assert h.take(a) == [(2, 0, 40, {}, b"re:a")]
    assert h.take(b) == [(2, 0, 41, {}, b"re:b"), (2, 0, 40, {}, b"re:b2")]
    assert h.core.stats.active_requests == 0


def test_route_not_found_replies_locally_and_connection_stays_usable() -> None:
    h = two_versions()
    d = h.client()
    h.send(d, call(5, method="delete"))
    [(wtype, status, rid, headers, _)] = h.take(d)
    assert (wtype, status, rid, headers) == (2, 1, 5, {"error": "route_not_found"})
    assert h.connects == [] and d not in h.closed
    h.send(d, call(6, method="put"))
    assert len(h.connects) == 1 and h.connects[0].cluster.config.name == V2
    assert h.core.stats.local_replies[ErrorKind.ROUTE_NOT_FOUND] == 1


def test_oneway_is_forwarded_without_waiting_for_a_reply() -> None:
    h = two_versions()
    d = h.client()
    h.send(d, call(9, b"fire", oneway=True, method="get"))
    up = h.connects[0]
    h.connect(up)
    [(wtype, _, _, _, body)] = h.take(up)
    assert (wtype, body) == (3, b"fire")
    assert up.in_flight == 0 and h.core.stats.active_requests == 0
    assert h.core.stats.oneway_requests == 1


def test_client_heartbeat_answered_upstream_heartbeat_not_forwarded() -> None:
    from examples.kvrpc.kvrpc_codec import build_frame

    h = two_versions()
    d = h.client()
    h.send(d, build_frame(4, 3, {}, b""))  # ping
    assert h.take(d) == [(5, 0, 3, {}, b"")]  # pong from the proxy
    assert h.connects == []
    h.send(d, call(1, method="get"))
    up = h.connects[0]
    h.connect(up)
    [(_, _, uid, _, _)] = h.take(up)
    h.respond(up, build_frame(4, 99, {}, b"") + reply(uid, b"ok"))  # upstream ping, then reply
    assert h.take(d) == [(2, 0, 1, {}, b"ok")]  # the ping never reaches the client
    assert h.take(up) == [(5, 0, 99, {}, b"")]  # the proxy answers it upstream
    h.respond(up, build_frame(5, 98, {}, b""))  # an upstream pong is swallowed
    assert h.take(up) == [] and h.take(d) == []


def test_mirror_gets_a_copy_with_its_own_id_and_never_delays_primary() -> None:
    route = Route(
        "m",
        (),
        RouteAction(cluster=V1, request_mirror_policies=(RequestMirrorPolicy(MIRROR, 100.0),)),
    )
    h = Harness(snapshot([route], [cluster(V1, 1001), cluster(MIRROR, 1003)]))
    d = h.client()
    h.send(d, call(4, b"payload", method="get"))
    primary, mirror = h.connects
    assert mirror.cluster.config.name == MIRROR
    h.connect(primary)
    h.connect(mirror)
    [(_, _, pid, _, pbody)] = h.take(primary)
    [(_, _, mid, _, mbody)] = h.take(mirror)
    assert pbody == mbody == b"payload"
    h.respond(primary, reply(pid, b"real"))
    assert h.take(d) == [(2, 0, 4, {}, b"real")]  # mirror has not answered yet
    h.respond(mirror, reply(mid, b"shadow"))
    assert h.take(d) == []  # mirror replies are dropped
    assert h.core.stats.mirrored_requests == 1 and h.core.stats.active_requests == 0


def test_mirror_percentage_is_sampled() -> None:
    route = Route(
        "m",
        (),
        RouteAction(cluster=V1, request_mirror_policies=(RequestMirrorPolicy(MIRROR, 10.0),)),
    )
    h = Harness(snapshot([route], [cluster(V1, 1001), cluster(MIRROR, 1003)]), seed=4)
    d = h.client()
    for i in range(1000):
        h.send(d, call(i, method="get"))
    assert 60 < h.core.stats.mirrored_requests < 140


def test_upstream_reset_fails_every_in_flight_request_with_native_errors() -> None:
    h = two_versions()
    a, b = h.client(), h.client()
    h.send(a, call(1, method="get"))
    h.send(b, call(2, method="get") + call(3, method="get"))
    up = h.connects[0]
    h.connect(up)
    [f1, _, _] = h.take(up)
    h.respond(up, reply(f1[2], b"done"))
    h.core.upstream_closed(up, h.now)
    h.flush()
    assert h.take(a) == [(2, 0, 1, {}, b"done")]
    errors = h.take(b)
    assert [(f[2], f[3]["error"]) for f in errors] == [(2, "upstream_reset"), (3, "upstream_reset")]
    assert h.core.stats.upstream_resets == 1 and h.core.stats.active_requests == 0
    # The next request opens a fresh upstream connection.
    h.send(a, call(4, method="get"))
    assert len(h.connects) == 2


def test_connect_failure_and_timeout_reply_no_healthy_upstream() -> None:
    h = two_versions()
    d = h.client()
    h.send(d, call(1, method="get"))
    h.core.upstream_connect_failed(h.connects[0], "refused", h.now)
    h.flush()
    assert h.take(d)[0][3] == {"error": "no_healthy_upstream"}
    h.send(d, call(2, method="get"))
    up = h.connects[1]
    h.core.on_timer(h.now + 100.0)  # past connect_timeout
    h.flush()
    assert h.take(d)[0][2:4] == (2, {"error": "no_healthy_upstream"})
    assert up in h.closed and h.core.stats.upstream_connect_failures == 2


def test_upstream_garbage_is_bad_response_for_affected_requests_only() -> None:
    h = two_versions()
    d = h.client()
    h.send(d, call(1, method="get") + call(2, method="put"))
    get_up, put_up = h.connects
    h.connect(get_up)
    h.connect(put_up)
    h.take(get_up)
    [(_, _, pid, _, _)] = h.take(put_up)
    h.respond(get_up, b"XXgarbage-garbage")
    h.respond(put_up, reply(pid, b"fine"))
    frames = h.take(d)
    assert (1, {"error": "bad_response"}) in [(f[2], f[3]) for f in frames]
    assert (2, b"fine") in [(f[2], f[4]) for f in frames]
    assert get_up in h.closed and d not in h.closed
    assert h.core.stats.upstream_decode_errors == 1


def test_downstream_garbage_closes_only_that_client() -> None:
    h = two_versions()
    good, bad = h.client(), h.client()
    h.send(good, call(1, method="get"))
    h.send(bad, b"GET / HTTP/1.1\r\n\r\n")
    assert bad in h.closed and good not in h.closed
    assert h.core.stats.downstream_decode_errors == 1
    assert any("bad frame" in line for line in h.logs)
    up = h.connects[0]
    h.connect(up)
    [(_, _, uid, _, _)] = h.take(up)
    h.respond(up, reply(uid, b"still fine"))
    assert h.take(good) == [(2, 0, 1, {}, b"still fine")]


def test_oversized_frame_and_truncated_eof_close_the_client() -> None:
    h = Harness(
        snapshot([Route("all", (), RouteAction(cluster=V1))], [cluster(V1, 1)], max_frame=64)
    )
    d = h.client()
    h.send(d, call(1, b"x" * 200))
    assert d in h.closed
    d2 = h.client()
    h.send(d2, call(2, b"abc")[:10])
    h.core.downstream_closed(d2, h.now)
    assert h.core.stats.downstream_truncated == 1
    assert h.core.stats.active_downstream_connections == 0


def test_max_requests_circuit_breaker_replies_over_limit() -> None:
    c = cluster(V1, 1001, circuit_breakers=CircuitBreakers(max_requests=1))
    h = Harness(snapshot([Route("all", (), RouteAction(cluster=V1))], [c]))
    d = h.client()
    h.send(d, call(1) + call(2))
    assert h.take(d) == [(2, 1, 2, {"error": "over_limit"}, b"max_requests reached")]
    assert h.core.stats.local_replies[ErrorKind.OVER_LIMIT] == 1


def test_request_and_response_mutations() -> None:
    route = by_method(
        "get", V1, request_mutation=(("x-env", "prod"),), response_mutation=(("x-by", "mesh"),)
    )
    h = Harness(snapshot([route], [cluster(V1, 1001)]))
    d = h.client()
    h.send(d, call(11, b"body", method="get"))
    up = h.connects[0]
    h.connect(up)
    [(_, _, uid, headers, body)] = h.take(up)
    assert headers == {"method": "get", "x-env": "prod"} and body == b"body"
    h.respond(up, reply(uid, b"r", server="s1"))
    assert h.take(d) == [(2, 0, 11, {"server": "s1", "x-by": "mesh"}, b"r")]


def test_pipelined_protocol_keeps_request_order_across_clusters() -> None:
    routes = [by_method("get", V1), by_method("put", V2)]
    h = Harness(snapshot(routes, [cluster(V1, 1001), cluster(V2, 1002)], codec="kvrpc-pipelined"))
    a, b = h.client(), h.client()
    h.send(a, call(0, b"a1", method="get") + call(0, b"a2", method="put"))
    h.send(b, call(0, b"b1", method="get"))
    assert len(h.connects) == 3  # dedicated connections: (a, v1), (a, v2), (b, v1)
    for up in h.connects:
        h.connect(up)
    a_v1, a_v2, b_v1 = h.connects
    assert [f[4] for f in h.take(a_v1)] == [b"a1"]
    # The put answers first; the client must still see get's reply first.
    h.respond(a_v2, reply(0, b"r-a2"))
    assert h.take(a) == []
    h.send(a, call(0, b"a3", method="nothing"))  # local reply also waits its turn
    assert h.take(a) == []
    h.respond(a_v1, reply(0, b"r-a1"))
    frames = h.take(a)
    assert [f[4] for f in frames] == [b"r-a1", b"r-a2", b"no route for nothing"]
    h.respond(b_v1, reply(0, b"r-b1"))
    assert [f[4] for f in h.take(b)] == [b"r-b1"]
    h.core.downstream_closed(a, h.now)
    h.flush()
    assert a_v1 in h.closed and a_v2 in h.closed and b_v1 not in h.closed


def test_snapshot_swap_keeps_connections_and_in_flight_routes() -> None:
    old_route = Route("old", (), RouteAction(cluster=V1), response_mutation=(("route", "old"),))
    clusters = [cluster(V1, 1001), cluster(V2, 1002)]
    h = Harness(snapshot([old_route], clusters))
    d = h.client()
    h.send(d, call(1))
    up1 = h.connects[0]
    h.connect(up1)
    [(_, _, uid, _, _)] = h.take(up1)
    new_route = Route("new", (), RouteAction(cluster=V2), response_mutation=(("route", "new"),))
    h.core.apply_snapshot(snapshot([new_route], clusters))
    h.send(d, call(2))
    up2 = h.connects[1]
    assert up2.cluster.config.name == V2
    h.connect(up2)
    [(_, _, uid2, _, _)] = h.take(up2)
    h.respond(up1, reply(uid, b"a"))
    h.respond(up2, reply(uid2, b"b"))
    got = {f[2]: f[3]["route"] for f in h.take(d)}
    assert got == {1: "old", 2: "new"}
    assert h.closed == [] and up1.state is UpstreamState.READY


def test_removed_endpoint_connection_retires_after_its_last_reply() -> None:
    h = Harness(snapshot([Route("all", (), RouteAction(cluster=V1))], [cluster(V1, 1001)]))
    d = h.client()
    h.send(d, call(1))
    up = h.connects[0]
    h.connect(up)
    [(_, _, uid, _, _)] = h.take(up)
    h.core.apply_snapshot(
        snapshot([Route("all", (), RouteAction(cluster=V1))], [cluster(V1, 2002)])
    )
    assert up not in h.closed
    h.respond(up, reply(uid))
    assert up in h.closed and h.take(d)[0][2] == 1


def test_max_requests_per_connection_drains_then_closes_a_shared_connection() -> None:
    routes = [Route("all", (), RouteAction(cluster=V1))]
    h = Harness(snapshot(routes, [cluster(V1, 1001, max_requests_per_connection=2)]))
    a, b = h.client(), h.client()
    h.send(a, call(1, b"first"))
    h.send(b, call(1, b"second"))  # the second request uses up the first connection
    [up1] = h.connects
    h.connect(up1)
    first_ids = [f[2] for f in h.take(up1)]
    assert len(first_ids) == 2 and up1 not in h.closed
    h.send(a, call(2, b"third"))  # a new request goes to a fresh connection
    assert len(h.connects) == 2
    up2 = h.connects[1]
    h.connect(up2)
    assert [f[4] for f in h.take(up2)] == [b"third"] and h.take(up1) == []
    h.respond(up1, reply(first_ids[0], b"r1"))
    assert up1 not in h.closed  # still draining: one request in flight
    h.respond(up1, reply(first_ids[1], b"r2"))
    assert up1 in h.closed and up2 not in h.closed
    assert h.take(a) == [(2, 0, 1, {}, b"r1")] and h.take(b) == [(2, 0, 1, {}, b"r2")]
    assert h.core.stats.active_upstream_connections == 1


def test_max_requests_per_connection_pipelined_and_oneway_budget() -> None:
    routes = [Route("all", (), RouteAction(cluster=V1))]
    snap = snapshot(routes, [cluster(V1, 1001, max_requests_per_connection=1)], "kvrpc-pipelined")
    h = Harness(snap)
    d = h.client()
    h.send(d, call(1, b"oneway", oneway=True))  # queued while connecting, then sent and closed
    [up1] = h.connects
    h.connect(up1)
    assert [f[4] for f in h.take(up1)] == [b"oneway"] and up1 in h.closed
    h.send(d, call(2, b"next"))
    assert len(h.connects) == 2 and h.connects[1] is not up1


def test_access_log_records() -> None:
    h = two_versions(access_log=True)
    d = h.client()
    h.send(d, call(3, method="get", interface="svc.Api"))
    up = h.connects[0]
    h.connect(up)
    [(_, _, uid, _, _)] = h.take(up)
    h.now = 0.25
    h.respond(up, reply(uid))
    [rec] = h.access
    assert rec["method"] == "get" and rec["interface"] == "svc.Api"
    assert rec["route"] == "to-get" and rec["cluster"] == V1
    assert rec["endpoint"] == "127.0.0.1:1001" and rec["request_id"] == 3
    assert rec["duration_ms"] == 250.0 and rec["response_code"] == "0"


def test_request_stats_labels() -> None:
    h = two_versions()
    d = h.client()
    h.send(d, call(1, method="get") + call(2, method="zzz"))
    up = h.connects[0]
    h.connect(up)
    [(_, _, uid, _, _)] = h.take(up)
    h.respond(up, reply(uid, status=1))
    stats = h.core.stats
    v1 = {"destination_service": "svc.test", "destination_version": "v1"}
    assert stats.totals(**v1, request_protocol="kvrpc") == [0, 1]
    unknown = {"destination_service": "unknown", "destination_version": "unknown"}
    assert stats.totals(**unknown, request_protocol="kvrpc") == [0, 1]


def test_parse_frames_helper_roundtrip() -> None:
    assert parse_frames(call(1, b"x", method="m")) == [(1, 0, 1, {"method": "m"}, b"x")]
