"""The framed fast paths against the general decoder: same results, same errors, at every edge.

A codec decodes its first frame with the general code (it has to detect the transport); once a
connection is known to be framed strict binary (or framed compact), later frames take the fast
path. Below, "warm" is such a codec and "general" the same codec with its fast paths switched off
(the private flags ``_framed_binary`` / ``_framed_compact``), so both see the frame on a
connection whose protocol is already known:
every case is decoded both ways and must agree field by field, and every malformed frame must
raise the same ``CodecError`` whichever path sees it.
"""

from __future__ import annotations

import struct

import pytest

from metamesh.codecs import (
    CodecError,
    ErrorKind,
    LocalError,
    Message,
    MessageType,
    ResponseStatus,
)
from metamesh.codecs.thrift import ThriftCodec
from tests.codecs.thrift import wire

_CALL = 0x80010001
_REPLY = 0x80010002


def _binary(
    version: int, name: bytes, seqid: int, body: bytes, name_size: int | None = None
) -> bytes:
    size = len(name) if name_size is None else name_size
    msg = struct.pack(">Ii", version, size) + name + struct.pack(">i", seqid) + body
    return struct.pack(">i", len(msg)) + msg


def _primed(protocol: str = "binary", max_frame_size: int | None = None) -> ThriftCodec:
    """A codec that has already decoded one framed frame (so the next takes the fast path)."""
    codec = ThriftCodec() if max_frame_size is None else ThriftCodec(max_frame_size=max_frame_size)
    first = (
        _binary(_CALL, b"p", 0, b"\x00")
        if protocol == "binary"
        else wire.frame("framed", protocol, "p", wire.CALL, 0, 0)
    )
    assert codec.decode(bytearray(first)) is not None
    return codec


def _general(protocol: str = "binary") -> ThriftCodec:
    codec = _primed(protocol)
    codec._framed_binary = codec._framed_compact = False
    return codec


def _summary(m: Message) -> tuple[object, ...]:
    return (
        m.frame,
        m.type,
        m.status,
        m.request_id,
        m.header_size,
        m.body_size,
        sorted(m.metadata.items()),
    )


def _outputs(m: Message) -> tuple[object, ...]:
    codec = ThriftCodec()
    rewrites = tuple(codec.rewrite_request_id(m, i) for i in (0, 1, 127, 128, 2**31, 2**32 - 1, -1))
    errors = tuple(codec.error_reply(m, LocalError(kind, "no")) for kind in ErrorKind)
    return rewrites, errors, codec.encode(m, {"x": "y"}), codec.dropped_mutations


def _both_ways(data: bytes, protocol: str = "binary") -> tuple[Message, Message]:
    cold = _general(protocol).decode(bytearray(data))
    codec = _primed(protocol)
    buf = bytearray(data)
    warm = codec.decode(buf)
    assert cold is not None and warm is not None and buf == b""
    return cold, warm


@pytest.mark.parametrize("protocol", ["binary", "compact", "binary-nonstrict"])
@pytest.mark.parametrize(
    ("mtype", "result_field"),
    [(wire.CALL, 0), (wire.ONEWAY, 0), (wire.REPLY, 0), (wire.REPLY, 1), (wire.EXCEPTION, 0)],
)
@pytest.mark.parametrize("seqid", [0, 1, 127, 128, 16383, 16384, 2**31 - 1, -1, -(2**31)])
@pytest.mark.parametrize("name", ["add", "Calc:add", "", "\u00e9t\u00e9"])
def test_fast_path_agrees_with_the_general_path(
    protocol: str, mtype: int, result_field: int, seqid: int, name: str
) -> None:
    data = wire.frame("framed", protocol, name, mtype, seqid, 2, result_field)
    cold, warm = _both_ways(data, protocol)
    assert _summary(warm) == _summary(cold)
    assert warm.request_id == seqid & 0xFFFFFFFF
    assert _outputs(warm) == _outputs(cold)


