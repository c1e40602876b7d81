"""Trace context in Dubbo attachments, in pipelined reads (sans-IO, the real Dubbo codec).

Dubbo decodes whole frames straight from a read (``decode_at``), so the client side searches
each read once for the trace marker and tells the request path which frames are clean (after
the read's last marker) or marked (the one holding it); the frames before, and frames
assembled in the buffer, are scanned one by one (``RequestPath.trace_hint``)."""

from __future__ import annotations

import itertools
import random

import pytest

from metamesh.codecs.dubbo import DubboCodec
from metamesh.proxy.config import Route, RouteAction
from metamesh.proxy.request_path import CLEAN, MARKED, UNKNOWN, frame_hint
from metamesh.proxy.tracing import Tracer, TracingConfig
from tests.codecs.dubbo.frames import IFACE, request, response
from tests.proxy.filters.support import ROUTER
from tests.proxy.harness import Harness, cluster, snapshot

V1 = "outbound|20880|v1|demo.test"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
#: requests 2 and 5 of 7 carry a context (5 also the B3 headers, after an attachment)
PARENTS = {2: "00f067aa0ba902b7", 5: "00f067aa0ba902b8"}


def call(rid: int) -> bytes:
    attachments = {"path": IFACE}
    if rid == 2:
        attachments["traceparent"] = f"00-{TRACE}-{PARENTS[2]}-01"
    elif rid == 5:
        attachments.update(
            {"x-b3-traceid": TRACE, "x-b3-spanid": PARENTS[5], "group": "g", "x-b3-sampled": "1"}
        )
    return request(rid, attachments=attachments)


def test_frame_hints() -> None:
    assert frame_hint(10, 20, -1) == CLEAN  # no marker in the read
    assert frame_hint(10, 20, 9) == CLEAN  # after the last marker
    assert frame_hint(10, 20, 10) == MARKED
    assert frame_hint(10, 20, 15) == MARKED  # the marker's 5 bytes end with the frame
    assert frame_hint(10, 20, 16) == UNKNOWN  # it straddles into the next frame
    assert frame_hint(10, 20, 40) == UNKNOWN  # a later frame holds it: scan this one


@pytest.mark.parametrize("step", [None, 1, 37, 150])
def test_contexts_in_pipelined_reads_are_found_however_they_are_split(step: int | None) -> None:
    stream = b"".join(call(rid) for rid in range(1, 8))
    cuts = [0, len(stream)] if step is None else [*range(0, len(stream), step), len(stream)]
    h = Harness(
        snapshot(
            [Route("all", (), RouteAction(cluster=V1))],
            [cluster(V1, 1001)],
            "dubbo",
            None,
            (ROUTER,),
        )
    )
    h.core.tracer = Tracer(TracingConfig(0.0), random.Random(7))
    spans: list[object] = h.core.spans  # type: ignore[assignment]  # the exporter's queue
    d = h.client()
    for a, b in itertools.pairwise(cuts):
        h.send(d, stream[a:b])
    up = h.connects[0]
    h.connect(up)
    codec = DubboCodec()
    buf = bytearray(h.sent.pop(up))
    seen = []
    while (msg := codec.decode(buf)) is not None:
        rid = msg.request_id
        assert rid is not None
        seen.append(rid)
        forwarded = dict(msg.metadata)
        if rid in PARENTS:  # followed: our span named as the parent
            assert forwarded["traceparent"].startswith(f"00-{TRACE}-")
            assert forwarded["traceparent"] != f"00-{TRACE}-{PARENTS[2]}-01"
        else:
            assert "traceparent" not in forwarded  # rate 0: untouched
        h.respond(up, response(rid))
    assert seen == list(range(1, 8))
    assert sorted(s.parent_id for s in spans) == sorted(int(p, 16) for p in PARENTS.values())  # type: ignore[attr-defined]
