"""Fault injection: abort share within tolerance (seeded), delay holds one request only."""

from __future__ import annotations

from metamesh.codecs import ErrorKind
from metamesh.proxy.config import FaultAbort, FaultDelay, FaultInjection
from tests.proxy.filters.support import policy_harness, route, tick
from tests.proxy.harness import call, reply


def test_abort_percentage_is_close_to_configured_share() -> None:
    fault = FaultInjection(abort=FaultAbort(ErrorKind.UNAUTHORIZED, "nope", 20.0))
    h = policy_harness([route("get", fault=fault)], seed=7)
    d = h.client()
    n = 2000
    h.send(d, b"".join(call(i, method="get") for i in range(n)))
    replies = h.take(d)
    aborted = sum(1 for f in replies if f[3] == {"error": "unauthorized"})
    assert abs(aborted - 0.2 * n) < 0.03 * n
    assert h.core.stats.fault_aborts == aborted
    assert h.core.stats.local_replies[ErrorKind.UNAUTHORIZED] == aborted


def test_delay_holds_request_until_deadline_while_others_pass() -> None:
    fault = FaultInjection(delay=FaultDelay(1.5))
    h = policy_harness([route("slow", fault=fault), route("get")])
    assert h.core.listeners["l"].filters is not None  # fault filter added automatically
    d = h.client()
    h.send(d, call(1, b"slow", method="slow") + call(2, b"fast", method="get"))
    up = h.connects[0]
    h.connect(up)
    [(_, _, rid, _, body)] = h.take(up)
    assert body == b"fast"
    h.respond(up, reply(rid, b"re-fast"))
    assert h.take(d) == [(2, 0, 2, {}, b"re-fast")]
    assert h.core.next_deadline() == 1.5
    tick(h, 1.49)
    assert h.take(up) == []
    tick(h, 1.5)
    [(_, _, rid, _, body)] = h.take(up)
    assert body == b"slow" and h.core.stats.fault_delays == 1


def test_delay_then_abort_on_pipelined_protocol_keeps_order() -> None:
    fault = FaultInjection(delay=FaultDelay(1.0), abort=FaultAbort())
    h = policy_harness([route("slow", fault=fault), route("get")], codec="kvrpc-pipelined")
    d = h.client()
    h.send(d, call(0, b"a", method="slow") + call(0, b"b", method="get"))
    up = h.connects[0]
    h.connect(up)
    h.take(up)
    h.respond(up, reply(0, b"re-b"))
    assert h.take(d) == []  # "b" waits behind the delayed "a"
    tick(h, 1.0)
    frames = h.take(d)
    assert [f[3] for f in frames] == [{"error": "fault_abort"}, {}]
    assert frames[1][4] == b"re-b"
