"""Route timeouts and retries through the in-memory harness (time is an argument)."""

from __future__ import annotations

from metamesh.codecs import ErrorKind
from metamesh.proxy.config import CircuitBreakers, RetryPolicy
from metamesh.proxy.upstream import UpstreamState
from tests.proxy.filters.support import policy_harness, route, tick
from tests.proxy.harness import call, reply

NO_BACKOFF = {"backoff_base": 0.0}


def test_route_without_policies_has_no_extras() -> None:
    h = policy_harness([route("get")])
    assert h.core.listeners["l"].extras is None
    d = h.client()
    h.send(d, call(1, method="get"))
    up = h.connects[0]
    h.connect(up)
    assert up.pending[1].ext is None  # the plain path allocates no policy state
    assert h.core.next_deadline() == up.connect_deadline


def test_timeout_fires_at_deadline_with_timeout_reply_and_late_reply_is_dropped() -> None:
    h = policy_harness([route("get", timeout=2.0)])
    d = h.client()
    h.send(d, call(7, method="get"))
    up = h.connects[0]
    h.connect(up)
    [(_, _, rid, _, _)] = h.take(up)
    assert h.core.next_deadline() == 2.0
    tick(h, 1.999)
    assert h.take(d) == []
    tick(h, 2.0)
    [(wtype, status, cid, headers, _)] = h.take(d)
    assert (wtype, status, cid, headers) == (2, 1, 7, {"error": "timeout"})
    assert h.core.stats.timeouts == 1 and h.core.stats.local_replies[ErrorKind.TIMEOUT] == 1
    assert h.core.stats.active_requests == 0 and up.in_flight == 0
    # The timed-out id stays reserved: the next request gets a different upstream id.
    h.send(d, call(8, method="get"))
    [(_, _, rid2, _, _)] = h.take(up)
    assert rid2 != rid
    h.respond(up, reply(rid, b"late"))
    assert h.take(d) == [] and h.core.stats.late_responses == 1
    h.respond(up, reply(rid2, b"ok"))
    assert h.take(d) == [(2, 0, 8, {}, b"ok")]


def test_timeout_on_pipelined_protocol_keeps_reply_order() -> None:
    h = policy_harness([route("slow", timeout=1.0), route("get")], codec="kvrpc-pipelined")
    d = h.client()
    h.send(d, call(0, b"a", method="slow") + call(0, b"b", method="get"))
    up = h.connects[0]
    h.connect(up)
    assert [f[4] for f in h.take(up)] == [b"a", b"b"]
    tick(h, 1.0)  # "a" times out: its error reply is first in line, "b" still waits
    assert [f[3] for f in h.take(d)] == [{"error": "timeout"}]
    h.respond(up, reply(0, b"late-a") + reply(0, b"re-b"))  # the late "a" reply is dropped
    assert [f[4] for f in h.take(d)] == [b"re-b"]


def test_retry_after_connect_failure_goes_to_the_other_endpoint() -> None:
    rp = RetryPolicy(num_retries=1, **NO_BACKOFF)
    h = policy_harness([route("get", retry_policy=rp)], ports=(1001, 1002))
    d = h.client()
    h.send(d, call(3, b"x", method="get"))
    first = h.connects[0]
    h.core.upstream_connect_failed(first, "refused", h.now)
    h.flush()
    assert h.take(d) == []  # retried, not answered
    second = h.connects[1]
    assert second.endpoint.port != first.endpoint.port
    h.connect(second)
    [(_, _, rid, _, _)] = h.take(second)
    h.respond(second, reply(rid, b"ok"))
    assert h.take(d) == [(2, 0, 3, {}, b"ok")]
    assert h.core.stats.retries == 1 and h.core.stats.active_requests == 0


