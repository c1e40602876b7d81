"""DubboCodec from bytes: framing, metadata, heartbeats, responses, mutation, local replies."""

from __future__ import annotations

import struct

import pytest

from metamesh.codecs import CodecError, ErrorKind, LocalError, Message, MessageType, ResponseStatus
from metamesh.codecs.dubbo import DubboCodec
from metamesh.codecs.dubbo.metadata import RequestMetadata
from metamesh.codecs.hessian2 import Hessian2Decoder, loads
from metamesh.codecs.registry import create_codec
from tests.codecs.dubbo import frames
from tests.codecs.dubbo.frames import IFACE


def decode_one(data: bytes, codec: DubboCodec | None = None) -> Message:
    buf = bytearray(data)
    message = (codec or DubboCodec()).decode(buf)
    assert message is not None
    assert buf == b""
    return message


def body_values(frame: bytes) -> list[object]:
    d = Hessian2Decoder(frame, 16)
    values = []
    while not d.at_end():
        values.append(d.read())
    return values


# -- the captured frame -----------------------------------------------------------------------


def test_captured_apache_dubbo_js_request_decodes_to_documented_metadata() -> None:
    data = frames.CAPTURED_SAYHELLO.read_bytes()
    m = decode_one(data)
    assert m.type is MessageType.REQUEST
    assert m.request_id == 1
    assert (m.header_size, m.body_size, m.size) == (16, 203, len(data))
    assert m.frame == data
    assert m.metadata == {
        "interface": IFACE,
        "method": "sayHello",
        "version": "0.0.0",
        "dubbo_version": "2.0.2",
        "application": "dubbo-js",
        "path": IFACE,
    }


def test_registry_name_and_aeraki_alias_give_the_dubbo_codec() -> None:
    assert isinstance(create_codec("dubbo"), DubboCodec)
    assert isinstance(create_codec("aeraki.meta_protocol.codec.dubbo"), DubboCodec)
    assert DubboCodec.request_id_bits == 64


def test_routing_on_head_fields_does_not_walk_the_arguments() -> None:
    m = decode_one(frames.CAPTURED_SAYHELLO.read_bytes())
    md = m.metadata
    assert isinstance(md, RequestMetadata)
    assert (md["interface"], md.get("method"), "version" in md) == (IFACE, "sayHello", True)
    assert not md.loaded
    assert md.get("application") == "dubbo-js"
    assert md.loaded


def test_request_metadata_keeps_its_attributes_in_slots() -> None:
    """Each request held in flight keeps its metadata: no per-instance ``__dict__`` (which
    mypyc gave a native ``dict`` subclass, ignoring ``__slots__``: 176 bytes per request)."""
    md = decode_one(frames.CAPTURED_SAYHELLO.read_bytes()).metadata
    assert isinstance(md, RequestMetadata)
    assert not hasattr(md, "__dict__")
    assert md.get("application") == "dubbo-js"  # the slots still serve the lazy load


def test_body_fields_win_over_attachments_of_the_same_name() -> None:
    data = frames.request(attachments={"interface": "evil.Service", "group": "g1"})
    md = decode_one(data).metadata
    assert md.get("group") == "g1"
    assert md["interface"] == IFACE
    assert dict(md)["interface"] == IFACE


def test_non_string_attachments_are_left_out_of_metadata() -> None:
    data = frames.request(attachments={"timeout": 3000, "app": "a", "tags": ["x"]})
    assert "timeout" not in decode_one(data).metadata
    assert decode_one(data).metadata["app"] == "a"


@pytest.mark.parametrize(
    ("descriptor", "args"),
    [
        ("", []),
        ("Ljava/lang/String;[IJ", ["s", [1, 2], 2**40]),
        ("IJLjava/util/Map;", [1, 2, {"k": [1, None, 2.5]}]),
        ("[[Ljava/lang/String;Z", [[["a"], ["b", "c"]], True]),
        ("SV", ["dubbo-py writes S for str", None]),
    ],
)
def test_attachments_are_found_behind_any_arguments(descriptor: str, args: list[object]) -> None:
    data = frames.request(descriptor=descriptor, args=args, attachments={"group": "g"})
    assert decode_one(data).metadata["group"] == "g"