def test_a_strict_binary_connection_uses_the_fast_path() -> None:
    assert _primed("binary")._framed_binary and not _primed("binary")._framed_compact
    assert _primed("compact")._framed_compact and not _primed("compact")._framed_binary
    nonstrict = _primed("binary-nonstrict")
    assert not nonstrict._framed_binary and not nonstrict._framed_compact


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (_binary(_CALL, b"add", 1, b"\x00", name_size=-1), "negative method name length"),
        (_binary(_CALL, b"add", 1, b"\x00", name_size=-(2**31)), "negative method name length"),
        (_binary(_CALL, b"add", 1, b"\x00", name_size=5), "runs past the end of its frame"),
        (_binary(_CALL, b"add", 1, b"\x00", name_size=2**31 - 1), "runs past the end of its frame"),
        (_binary(0x80020001, b"add", 1, b"\x00"), "bad version bytes"),
        (_binary(0x80010000, b"add", 1, b"\x00"), "unknown message type 0"),
        (_binary(0x80010005, b"add", 1, b"\x00"), "unknown message type 5"),
        (_binary(_REPLY, b"add", 1, b""), "reply body runs past"),
        (_binary(_REPLY, b"add", 1, b"\x0a\x00"), "reply body runs past"),
        (struct.pack(">i", 0) + b"\x80\x01\x00\x01" * 3, "invalid frame length 0"),
        (struct.pack(">i", -5) + b"\x80\x01\x00\x01" * 3, "invalid frame length -5"),
        # a compact message on a connection that spoke strict binary
        (struct.pack(">i", 6) + b"\x82\x21\x01\x01a\x00", "bad version bytes"),
    ],
)
def test_malformed_frames_raise_the_same_error_on_both_paths(data: bytes, error: str) -> None:
    with pytest.raises(CodecError, match=error) as fast:
        _primed("binary").decode(bytearray(data))
    with pytest.raises(CodecError) as general:
        _general("binary").decode(bytearray(data))
    assert str(fast.value) == str(general.value)


def _compact(head: bytes, body: bytes = b"\x00") -> bytes:
    return struct.pack(">i", len(head) + len(body)) + head + body


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (_compact(b"\x82\x01\x01\x01a"), "unknown message type 0"),
        (_compact(b"\x82\xa1\x01\x01a"), "unknown message type 5"),
        (_compact(b"\x82\x22\x01\x01a"), "bad protocol bytes"),
        (_compact(b"\x80\x01\x00\x01"), "bad protocol bytes"),
        (_compact(b"\x82\x21\x01\x05a"), "runs past the end of its frame"),
        (_compact(b"\x82\x21\x01\x85", b""), "runs past the end of its frame"),
        (_compact(b"\x82\x21\x81", b""), "runs past the end of its frame"),
        (_compact(b"\x82\x21\x81\x81\x81", b""), "runs past the end of its frame"),
        (_compact(b"\x82\x21\xff\xff\xff\xff\xff\x01\x01a"), "varint longer than 5"),
        (_compact(b"\x82\x21\x01\xff\xff\xff\xff\xff\x01a"), "varint longer than 5"),
        (_compact(b"\x82\x41\x01\x01a", b""), "reply body runs past"),
        (_compact(b"\x82\x41\x01\x01a", b"\x06"), "reply body runs past"),
        (_compact(b"\x82\x41\x01\x01a", b"\x06\x80"), "reply body runs past"),
    ],
)
def test_malformed_compact_frames_raise_the_same_error_on_both_paths(
    data: bytes, error: str
) -> None:
    with pytest.raises(CodecError, match=error) as fast:
        _primed("compact").decode(bytearray(data))
    with pytest.raises(CodecError) as general:
        _general("compact").decode(bytearray(data))
    assert str(fast.value) == str(general.value)


