"""A client that ends its sending side (EOF) still gets every reply it is owed, then is closed.

Aeraki's proxy resets requests in flight on a client's half-close; metamesh keeps the
connection open until each two-way request has its answer (forwarded, a local error, a
timeout), whichever path it took, and closes at once when nothing is owed. Through the
in-memory harness, for a multiplexed protocol and a pipelined one.
"""

from __future__ import annotations

from metamesh.proxy.config import Route, RouteAction
from tests.proxy.filters.support import policy_harness, route, tick
from tests.proxy.harness import Harness, call, cluster, reply, snapshot

UP = "outbound|9000||kv.test"


def _harness(codec: str = "kvrpc") -> Harness:
    return Harness(
        snapshot([Route("all", (), RouteAction(cluster=UP))], [cluster(UP, 9000)], codec)
    )


def test_requests_in_flight_are_answered_after_eof_then_the_client_is_closed() -> None:
    h = _harness()
    d = h.client()
    h.send(d, call(1, b"a") + call(2, b"b"))
    (up,) = h.connects
    h.connect(up)
    (_, _, id_a, _, _), (_, _, id_b, _, _) = h.take(up)
    h.core.downstream_eof(d, h.now)
    h.flush()
    assert d not in h.closed and h.core.stats.downstream_half_closed == 1
    h.respond(up, reply(id_b, b"re-b"))
    assert h.take(d) == [(2, 0, 2, {}, b"re-b")]
    assert d not in h.closed  # "a" is still owed
    h.respond(up, reply(id_a, b"re-a"))
    assert h.take(d) == [(2, 0, 1, {}, b"re-a")]  # written before the close action runs
    assert h.closed == [d]
    assert h.core.stats.active_downstream_connections == 0
    assert h.logs == []  # a client's half-close is not an error


def test_eof_with_nothing_owed_closes_at_once_and_one_way_calls_owe_nothing() -> None:
    h = _harness()
    d = h.client()
    h.send(d, call(1, b"fire", oneway=True))
    (up,) = h.connects
    h.connect(up)
    assert [f[4] for f in h.take(up)] == [b"fire"]
    h.core.downstream_eof(d, h.now)
    h.flush()
    assert h.closed == [d]
    assert h.core.stats.downstream_half_closed == 0
    h.core.downstream_eof(d, h.now)  # a second EOF (or one after the close) changes nothing
    h.core.downstream_closed(d, h.now)
    h.flush()
    assert h.closed == [d]


def test_eof_mid_frame_counts_a_truncated_frame_and_still_answers_whole_requests() -> None:
    h = _harness()
    d = h.client()
    h.send(d, call(1, b"whole") + call(2, b"cut")[:7])
    (up,) = h.connects
    h.connect(up)
    [(_, _, rid, _, body)] = h.take(up)
    assert body == b"whole"
    h.core.downstream_eof(d, h.now)
    h.flush()
    assert h.core.stats.downstream_truncated == 1
    assert any("closed mid-frame (7 bytes)" in line for line in h.logs)
    assert d not in h.closed
    h.respond(up, reply(rid, b"ok"))
    assert h.take(d) == [(2, 0, 1, {}, b"ok")]
    assert h.closed == [d]


def test_pipelined_replies_keep_their_order_after_eof() -> None:
    h = _harness("kvrpc-pipelined")
    d = h.client()
    h.send(d, call(0, b"a") + call(0, b"b"))
    (up,) = h.connects
    h.connect(up)
    assert [f[4] for f in h.take(up)] == [b"a", b"b"]
    h.core.downstream_eof(d, h.now)
    h.flush()
    h.respond(up, reply(0, b"re-a"))
    assert [f[4] for f in h.take(d)] == [b"re-a"] and d not in h.closed
    h.respond(up, reply(0, b"re-b"))
    assert [f[4] for f in h.take(d)] == [b"re-b"]
    assert d in h.closed


def test_local_answers_count_too_timeout_and_upstream_reset() -> None:
    h = policy_harness([route("slow", timeout=2.0), route("get")])
    d = h.client()
    h.send(d, call(1, method="slow") + call(2, method="get") + call(3, method="nope"))
    # no route for "nope": answered at once, before the EOF
    assert h.take(d) == [(2, 1, 3, {"error": "route_not_found"}, b"no route for nope")]
    (up,) = h.connects
    h.connect(up)
    h.take(up)
    h.core.downstream_eof(d, h.now)
    h.flush()
    assert h.core.stats.downstream_half_closed == 1
    tick(h, 2.0)  # "slow" times out: a local reply, one of the two owed
    [(_, status, cid, headers, _)] = h.take(d)
    assert (status, cid, headers) == (1, 1, {"error": "timeout"})
    assert d not in h.closed
    h.core.upstream_closed(up, h.now)  # "get" fails with the upstream: the last one owed
    h.flush()
    [(_, status, cid, _, _)] = h.take(d)
    assert (status, cid) == (1, 2)
    assert d in h.closed