def test_request_without_attachments_map_has_head_metadata_only() -> None:
    m = decode_one(frames.request(raw_attachments=b""))
    assert m.metadata == {
        "interface": IFACE,
        "method": "sayHello",
        "version": "0.0.0",
        "dubbo_version": "2.0.2",
    }


# -- framing ----------------------------------------------------------------------------------


def test_partial_frames_consume_nothing() -> None:
    data = frames.CAPTURED_SAYHELLO.read_bytes()
    codec = DubboCodec()
    for cut in range(len(data)):
        buf = bytearray(data[:cut])
        assert codec.decode(buf) is None
        assert buf == data[:cut]


def test_pipelined_frames_come_out_one_by_one() -> None:
    stream = frames.request(1) + frames.heartbeat_request(2) + frames.request(3, two_way=False)
    buf = bytearray(stream + frames.request(4)[:20])
    codec = DubboCodec()
    got = []
    while (m := codec.decode(buf)) is not None:
        got.append((m.type, m.request_id))
    assert got == [
        (MessageType.REQUEST, 1),
        (MessageType.HEARTBEAT, 2),
        (MessageType.ONEWAY, 3),
    ]
    assert buf == frames.request(4)[:20]


def test_oversized_body_is_refused_from_the_header_alone() -> None:
    header = frames.frame(0xC2, 0, 1, b"")[:12] + struct.pack(">I", 8 * 1024 * 1024)
    with pytest.raises(CodecError, match="max_frame_size"):
        DubboCodec().decode(bytearray(header))
    small = DubboCodec(max_frame_size=100)
    with pytest.raises(CodecError, match="exceeds"):
        small.decode(bytearray(frames.request(attachments={"k": "v" * 100})[:16]))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\xda\xbc" + bytes(14), "bad magic"),
        (b"GET / HTTP/1.1\r\n", "bad magic"),
        (b"\x00", "bad magic"),
        (b"\xda\xbb\xc6\x00" + bytes(8) + b"\x00\x00\x00\x01N", "serialization id 6"),
        (b"\xda\xbb\xc3\x00" + bytes(8) + b"\x00\x00\x00\x01N", "serialization id 3"),
        (b"\xda\xbb\xc2\x00" + bytes(8) + b"\xff\xff\xff\xff", "negative body length"),
        (b"\xda\xbb\x02\x07" + bytes(8) + b"\x00\x00\x00\x01N", "unknown response status 7"),
        (frames.frame(0xC2, 0, 1, b"\x91"), "request"),
        (frames.frame(0xC2, 0, 1, b"N"), "malformed request body"),
        (frames.frame(0xC2, 0, 1, b"NNNN"), "no service path"),
        (frames.frame(0x02, 20, 1, b"\x99"), "result kind 9"),
        (frames.frame(0x02, 20, 1, b""), "response"),
    ],
)
def test_invalid_frames_raise_codec_error(data: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        DubboCodec().decode(bytearray(data))


@pytest.mark.parametrize(
    "data",
    [
        frames.request(descriptor="Ljava/lang/String;II", args=["only one"]),
        frames.request(descriptor="Ljava/lang/String", args=["x"]),
        frames.request(descriptor="Q", args=["x"]),
        frames.request(raw_attachments=b"\x91"),
        frames.request(raw_attachments=b"H\x01a"),
    ],
)
def test_bad_arguments_or_attachments_raise_codec_error_on_full_metadata(data: bytes) -> None:
    m = decode_one(data)
    assert m.metadata["method"] == "sayHello"  # the head is fine
    with pytest.raises(CodecError):
        _ = m.metadata.get("path")
    with pytest.raises(CodecError):
        DubboCodec().encode(m, {"k": "v"})


# -- heartbeats -------------------------------------------------------------------------------


def test_heartbeat_request_and_reply() -> None:
    codec = DubboCodec()
    m = decode_one(frames.heartbeat_request(0x0102030405060708))
    assert m.type is MessageType.HEARTBEAT
    assert m.request_id == 0x0102030405060708
    reply = codec.heartbeat_reply(m)
    assert reply == bytes.fromhex("dabb2214 0102030405060708 00000001 4e")
    echoed = decode_one(reply)
    assert (echoed.type, echoed.request_id) == (MessageType.HEARTBEAT, m.request_id)
    assert codec.heartbeat_reply(echoed) is None


def test_one_way_heartbeat_with_null_body_is_answered_but_readonly_event_is_not() -> None:
    codec = DubboCodec()
    assert codec.heartbeat_reply(decode_one(frames.heartbeat_request(5, two_way=False)))
    readonly = decode_one(frames.frame(0xA2, 0, 6, frames.hstr("R")))
    assert readonly.type is MessageType.HEARTBEAT
    assert codec.heartbeat_reply(readonly) is None


def test_no_heartbeat_reply_for_ordinary_requests() -> None:
    assert DubboCodec().heartbeat_reply(decode_one(frames.request())) is None


# -- responses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (0, ResponseStatus.BUSINESS_EXCEPTION),
        (1, ResponseStatus.OK),
        (2, ResponseStatus.OK),
        (3, ResponseStatus.BUSINESS_EXCEPTION),
        (4, ResponseStatus.OK),
        (5, ResponseStatus.OK),
    ],
)
def test_response_result_kinds(kind: int, status: ResponseStatus) -> None:
    m = decode_one(frames.response(9, kind=kind, attachments={"trace": "t1", "n": 3}))
    assert (m.type, m.request_id, m.status) == (MessageType.RESPONSE, 9, status)
    assert m.metadata == ({"trace": "t1"} if kind >= 3 else {})


