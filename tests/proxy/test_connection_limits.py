"""Connection limits: a started frame must finish in time, and a cap on client connections
that makes room by closing the client idle longest (or refuses when none is idle)."""

from __future__ import annotations

from metamesh.proxy.config import Route, RouteAction
from metamesh.proxy.connection import ConnectionLimits
from tests.proxy.harness import call, cluster, reply, snapshot
from tests.proxy.test_idle_timeout import limited

UP = "outbound|9000||kv.test"
SNAP = snapshot([Route("all", (), RouteAction(cluster=UP))], [cluster(UP, 9000)], "kvrpc")


def tick(h: object, now: float) -> None:
    h.now = now  # type: ignore[attr-defined]
    h.core.on_timer(now)  # type: ignore[attr-defined]
    h.flush()  # type: ignore[attr-defined]


def test_a_frame_that_never_completes_is_closed_after_the_frame_timeout() -> None:
    h = limited(SNAP, ConnectionLimits(frame_timeout=5.0))
    slow, busy = h.client(), h.client()
    frame = call(1, b"a slow-loris request")
    h.send(slow, frame[:6])
    h.now = 3.0
    h.send(slow, frame[6:10])  # trickling bytes do not restart the clock
    tick(h, 4.9)
    assert h.closed == []
    h.send(busy, call(2, b"whole"))  # a client sending whole frames is never affected
    tick(h, 5.95)  # the sweep runs every quarter of the timeout, at most 1 s apart
    assert h.closed == [slow]
    assert h.core.stats.downstream_frame_timeouts == 1
    assert any("frame took over 5.0 s" in line for line in h.logs)


def test_the_clock_starts_with_each_frame_not_the_connection() -> None:
    h = limited(SNAP, ConnectionLimits(frame_timeout=5.0))
    d = h.client()
    h.send(d, call(1, b"x"))
    (up,) = h.connects
    h.connect(up)
    [(_, _, rid, _, _)] = h.take(up)
    h.respond(up, reply(rid, b"ok"))
    h.now = 100.0
    second = call(2, b"later")
    h.send(d, call(3, b"y") + second[:5])  # a whole frame, then a new one starts at 100
    tick(h, 104.0)
    assert d not in h.closed
    tick(h, 105.5)
    assert h.closed == [d]


def test_at_the_cap_the_client_idle_longest_makes_room() -> None:
    h = limited(SNAP, ConnectionLimits(max_downstreams=2))
    old = h.core.downstream_connected("l", "a", 1.0)
    busy = h.core.downstream_connected("l", "b", 2.0)
    h.send(busy, call(1, b"in flight"))
    new = h.core.downstream_connected("l", "c", 3.0)
    h.flush()
    assert h.closed == [old]  # idle longest; the busy one is never evicted
    assert h.core.stats.downstream_cx_evicted == 1
    assert new in h.core.downstreams and busy in h.core.downstreams
    assert any("at the cap of 2 client connections" in line for line in h.logs)


def test_at_the_cap_with_no_idle_client_the_new_one_is_refused_and_logs_are_bounded() -> None:
    h = limited(SNAP, ConnectionLimits(max_downstreams=1))
    busy = h.core.downstream_connected("l", "a", 0.0)
    h.send(busy, call(1, b"in flight"))
    refused = [h.core.downstream_connected("l", f"n{i}", 1.0 + i * 0.01) for i in range(100)]
    h.flush()
    assert h.closed == refused
    assert h.core.stats.downstream_cx_overflow == 100
    assert len([x for x in h.logs if "at the cap" in x]) == 1  # one line per 10 s, not 100
