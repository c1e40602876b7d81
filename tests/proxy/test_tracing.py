"""Trace context read from and written to request headers, spans per request (sans-IO, KV-RPC
headers standing for any protocol's: Dubbo attachments, THeader headers)."""

from __future__ import annotations

import random

import pytest

from metamesh.proxy.core import MAX_SPAN_ATTRIBUTES, SPAN
from metamesh.proxy.tracing import Tracer, TracingConfig, incoming
from tests.proxy.harness import Harness, call, cluster, parse_frames, reply, snapshot
from tests.proxy.test_connection import V1, by_method

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def traced(rate: float, errors: bool = False) -> tuple[Harness, list[object]]:
    h = Harness(snapshot([by_method("get", V1)], [cluster(V1, 1001)], stat_prefix="svc.test"))
    h.core.tracer = Tracer(TracingConfig(rate, errors), random.Random(7))
    return h, h.core.spans  # type: ignore[return-value]  # the exporter's queue


def forwarded(h: Harness, d: object, rid: int, **headers: str) -> dict[str, str]:
    """Send a request; the headers the upstream got (answered with status ``status``)."""
    h.send(d, call(rid, method="get", **headers))  # type: ignore[arg-type]
    up = h.connects[0]
    if up.handle is None and up.state == 0:
        h.connect(up)
    [(_, _, uid, got, _)] = parse_frames(bytes(h.sent.pop(up)))
    h.respond(up, reply(uid))
    return got


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {"traceparent": f"00-{TRACE}-{PARENT}-01"},
            (int(TRACE, 16), int(PARENT, 16), True, "", False),
        ),
        (
            {"traceparent": f"00-{TRACE}-{PARENT}-00"},
            (int(TRACE, 16), int(PARENT, 16), False, "", False),
        ),
        (
            {"traceparent": f"00-{'0' * 32}-{PARENT}-01"},
            (0, 0, None, "", False),
        ),  # invalid: ignored
        ({"traceparent": "garbage"}, (0, 0, None, "", False)),
        (
            {"x-b3-traceid": TRACE[16:], "x-b3-spanid": PARENT, "x-b3-sampled": "1"},
            (int(TRACE[16:], 16), int(PARENT, 16), True, "", True),
        ),
        ({"b3": f"{TRACE}-{PARENT}-0"}, (0, 0, None, "", False)),  # single-header B3: not read
        ({}, (0, 0, None, "", False)),
    ],
)
def test_incoming_context(headers: dict[str, str], expected: tuple[object, ...]) -> None:
    assert incoming(headers) == expected


def test_a_sampled_request_carries_the_proxy_span_as_parent() -> None:
    h, spans = traced(rate=0.0)
    d = h.client()
    got = forwarded(h, d, 1, traceparent=f"00-{TRACE}-{PARENT}-01", tracestate="k=v")
    [span] = spans
    assert got["traceparent"] == f"00-{TRACE}-{span.span_id:016x}-01"  # type: ignore[attr-defined]
    assert got["tracestate"] == "k=v"
    assert span.parent_id == int(PARENT, 16) and span.trace_id == int(TRACE, 16)  # type: ignore[attr-defined]
    assert not span.server and not span.error  # type: ignore[attr-defined]
    assert dict(span.attributes)["metamesh.cluster"] == V1  # type: ignore[attr-defined]
    assert dict(span.attributes)["metamesh.route"] == "to-get"  # type: ignore[attr-defined]


def test_b3_in_b3_out() -> None:
    h, spans = traced(rate=0.0)
    d = h.client()
    got = forwarded(h, d, 1, **{"x-b3-traceid": TRACE, "x-b3-spanid": PARENT, "x-b3-sampled": "1"})
    [span] = spans
    assert got["x-b3-traceid"] == TRACE and got["x-b3-sampled"] == "1"
    assert got["x-b3-spanid"] == f"{span.span_id:016x}"  # type: ignore[attr-defined]
    assert got["x-b3-parentspanid"] == PARENT


def test_unsampled_requests_are_forwarded_untouched() -> None:
    h, spans = traced(rate=0.0)
    d = h.client()
    assert "traceparent" not in forwarded(h, d, 1)
    got = forwarded(h, d, 2, traceparent=f"00-{TRACE}-{PARENT}-00")
    assert got["traceparent"] == f"00-{TRACE}-{PARENT}-00"  # the client's own, as it was
    assert spans == []


def test_the_rate_samples_new_traces() -> None:
    h, spans = traced(rate=0.5)
    d = h.client()
    for i in range(200):
        forwarded(h, d, i + 1)
    assert 60 < len(spans) < 140
    assert len({s.trace_id for s in spans}) == len(spans)  # type: ignore[attr-defined]
    assert all(s.parent_id == 0 for s in spans)  # type: ignore[attr-defined]