@pytest.mark.parametrize("status", [30, 31, 40, 50, 60, 70, 80, 90, 100])
def test_error_status_responses(status: int) -> None:
    m = decode_one(frames.error_response(3, status, "it broke"))
    assert (m.type, m.status, m.metadata) == (MessageType.RESPONSE, ResponseStatus.ERROR, {})


# -- mutation ---------------------------------------------------------------------------------


def test_empty_mutation_forwards_the_same_bytes() -> None:
    m = decode_one(frames.CAPTURED_SAYHELLO.read_bytes())
    codec = DubboCodec()
    assert codec.encode(m) is m.frame
    assert codec.encode(m, {}) is m.frame


def test_request_mutation_rewrites_only_the_attachments() -> None:
    data = frames.CAPTURED_SAYHELLO.read_bytes()
    codec = DubboCodec()
    m = decode_one(data)
    out = codec.encode(m, {"x-canary": "yes", "application": "renamed"})
    args_end = data.index(b"H\x0bapplication")
    assert out[:12] == data[:12]
    assert out[16:args_end] == data[16:args_end]  # head, descriptor and arguments verbatim
    assert struct.unpack(">I", out[12:16])[0] == len(out) - 16
    again = decode_one(out)
    assert again.metadata == {**m.metadata, "x-canary": "yes", "application": "renamed"}
    values = body_values(out)
    assert values[:6] == ["2.0.2", IFACE, "0.0.0", "sayHello", "Ljava/lang/String;", "world"]
    assert list(values[6]) == ["application", "interface", "path", "version", "x-canary"]


def test_request_mutation_keeps_non_string_attachments_byte_for_byte() -> None:
    data = frames.request(attachments={"timeout": 3000, "obj": {"a": [1, 2]}, "k": "old"})
    out = DubboCodec().encode(decode_one(data), {"k": "new"})
    atts = body_values(out)[-1]
    assert atts == {"timeout": 3000, "obj": {"a": [1, 2]}, "k": "new"}


def test_request_without_attachments_gets_a_new_map() -> None:
    data = frames.request(raw_attachments=b"")
    out = DubboCodec().encode(decode_one(data), {"group": "g2"})
    assert out[16:].startswith(data[16:])
    assert decode_one(out).metadata["group"] == "g2"
    null_map = frames.request(raw_attachments=b"N")
    assert decode_one(DubboCodec().encode(decode_one(null_map), {"a": "b"})).metadata["a"] == "b"


def test_oneway_request_mutation() -> None:
    out = DubboCodec().encode(decode_one(frames.request(two_way=False)), {"k": "v"})
    m = decode_one(out)
    assert (m.type, m.metadata["k"]) == (MessageType.ONEWAY, "v")