@pytest.mark.parametrize(
    ("head", "request_id", "name"),
    [
        (b"\x82\x21\x00\x00", 0, ""),  # empty name, no body: the smallest frame
        (b"\x82\x21\x7f\x01a", 127, "a"),
        (b"\x82\x21\x80\x01\x01a", 128, "a"),
        (b"\x82\x21\xff\x7f\x01a", 16383, "a"),
        (b"\x82\x21\x80\x80\x01\x01a", 16384, "a"),
        (b"\x82\x21\x81\x00\x01a", 1, "a"),  # non-minimal varints are accepted
        (b"\x82\x21\x01\x80\x00", 1, ""),
        (b"\x82\x21\x01\x81\x01" + b"m" * 129, 1, "m" * 129),
        (b"\x82\x21\xff\xff\xff\xff\x0f\x01a", 2**32 - 1, "a"),
        (b"\x82\x21\xff\xff\xff\xff\x7f\x01a", 2**32 - 1, "a"),  # bits past 32 dropped
    ],
)
def test_compact_varint_edges(head: bytes, request_id: int, name: str) -> None:
    data = _compact(head, b"")
    cold, warm = _both_ways(data, "compact")
    assert _summary(warm) == _summary(cold)
    assert warm.request_id == request_id and warm.metadata["method"] == name
    assert _outputs(warm) == _outputs(cold)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"\x00", ResponseStatus.OK),
        (b"\x06\x00\x54\x00", ResponseStatus.OK),  # field 0, long form
        (b"\x06\x80\x00\x54\x00", ResponseStatus.OK),  # field 0, non-minimal zigzag id
        (b"\x1c\x00\x00", ResponseStatus.BUSINESS_EXCEPTION),  # field 1, short form
        (b"\x0c\x02\x00\x00", ResponseStatus.BUSINESS_EXCEPTION),  # field 1, long form
        (b"\x0c\x01\x00\x00", ResponseStatus.BUSINESS_EXCEPTION),  # field -1, long form
    ],
)
def test_compact_reply_status(body: bytes, status: ResponseStatus) -> None:
    cold, warm = _both_ways(_compact(b"\x82\x41\x05\x03add", body), "compact")
    assert warm.type is MessageType.RESPONSE and warm.status is status
    assert _summary(warm) == _summary(cold)


def test_oversized_frame_is_refused_before_it_is_buffered() -> None:
    data = _binary(_CALL, b"add", 1, b"\x00" * 100)
    with pytest.raises(CodecError, match="exceeds the 64 limit"):
        _primed(max_frame_size=64).decode(bytearray(data[:20]))
    assert _primed(max_frame_size=len(data)).decode(bytearray(data)) is not None
    with pytest.raises(CodecError, match="exceeds"):
        _primed(max_frame_size=len(data) - 5).decode(bytearray(data))


@pytest.mark.parametrize("name_size", [0, 1, 200])
def test_name_exactly_filling_the_frame(name_size: int) -> None:
    """Header ends at the frame's last byte: a call with no body is framed, a reply is not."""
    name = b"m" * name_size
    cold, warm = _both_ways(_binary(_CALL, name, 9, b""))
    assert _summary(warm) == _summary(cold)
    assert warm.body_size == 0 and warm.metadata["method"] == name.decode()
    with pytest.raises(CodecError, match="reply body runs past"):
        _primed().decode(bytearray(_binary(_REPLY, name, 9, b"")))


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"\x00", ResponseStatus.OK),  # void success: empty result struct
        (b"\x0a\x00\x00" + bytes(8) + b"\x00", ResponseStatus.OK),  # field 0
        (b"\x0c\x00\x01\x00\x00", ResponseStatus.BUSINESS_EXCEPTION),  # field 1
        (b"\x0c\x01\x00\x00\x00", ResponseStatus.BUSINESS_EXCEPTION),  # field 256
        (b"\x0c\xff\xff\x00\x00", ResponseStatus.BUSINESS_EXCEPTION),  # field -1
    ],
)
def test_reply_status(body: bytes, status: ResponseStatus) -> None:
    cold, warm = _both_ways(_binary(_REPLY, b"add", 3, body))
    assert warm.type is MessageType.RESPONSE and warm.status is status
    assert _summary(warm) == _summary(cold)


def test_version_byte_two_is_ignored_as_before() -> None:
    cold, warm = _both_ways(_binary(0x8001FF01, b"add", 3, b"\x00"))
    assert warm.type is MessageType.REQUEST
    assert _summary(warm) == _summary(cold)


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_partial_frames_consume_nothing(protocol: str) -> None:
    codec = _primed(protocol)
    data = wire.frame("framed", protocol, "Calc:add", wire.CALL, 300, 3)
    buf = bytearray()
    for i, byte in enumerate(data):
        assert codec.decode(buf) is None
        assert buf == data[:i]
        buf.append(byte)
    m = codec.decode(buf)
    assert m is not None and m.frame == data and buf == b""


