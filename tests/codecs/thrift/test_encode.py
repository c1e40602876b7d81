"""Mutation, request-id rewrite and error replies, checked by reading the result with Apache's
own THeaderTransport / protocol readers (and by decoding it again)."""

from __future__ import annotations

import struct

import pytest
from thrift.Thrift import TApplicationException

from metamesh.codecs import CodecError, ErrorKind, LocalError, Message, MessageType, ResponseStatus
from metamesh.codecs.thrift import ThriftCodec
from tests.codecs.thrift import wire


def _decode(data: bytes) -> Message:
    m = ThriftCodec().decode(bytearray(data))
    assert m is not None
    return m


@pytest.mark.parametrize(("transport", "protocol"), wire.COMBOS)
def test_no_mutation_returns_the_same_bytes(transport: str, protocol: str) -> None:
    m = _decode(wire.frame(transport, protocol))
    codec = ThriftCodec()
    assert codec.encode(m) is m.frame
    assert codec.encode(m, {}) is m.frame
    assert codec.dropped_mutations == 0


@pytest.mark.parametrize(("transport", "protocol"), [c for c in wire.COMBOS if c[0] != "header"])
def test_mutation_without_headers_is_dropped_and_counted(transport: str, protocol: str) -> None:
    m = _decode(wire.frame(transport, protocol))
    codec = ThriftCodec()
    assert codec.encode(m, {"x": "y"}) == m.frame
    assert codec.dropped_mutations == 1


@pytest.mark.parametrize("protocol", ["binary", "compact"])
@pytest.mark.parametrize("zlib", [False, True])
def test_header_mutation_adds_and_replaces(protocol: str, zlib: bool) -> None:
    original = wire.frame(
        "header", protocol, "add", seqid=12, zlib=zlib, headers={b"keep": b"1", b"swap": b"old"}
    )
    m = _decode(original)
    out = ThriftCodec().encode(m, {"swap": "new", "added": "\u00e9t\u00e9"})
    headers, seqid, payload = wire.read_header_frame(out)
    assert headers == {b"keep": b"1", b"swap": b"new", b"added": "\u00e9t\u00e9".encode()}
    assert seqid == 12
    assert payload == wire.read_header_frame(original)[2]
    again = _decode(out)
    assert again.metadata["added"] == "\u00e9t\u00e9"
    assert (again.request_id, again.metadata["method"]) == (12, "add")


def test_header_mutation_on_frame_without_headers() -> None:
    m = _decode(wire.frame("header", "binary", seqid=4))
    out = ThriftCodec().encode(m, {"a": "b" * 300})
    headers, seqid, _ = wire.read_header_frame(out)
    assert (headers, seqid) == ({b"a": b"b" * 300}, 4)


@pytest.mark.parametrize(("transport", "protocol"), wire.COMBOS)
@pytest.mark.parametrize("new_id", [0, 1, 127, 128, 2**14, 2**31 - 1, 2**31, 2**32 - 1, -1])
def test_rewrite_request_id(transport: str, protocol: str, new_id: int) -> None:
    original = wire.frame(transport, protocol, "Calc:add", seqid=300, size=2)
    m = _decode(original)
    out = ThriftCodec().rewrite_request_id(m, new_id)
    again = _decode(out)
    assert again.request_id == new_id & 0xFFFFFFFF
    assert again.metadata["full_method"] == "Calc:add"
    name, _, seqid, _ = wire.read_message(protocol, wire.unwrap(transport, out))
    assert name == "Calc:add"
    assert seqid & 0xFFFFFFFF == new_id & 0xFFFFFFFF
    # everything after the seqid is untouched
    body = wire.unwrap(transport, original)
    assert wire.unwrap(transport, out).endswith(body[-40:])
    if transport == "header":
        assert wire.read_header_frame(out)[1] & 0xFFFFFFFF == new_id & 0xFFFFFFFF
    # and back to the original id gives the original bytes
    assert ThriftCodec().rewrite_request_id(again, 300) == original


def test_rewrite_request_id_zlib_header() -> None:
    original = wire.frame("header", "compact", "add", seqid=1, zlib=True)
    out = ThriftCodec().rewrite_request_id(_decode(original), 70000)
    again = _decode(out)
    assert again.request_id == 70000
    assert wire.read_header_frame(out)[1] == 70000


def test_rewrite_request_id_out_of_range() -> None:
    m = _decode(wire.frame("framed", "binary"))
    with pytest.raises(ValueError):
        ThriftCodec().rewrite_request_id(m, 2**32)


def _read_exception(protocol: str, data: bytes) -> tuple[str, int, int, TApplicationException]:
    name, mtype, seqid, proto = wire.read_message(protocol, data)
    exc = TApplicationException()
    exc.read(proto)
    return name, mtype, seqid, exc


@pytest.mark.parametrize(("transport", "protocol"), wire.COMBOS)
@pytest.mark.parametrize(
    ("kind", "app_type"),
    [
        (ErrorKind.ROUTE_NOT_FOUND, TApplicationException.UNKNOWN_METHOD),
        (ErrorKind.TIMEOUT, TApplicationException.INTERNAL_ERROR),
        (ErrorKind.OVER_LIMIT, TApplicationException.INTERNAL_ERROR),
        (ErrorKind.BAD_REQUEST, TApplicationException.PROTOCOL_ERROR),
    ],
)
def test_error_reply(transport: str, protocol: str, kind: ErrorKind, app_type: int) -> None:
    codec = ThriftCodec()
    request = codec.decode(
        bytearray(wire.frame(transport, protocol, "Calc:add", seqid=-(2**31) + 5))
    )
    assert request is not None
    reply = codec.error_reply(request, LocalError(kind, "no route \u2192 add"))
    name, mtype, seqid, exc = _read_exception(protocol, wire.unwrap(transport, reply))
    assert (name, mtype, seqid & 0xFFFFFFFF) == ("add", wire.EXCEPTION, 2**31 + 5)
    assert (exc.type, exc.message) == (app_type, "no route \u2192 add")
    decoded = ThriftCodec().decode(bytearray(reply))
    assert decoded is not None
    assert (decoded.type, decoded.status) == (MessageType.ERROR, ResponseStatus.ERROR)
    assert decoded.request_id == request.request_id
    if transport == "header":
        assert wire.read_header_frame(reply)[1] & 0xFFFFFFFF == 2**31 + 5


def test_error_reply_to_oneway_is_empty() -> None:
    codec = ThriftCodec()
    request = codec.decode(bytearray(wire.frame("framed", "binary", "fire", wire.ONEWAY)))
    assert request is not None
    assert codec.error_reply(request, LocalError(ErrorKind.TIMEOUT, "t")) == b""


def test_foreign_message_rejected() -> None:
    foreign = Message(MessageType.REQUEST, 1, b"x", 1, 0)
    with pytest.raises(CodecError):
        ThriftCodec().error_reply(foreign, LocalError(ErrorKind.TIMEOUT, "t"))
    assert ThriftCodec().heartbeat_reply(foreign) is None


def test_rewrite_compact_seqid_written_non_minimally() -> None:
    # seqid 1 written as the two-byte varint 81 00 (legal, if unusual): both bytes are replaced
    body = b"\x82\x21\x81\x00\x03add\x00"
    m = _decode(struct.pack(">i", len(body)) + body)
    assert m.request_id == 1
    out = ThriftCodec().rewrite_request_id(m, 5)
    assert out == struct.pack(">i", len(body) - 1) + b"\x82\x21\x05\x03add\x00"