@pytest.mark.parametrize(("kind", "upgraded"), [(0, 3), (1, 4), (2, 5), (3, 3), (4, 4), (5, 5)])
def test_response_mutation_upgrades_kind_and_keeps_the_value(kind: int, upgraded: int) -> None:
    value = {"user": ["a", 1]}
    data = frames.response(4, kind=kind, value=value, attachments={"old": "1"})
    out = DubboCodec().encode(decode_one(data), {"x-served-by": "p1"})
    m = decode_one(out)
    assert m.request_id == 4
    expected = {"x-served-by": "p1", **({"old": "1"} if kind >= 3 else {})}
    assert m.metadata == expected
    values = body_values(out)
    assert values[0] == upgraded
    if kind % 3 != 2:
        assert values[1] == value


def test_mutation_of_frames_without_attachments_is_dropped_and_counted() -> None:
    codec = DubboCodec()
    for data in (frames.heartbeat_request(1), frames.error_response(2, 80, "x")):
        m = decode_one(data)
        assert codec.encode(m, {"k": "v"}) == data
    assert codec.dropped_mutations == 2


# -- local replies and id rewriting ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (ErrorKind.ROUTE_NOT_FOUND, 60),
        (ErrorKind.CLUSTER_NOT_FOUND, 60),
        (ErrorKind.TIMEOUT, 31),
        (ErrorKind.OVER_LIMIT, 100),
        (ErrorKind.BAD_REQUEST, 40),
        (ErrorKind.BAD_RESPONSE, 50),
        (ErrorKind.NO_HEALTHY_UPSTREAM, 80),
        (ErrorKind.UNAUTHORIZED, 80),
        (ErrorKind.FAULT_ABORT, 80),
    ],
)
def test_error_reply(kind: ErrorKind, status: int) -> None:
    request = decode_one(frames.request(2**63 + 5))
    reply = DubboCodec().error_reply(request, LocalError(kind, "no route for sayHello ü"))
    assert reply[:4] == bytes([0xDA, 0xBB, 0x02, status])
    m = decode_one(reply)
    assert (m.type, m.request_id, m.status) == (
        MessageType.RESPONSE,
        2**63 + 5,
        ResponseStatus.ERROR,
    )
    assert loads(reply[16:]) == "no route for sayHello ü"


def test_rewrite_request_id_patches_only_the_id() -> None:
    data = frames.CAPTURED_SAYHELLO.read_bytes()
    m = decode_one(data)
    out = DubboCodec().rewrite_request_id(m, 2**64 - 1)
    assert out[:4] == data[:4] and out[12:] == data[12:]
    assert decode_one(out).request_id == 2**64 - 1
    assert decode_one(DubboCodec().rewrite_request_id(m, 77)).request_id == 77


def test_lazy_metadata_behaves_like_a_full_dict() -> None:
    md = decode_one(frames.request(attachments={"group": "g", "path": IFACE})).metadata
    full = {
        "interface": IFACE,
        "method": "sayHello",
        "version": "0.0.0",
        "dubbo_version": "2.0.2",
        "group": "g",
        "path": IFACE,
    }
    assert md | {} == full
    assert {} | md == full
    assert sorted(md) == sorted(full) and len(md) == 6
    assert md.copy() == full and type(md.copy()) is dict
    assert next(reversed(md)) == "path"


def test_goaway_notice_is_dubbos_readonly_event() -> None:
    """What a Dubbo provider sends on shutdown: a one-way event request, Hessian2 "R"."""
    notice = DubboCodec().goaway_notice()
    assert notice is not None
    magic, flags, status, rid, length = struct.unpack(">HBBqI", notice[:16])
    assert magic == 0xDABB and status == 0 and rid == 0 and length == len(notice) - 16
    assert flags == 0x80 | 0x20 | 2  # request, event, Hessian2; not two-way: no answer expected
    assert loads(notice[16:]) == "R"
    msg = DubboCodec().decode(bytearray(notice))
    assert msg is not None and msg.type is MessageType.HEARTBEAT  # an event, as we read it
    assert DubboCodec().heartbeat_reply(msg) is None  # and one that is never answered