def test_errors_are_exported_when_asked_even_unsampled() -> None:
    for errors, expected in ((False, 0), (True, 1)):
        h, spans = traced(rate=0.0, errors=errors)
        d = h.client()
        h.send(d, call(1, method="zzz") + call(2, method="get"))  # no route, then a good one
        up = h.connects[0]
        h.connect(up)
        [(_, _, uid, got, _)] = parse_frames(bytes(h.sent.pop(up)))
        assert "traceparent" not in got
        h.respond(up, reply(uid))
        assert len(spans) == expected
        if errors:
            [span] = spans
            assert span.error and dict(span.attributes)["metamesh.response_flags"] == "NR"  # type: ignore[attr-defined]


def test_a_failed_reply_gets_its_span_at_the_end_and_unsampled_contexts_keep_their_parent() -> None:
    h, spans = traced(rate=0.0, errors=True)
    d = h.client()
    h.now = 5.0
    h.send(d, call(1, method="get"))  # no context: no span until it fails
    up = h.connects[0]
    h.connect(up)
    [(_, _, uid, got, _)] = parse_frames(bytes(h.sent.pop(up)))
    assert "traceparent" not in got
    h.now = 5.25
    h.respond(up, reply(uid, status=1))  # an error reply from upstream
    h.send(d, call(2, method="get", traceparent=f"00-{TRACE}-{PARENT}-00"))
    [(_, _, uid, got, _)] = parse_frames(bytes(h.sent.pop(up)))
    assert got["traceparent"] == f"00-{TRACE}-{PARENT}-00"  # forwarded as it came
    h.respond(up, reply(uid, status=1))
    h.send(d, call(3, method="get"))
    [(_, _, uid, _, _)] = parse_frames(bytes(h.sent.pop(up)))
    h.respond(up, reply(uid))  # a success, not sampled: no span
    late, kept = spans
    assert late.error and late.parent_id == 0 and (late.start, late.end) == (5.0, 5.25)  # type: ignore[attr-defined]
    assert dict(late.attributes)["metamesh.route"]  # type: ignore[attr-defined]
    assert kept.trace_id == int(TRACE, 16) and kept.parent_id == int(PARENT, 16)  # type: ignore[attr-defined]


def test_spans_of_one_route_endpoint_and_outcome_share_their_attributes() -> None:
    """One tuple per route, endpoint, outcome and method, not a mapping per sampled request;
    the cache is bounded (MAX_SPAN_ATTRIBUTES)."""
    h, spans = traced(rate=1.0, errors=True)
    d = h.client()
    for i in range(3):
        forwarded(h, d, i + 1)
    h.send(d, call(9, method="zzz"))  # no route: an error span
    a, b, c, failed = spans
    assert a.attributes is b.attributes is c.attributes  # type: ignore[attr-defined]
    assert a.name == "svc.test/get"  # type: ignore[attr-defined]
    assert dict(a.attributes) == {  # type: ignore[attr-defined]
        "rpc.system": "kvrpc",
        "rpc.service": "svc.test",
        "rpc.method": "get",
        "metamesh.listener": "l",
        "metamesh.response_code": 0,
        "metamesh.response_flags": "-",
        "metamesh.route": "to-get",
        "metamesh.cluster": V1,
        "server.address": "127.0.0.1",
        "server.port": 1001,
    }
    assert dict(failed.attributes)["metamesh.response_flags"] == "NR"  # type: ignore[attr-defined]
    assert dict(failed.attributes)["metamesh.response_code"] == 1  # type: ignore[attr-defined]
    cache = h.core.span_attributes
    assert len(cache) == 2
    for i in range(MAX_SPAN_ATTRIBUTES - 2):  # full (a compiled constant: filled, not patched)
        cache[("old", i)] = ("x", ())
    h.send(d, call(10, method="yyy"))  # one more key: the cache starts again
    assert len(cache) == 1


def test_the_exporter_is_told_when_spans_start_to_wait_and_once_a_batch_waits() -> None:
    """Spans go into the exporter's queue (``core.spans``); a SPAN action says so when the
    queue goes from empty to one span (the exporter arms its timer) and for every span once
    a batch waits (it sends), not for each span."""
    h, spans = traced(rate=1.0)
    h.core.span_batch = 3
    waiting: list[int] = []
    h.on_action.append(lambda a: waiting.append(len(spans)) if a[0] == SPAN else None)
    d = h.client()
    for i in range(4):
        forwarded(h, d, i + 1)
    assert waiting == [1, 3, 4]
    spans.clear()  # the exporter took them
    forwarded(h, d, 5)
    assert waiting == [1, 3, 4, 1]
