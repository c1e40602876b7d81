"""Whole frames taken straight from the bytes read (``Codec.decode_at``) and split reads (the
buffer and ``decode``) mixed on one connection, in both directions, with a real codec (Dubbo):
order, ids and the bad-frame handling must not depend on which path a frame took."""

from __future__ import annotations

import struct

from metamesh.codecs.dubbo import DubboCodec
from metamesh.proxy.config import Route, RouteAction
from tests.codecs.dubbo import frames as dubbo
from tests.proxy.harness import Harness, cluster, snapshot

UP = "outbound|20880||demo.test"


def _harness() -> Harness:
    return Harness(snapshot([Route("all", (), RouteAction(cluster=UP))], [cluster(UP, 1)], "dubbo"))


def _frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """(flags, request id, body) of every Dubbo frame in ``data``."""
    out = []
    while data:
        _, flags, _, rid, size = struct.unpack_from(">HBBQi", data)
        out.append((flags, rid, data[16 : 16 + size]))
        data = data[16 + size :]
    return out


def test_whole_and_split_reads_mix_in_order_both_ways() -> None:
    h = _harness()
    d = h.client()
    a, b, c, e = (dubbo.request(n, args=(f"call {n}",)) for n in (1, 2, 3, 4))
    assert DubboCodec().decode_at(a, 0) is not None  # the first read takes the fast path
    h.send(d, a)
    (up,) = h.connects
    h.connect(up)
    h.send(d, b + c[:10])  # one frame taken, then a part: buffered
    h.send(d, c[10:])  # the rest, after buffered bytes: decoded from the buffer
    h.send(d, e)  # the buffer is empty again: fast path
    sent = _frames(bytes(h.sent.pop(up)))
    bodies = [body for _, _, body in sent]
    assert bodies == [dubbo.request(n, args=(f"call {n}",))[16:] for n in (1, 2, 3, 4)]
    ids = [rid for _, rid, _ in sent]
    assert len(set(ids)) == 4
    # Replies: one alone (fast path), two in one read, the last split in two.
    replies = [dubbo.response(rid, value=f"re {n}") for n, rid in enumerate(ids, 1)]
    h.respond(up, replies[2])
    h.respond(up, replies[0] + replies[3][:20])
    h.respond(up, replies[3][20:])
    h.respond(up, replies[1])
    got = {rid: body for _, rid, body in _frames(bytes(h.sent.pop(d)))}
    assert got == {n: dubbo.response(n, value=f"re {n}")[16:] for n in (1, 2, 3, 4)}
    assert h.core.stats.active_requests == 0


def test_a_whole_frame_the_codec_refuses_closes_that_client_with_a_counter() -> None:
    h = _harness()
    good, bad = h.client(), h.client()
    h.send(good, dubbo.request(1))
    # A valid header around a body that is not a request head: decode_at raises.
    h.send(bad, dubbo.frame(0xC2, 0, 9, b"\x91\x92\x93"))
    assert bad in h.closed and good not in h.closed
    assert h.core.stats.downstream_decode_errors == 1
    assert any("bad frame" in line for line in h.logs)


def test_a_whole_upstream_frame_the_codec_refuses_fails_its_requests_natively() -> None:
    h = _harness()
    d = h.client()
    h.send(d, dubbo.request(5))
    (up,) = h.connects
    h.connect(up)
    [(_, rid, _)] = _frames(bytes(h.sent.pop(up)))
    h.respond(up, dubbo.frame(0x02, 20, rid, b"\x20"))  # status OK, no valid result kind
    assert h.core.stats.upstream_decode_errors == 1
    assert up in h.closed
    reply = bytes(h.sent.pop(d))
    [(flags, client_id, _)] = _frames(reply)
    assert client_id == 5 and not flags & 0x80  # a response, with the client's id
    assert reply[3] == 50  # BAD_RESPONSE, not OK