def test_reset_after_send_is_not_retried_unless_non_idempotent_allowed() -> None:
    for allowed in (False, True):
        rp = RetryPolicy(num_retries=1, retry_non_idempotent=allowed, **NO_BACKOFF)
        h = policy_harness([route("get", retry_policy=rp)], ports=(1001, 1002))
        d = h.client()
        h.send(d, call(3, method="get"))
        first = h.connects[0]
        h.connect(first)
        h.take(first)
        h.core.upstream_closed(first, h.now)
        h.flush()
        if not allowed:
            assert [f[3] for f in h.take(d)] == [{"error": "upstream_reset"}]
            assert h.core.stats.retries == 0
        else:
            assert h.take(d) == [] and h.core.stats.retries == 1
            second = h.connects[1]
            assert second.endpoint.port != first.endpoint.port
            h.connect(second)
            [(_, _, rid, _, _)] = h.take(second)
            h.respond(second, reply(rid, b"ok"))
            assert h.take(d) == [(2, 0, 3, {}, b"ok")]


def test_reset_before_connect_counts_as_not_sent_and_is_retried() -> None:
    rp = RetryPolicy(num_retries=2, retry_on=("reset",), **NO_BACKOFF)
    h = policy_harness([route("get", retry_policy=rp)], ports=(1001, 1002))
    d = h.client()
    h.send(d, call(3, method="get"))
    first = h.connects[0]
    # A connection that closes while still connecting never carried the request.
    first.state = UpstreamState.READY  # accepted, then reset before our bytes were flushed
    h.core.upstream_closed(first, h.now)
    h.flush()
    assert h.core.stats.retries == 1 and h.take(d) == []


def test_error_response_retry_needs_non_idempotent_and_exhausts_budget() -> None:
    rp = RetryPolicy(
        num_retries=2, retry_on=("error-response",), retry_non_idempotent=True, **NO_BACKOFF
    )
    h = policy_harness([route("get", retry_policy=rp)], ports=(1001, 1002, 1003))
    d = h.client()
    h.send(d, call(4, method="get"))
    ports = []
    for n in range(3):
        up = h.connects[n]
        ports.append(up.endpoint.port)
        h.connect(up)
        [(_, _, rid, _, _)] = h.take(up)
        h.respond(up, reply(rid, b"bad", status=1))
    assert sorted(ports) == [1001, 1002, 1003]  # each retry went to an untried endpoint
    # Budget spent: the last error response is forwarded as it came.
    assert h.take(d) == [(2, 1, 4, {}, b"bad")]
    assert h.core.stats.retries == 2


def test_per_try_timeout_retries_then_route_timeout_wins() -> None:
    rp = RetryPolicy(
        num_retries=5,
        retry_on=("timeout",),
        per_try_timeout=1.0,
        retry_non_idempotent=True,
        **NO_BACKOFF,
    )
    h = policy_harness([route("get", timeout=2.5, retry_policy=rp)], ports=(1001, 1002))
    d = h.client()
    h.send(d, call(5, method="get"))
    h.connect(h.connects[0])
    tick(h, 1.0)  # first try times out -> retry on the other endpoint
    assert h.core.stats.retries == 1 and h.take(d) == []
    h.connect(h.connects[1])
    tick(h, 2.0)  # second try times out -> retry (back to endpoint 1, both excluded)
    assert h.core.stats.retries == 2
    tick(h, 2.5)  # the route timeout ends it all
    assert [f[3] for f in h.take(d)] == [{"error": "timeout"}]
    assert h.core.stats.timeouts == 3 and h.core.stats.active_requests == 0


def test_backoff_is_jittered_within_bounds_and_deterministic() -> None:
    rp = RetryPolicy(num_retries=1, backoff_base=0.1, backoff_max=1.0)
    h = policy_harness([route("get", retry_policy=rp)], ports=(1001, 1002))
    d = h.client()
    h.send(d, call(1, method="get"))
    h.core.upstream_connect_failed(h.connects[0], "refused", 0.0)
    h.flush()
    assert len(h.connects) == 1  # waiting for the back-off
    when = h.core.next_deadline()
    assert when is not None and 0.0 <= when <= 0.1
    tick(h, when)
    assert len(h.connects) == 2


def test_circuit_breaker_still_applies_on_policy_routes() -> None:
    rp = RetryPolicy(num_retries=1, **NO_BACKOFF)
    h = policy_harness(
        [route("get", timeout=5.0, retry_policy=rp)],
        circuit_breakers=CircuitBreakers(max_requests=1),
    )
    d = h.client()
    h.send(d, call(1, method="get") + call(2, method="get"))
    assert [f[3] for f in h.take(d)] == [{"error": "over_limit"}]
