"""ThriftCodec.decode from bytes: every transport x protocol, partial, pipelined, bad input."""

from __future__ import annotations

import struct

import pytest

from metamesh.codecs import CodecError, MessageType, ResponseStatus, create_codec
from metamesh.codecs.thrift import Protocol, ThriftCodec, Transport
from tests.codecs.thrift import wire

_EXPECTED_PROTOCOL = {
    "binary": Protocol.BINARY,
    "compact": Protocol.COMPACT,
    "binary-nonstrict": Protocol.BINARY_NON_STRICT,
}
_EXPECTED_TRANSPORT = {
    "framed": Transport.FRAMED,
    "unframed": Transport.UNFRAMED,
    "header": Transport.HEADER,
}


def test_registry_resolves_thrift() -> None:
    assert isinstance(create_codec("thrift"), ThriftCodec)
    assert isinstance(create_codec("aeraki.meta_protocol.codec.thrift"), ThriftCodec)
    assert ThriftCodec.request_id_bits == 32


@pytest.mark.parametrize(("transport", "protocol"), wire.COMBOS)
def test_call_decodes_with_metadata(transport: str, protocol: str) -> None:
    data = wire.frame(transport, protocol, name="Calc:add", seqid=77, size=3)
    codec = ThriftCodec()
    buf = bytearray(data)
    m = codec.decode(buf)
    assert m is not None
    assert buf == b""
    assert m.frame == data
    assert m.type is MessageType.REQUEST
    assert m.status is ResponseStatus.OK
    assert m.request_id == 77
    assert m.metadata == {"method": "add", "service": "Calc", "full_method": "Calc:add"}
    assert m.size == len(data)
    assert 0 < m.header_size < len(data)
    assert codec.transport is _EXPECTED_TRANSPORT[transport]
    if transport != "header":
        assert codec.protocol is _EXPECTED_PROTOCOL[protocol]


@pytest.mark.parametrize(("transport", "protocol"), wire.COMBOS)
@pytest.mark.parametrize(
    ("mtype", "result_field", "expected_type", "expected_status"),
    [
        (wire.ONEWAY, 0, MessageType.ONEWAY, ResponseStatus.OK),
        (wire.REPLY, 0, MessageType.RESPONSE, ResponseStatus.OK),
        (wire.REPLY, 1, MessageType.RESPONSE, ResponseStatus.BUSINESS_EXCEPTION),
        (wire.REPLY, 20, MessageType.RESPONSE, ResponseStatus.BUSINESS_EXCEPTION),
        (wire.EXCEPTION, 0, MessageType.ERROR, ResponseStatus.ERROR),
    ],
)
def test_message_types_and_status(
    transport: str,
    protocol: str,
    mtype: int,
    result_field: int,
    expected_type: MessageType,
    expected_status: ResponseStatus,
) -> None:
    data = wire.frame(transport, protocol, "fail", mtype, seqid=9, result_field=result_field)
    m = ThriftCodec().decode(bytearray(data))
    assert m is not None
    assert (m.type, m.status, m.request_id) == (expected_type, expected_status, 9)
    assert m.metadata["method"] == "fail"
    assert "service" not in m.metadata


def test_void_reply_is_ok() -> None:
    # a void method's success result is an empty struct: just the STOP byte
    body = struct.pack(">Ii", 0x80010002, 4) + b"ping" + struct.pack(">i", 3) + b"\x00"
    m = ThriftCodec().decode(bytearray(struct.pack(">i", len(body)) + body))
    assert m is not None
    assert (m.type, m.status) == (MessageType.RESPONSE, ResponseStatus.OK)


@pytest.mark.parametrize(("transport", "protocol"), wire.COMBOS)
def test_partial_frames_consume_nothing(transport: str, protocol: str) -> None:
    data = wire.frame(transport, protocol, seqid=5, size=2)
    codec = ThriftCodec()
    for cut in range(len(data)):
        buf = bytearray(data[:cut])
        assert codec.decode(buf) is None, cut
        assert buf == data[:cut]
    m = codec.decode(bytearray(data))
    assert m is not None
    assert m.frame == data


@pytest.mark.parametrize(("transport", "protocol"), wire.COMBOS)
def test_pipelined_frames_come_out_one_by_one(transport: str, protocol: str) -> None:
    frames = [wire.frame(transport, protocol, f"m{i}", seqid=i, size=i) for i in range(4)]
    buf = bytearray(b"".join(frames) + frames[0][:5])
    codec = ThriftCodec()
    for i, expected in enumerate(frames):
        m = codec.decode(buf)
        assert m is not None
        assert (m.frame, m.request_id, m.metadata["method"]) == (expected, i, f"m{i}")
    assert codec.decode(buf) is None
    assert buf == frames[0][:5]


