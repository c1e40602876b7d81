"""A drain closes each client at the first moment it is owed nothing, never mid-request.

Through the in-memory harness: idle clients are closed at once, a client with a request in
flight right after its reply is queued (the reply is written before the close), requests that
arrive during the drain are still served, a client in the middle of a frame is kept until that
request is answered, and at the deadline what is still owed is answered with the protocol's
error reply. Dubbo clients get the read-only notice first (checked byte for byte in
tests/codecs/dubbo).
"""

from __future__ import annotations

from metamesh.proxy.config import Route, RouteAction
from tests.proxy.harness import Harness, call, cluster, reply, snapshot

UP = "outbound|9000||kv.test"


def _harness(codec: str = "kvrpc") -> Harness:
    return Harness(
        snapshot([Route("all", (), RouteAction(cluster=UP))], [cluster(UP, 9000)], codec)
    )


def test_idle_clients_close_at_once_busy_ones_after_their_last_reply() -> None:
    h = _harness()
    idle, busy = h.client(), h.client()
    h.send(busy, call(1, b"a"))
    (up,) = h.connects
    h.connect(up)
    [(_, _, rid, _, _)] = h.take(up)
    h.core.start_drain()
    h.flush()
    assert h.closed == [idle]
    assert not h.core.drained
    h.respond(up, reply(rid, b"re-a"))
    assert h.take(busy) == [(2, 0, 1, {}, b"re-a")]  # written before the close runs
    assert h.closed == [idle, busy]
    assert h.core.drained
    assert h.core.stats.downstream_drained == 2
    assert h.core.stats.drain_aborted_requests == 0


def test_requests_arriving_during_the_drain_are_served() -> None:
    h = _harness()
    d = h.client()
    h.send(d, call(1, b"a"))
    (up,) = h.connects
    h.connect(up)
    [(_, _, first, _, _)] = h.take(up)
    h.core.start_drain()
    h.send(d, call(2, b"b"))  # pipelined before the client could know
    [(_, _, second, _, _)] = h.take(up)
    h.respond(up, reply(first, b"re-a"))
    assert d not in h.closed  # "b" is still owed
    h.respond(up, reply(second, b"re-b"))
    assert [f[4] for f in h.take(d)] == [b"re-a", b"re-b"]
    assert h.closed == [d]


def test_a_client_mid_frame_is_kept_until_that_request_is_answered() -> None:
    h = _harness()
    d = h.client()
    frame = call(7, b"slow-to-arrive")
    h.send(d, frame[:5])
    h.core.start_drain()
    h.flush()
    assert h.closed == []  # never cut in the middle of a request
    h.send(d, frame[5:])
    (up,) = h.connects
    h.connect(up)
    [(_, _, rid, _, _)] = h.take(up)
    h.respond(up, reply(rid, b"done"))
    assert h.take(d) == [(2, 0, 7, {}, b"done")]
    assert h.closed == [d]


def test_the_deadline_answers_what_is_owed_with_an_error_and_closes_everything() -> None:
    h = _harness()
    d = h.client()
    h.send(d, call(1, b"never-answered"))
    (up,) = h.connects
    h.connect(up)
    h.take(up)
    h.core.start_drain()
    h.flush()
    assert h.closed == []
    h.core.end_drain(h.now)
    h.flush()
    [(_, status, rid, _, body)] = h.take(d)
    assert rid == 1 and status != 0 and b"proxy shutting down" in body
    assert h.closed == [d] and h.core.drained
    assert h.core.stats.drain_aborted_requests == 1


def test_codecs_without_a_notice_send_nothing_extra() -> None:
    h = _harness()
    d = h.client()
    h.core.start_drain()
    h.flush()
    assert h.take(d) == [] and h.closed == [d]