@pytest.mark.parametrize("protocol", ["binary", "compact", "binary-nonstrict"])
def test_pipelined_frames(protocol: str) -> None:
    frames = [wire.frame("framed", protocol, f"m{i}", wire.CALL, i * 100, i) for i in range(5)]
    codec = ThriftCodec()
    buf = bytearray(b"".join(frames))
    got = []
    while (m := codec.decode(buf)) is not None:
        got.append((m.frame, m.request_id, m.metadata["method"]))
    assert got == [(f, i * 100, f"m{i}") for i, f in enumerate(frames)]


def test_metadata_dicts_are_not_shared_between_messages() -> None:
    codec = _primed()
    data = _binary(_CALL, b"Calc:add", 1, b"\x00")
    first = codec.decode(bytearray(data))
    second = codec.decode(bytearray(data))
    assert first is not None and second is not None
    first.metadata["method"] = "changed"
    assert second.metadata == {"method": "add", "service": "Calc", "full_method": "Calc:add"}
    third = codec.decode(bytearray(data))
    assert third is not None and third.metadata["method"] == "add"


def _at(data: bytes, pos: int, codec: ThriftCodec) -> Message | None:
    """``decode_at(data, pos)`` must decline or agree with ``decode`` on a buffer holding
    ``data[pos:]`` (same codec state), raising only the error ``decode`` raises."""
    try:
        got = codec.decode_at(data, pos)
    except CodecError as e:
        with pytest.raises(CodecError) as buffered:
            _primed().decode(bytearray(data[pos:]))
        assert str(e) == str(buffered.value)
        return None
    if got is not None:
        buf = bytearray(data[pos:])
        expected = _primed().decode(buf)
        assert expected is not None and len(buf) == len(data) - pos - len(got.frame)
        assert _summary(got) == _summary(expected) and _outputs(got) == _outputs(expected)
        if not pos and len(got.frame) == len(data):
            assert got.frame is data  # a read that is one frame: no copy
    return got


@pytest.mark.parametrize(
    ("mtype", "result_field"),
    [(wire.CALL, 0), (wire.ONEWAY, 0), (wire.REPLY, 0), (wire.REPLY, 1), (wire.EXCEPTION, 0)],
)
@pytest.mark.parametrize("seqid", [0, 1, 127, 128, 2**31 - 1, -1, -(2**31)])
@pytest.mark.parametrize("name", ["add", "Calc:add", "", "\u00e9t\u00e9"])
def test_decode_at_takes_framed_binary_frames_as_decode_does(
    mtype: int, result_field: int, seqid: int, name: str
) -> None:
    data = wire.frame("framed", "binary", name, mtype, seqid, 2, result_field)
    got = _at(data, 0, _primed())
    assert got is not None and got.request_id == seqid & 0xFFFFFFFF
    stream = data + data + data[:-1]  # two frames and part of a third
    assert _at(stream, 0, _primed()) is not None
    assert _at(stream, len(data), _primed()) is not None
    assert _at(stream, 2 * len(data), _primed()) is None  # a part: left to the buffer
    assert ThriftCodec().decode_at(data, 0) is None  # transport not detected yet
    assert _primed(max_frame_size=len(data) - 5).decode_at(data, 0) is None  # decode refuses


@pytest.mark.parametrize("protocol", ["compact", "binary-nonstrict"])
def test_decode_at_leaves_other_protocols_to_decode(protocol: str) -> None:
    data = wire.frame("framed", protocol, "add", wire.CALL, 7, 2, 0)
    assert _primed(protocol).decode_at(data, 0) is None


def test_decode_at_declines_or_agrees_on_malformed_frames() -> None:
    good = _binary(_CALL, b"add", 1, b"\x00")
    for pos in range(len(good)):
        for byte in (0x00, 0x01, 0x7F, 0x80, 0xFF):
            bad = bytearray(good)
            bad[pos] = byte
            _at(bytes(bad), 0, _primed())
            _at(good + bytes(bad), len(good), _primed())
    assert _at(good, 0, _primed()) is not None