def test_header_info_headers_become_metadata() -> None:
    data = wire.frame("header", "compact", "Calc:echo", headers={b"x-user": b"alice", b"k": b""})
    m = ThriftCodec().decode(bytearray(data))
    assert m is not None
    assert m.metadata == {
        "x-user": "alice",
        "k": "",
        "method": "echo",
        "service": "Calc",
        "full_method": "Calc:echo",
    }


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_header_zlib_payload(protocol: str) -> None:
    data = wire.frame("header", protocol, "add", seqid=3, zlib=True, headers={b"a": b"b"})
    m = ThriftCodec().decode(bytearray(data))
    assert m is not None
    assert (m.request_id, m.metadata["method"], m.metadata["a"]) == (3, "add", "b")


def test_header_unknown_transform_rejected() -> None:
    body = wire.payload("binary", "add", wire.CALL, 1)
    header = bytes((0, 1, 3, 0))  # binary, one transform: 3 (snappy), padding
    data = struct.pack(">iHHiH", 10 + 4 + len(body), 0x0FFF, 0, 1, 1) + header + body
    with pytest.raises(CodecError, match="unsupported transform"):
        ThriftCodec().decode(bytearray(data))


@pytest.mark.parametrize("transport", ["framed", "header"])
def test_oversize_frame_rejected_before_its_bytes_arrive(transport: str) -> None:
    data = wire.frame(transport, "binary", size=40)
    codec = ThriftCodec(max_frame_size=len(data) - 5)
    with pytest.raises(CodecError, match="exceeds"):
        codec.decode(bytearray(data[:8]))


@pytest.mark.parametrize("protocol", ["binary", "compact", "binary-nonstrict"])
def test_oversize_unframed_message_rejected(protocol: str) -> None:
    data = wire.frame("unframed", protocol, size=40)
    codec = ThriftCodec(max_frame_size=len(data) - 1)
    with pytest.raises(CodecError):
        codec.decode(bytearray(data))


def test_declared_string_length_over_limit_rejected_immediately() -> None:
    head = struct.pack(">Ii", 0x80010001, 3) + b"add" + struct.pack(">i", 1)
    field = b"\x0b\x00\x01" + struct.pack(">i", 100_000_000)  # string of 100 MB declared
    with pytest.raises(CodecError, match="needs over"):
        ThriftCodec().decode(bytearray(head + field))


def test_huge_list_count_rejected_immediately() -> None:
    head = struct.pack(">Ii", 0x80010001, 3) + b"add" + struct.pack(">i", 1)
    field = b"\x0f\x00\x01\x0c" + struct.pack(">i", 2**31 - 1)  # list<struct> of 2**31-1
    with pytest.raises(CodecError):
        ThriftCodec().decode(bytearray(head + field))


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xff\xff\xff\x00\x00\x00\x00",  # negative length
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not thrift at all
        struct.pack(">i", 8) + b"\x80\x01\x00\x09" + b"\x00" * 4,  # message type 9
        struct.pack(">i", 8) + b"\x82\x21" + b"\xff" * 6,  # compact, overlong varint
        struct.pack(">i", 6) + b"\x0f\xff\x00\x00\x00\x00",  # THeader frame shorter than header
        struct.pack(">i", 10) + b"\x80\x01\x00\x01" + struct.pack(">i", 100) + b"ab",
    ],
)
def test_garbage_raises_codec_error(garbage: bytes) -> None:
    with pytest.raises(CodecError):
        ThriftCodec().decode(bytearray(garbage))


def test_bad_field_type_in_unframed_body_raises() -> None:
    head = struct.pack(">Ii", 0x80010001, 3) + b"add" + struct.pack(">i", 1)
    with pytest.raises(CodecError, match="unknown field type"):
        ThriftCodec().decode(bytearray(head + b"\x01\x00\x01\x00"))


def test_nesting_limit() -> None:
    head = struct.pack(">Ii", 0x80010001, 3) + b"add" + struct.pack(">i", 1)
    deep = b"\x0c\x00\x01" * 100 + b"\x00" * 101
    with pytest.raises(CodecError, match="nested"):
        ThriftCodec().decode(bytearray(head + deep))


def test_transport_is_kept_for_the_connection() -> None:
    codec = ThriftCodec()
    assert codec.decode(bytearray(wire.frame("framed", "compact"))) is not None
    with pytest.raises(CodecError):  # a binary frame on a connection that spoke compact
        codec.decode(bytearray(wire.frame("framed", "binary")))


def test_zlib_frame_sizes_add_up() -> None:
    data = wire.frame("header", "binary", "echo", size=200, zlib=True)
    m = ThriftCodec().decode(bytearray(data))
    assert m is not None
    assert 14 <= m.header_size < len(data)
    assert m.header_size + m.body_size == len(data)
