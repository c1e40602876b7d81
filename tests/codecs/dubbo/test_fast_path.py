"""The Dubbo decode fast paths against the general Hessian2 reader, at every edge.

``read_request_head`` reads ASCII short/medium strings inline and hands everything else to the
full decoder (``_read_request_head``); the codec also remembers the last head per connection.
Each case checks that the inline reader returns exactly what the full decoder returns, or
raises the same ``CodecError``, and that the memo never answers for a head it did not parse.
"""

from __future__ import annotations

import pytest

from metamesh.codecs import CodecError, MessageType, ResponseStatus
from metamesh.codecs.dubbo import DubboCodec
from metamesh.codecs.dubbo.body import _read_request_head, read_request_head
from tests.codecs.dubbo.frames import IFACE, error_response, frame, hstr, request, response

_NAMES = [
    "",
    "a",
    "x" * 31,  # longest short string
    "x" * 32,  # shortest medium string
    "x" * 127,
    "x" * 128,  # medium length byte 0x80: not ASCII, general path
    "x" * 255,
    "x" * 256,
    "x" * 383,
    "x" * 1023,  # longest medium string
    "x" * 1024,  # long string tag 'S': general path
    "\u00e9t\u00e9",
    "\u4e2d\u6587",
    "emoji\U0001f600",
]


def _head_body(*strings: str) -> bytes:
    return b"".join(hstr(s) for s in strings) + hstr("Ljava/lang/String;") + hstr("w") + b"H" + b"Z"


@pytest.mark.parametrize("name", _NAMES)
@pytest.mark.parametrize("field", range(4))
def test_inline_head_reader_agrees_with_the_hessian_decoder(name: str, field: int) -> None:
    strings = ["2.0.2", IFACE, "1.0.0", "sayHello"]
    strings[field] = name
    data = frame(0xC2, 0, 1, _head_body(*strings))
    if name == "" and field in (1, 3):
        for reader in (read_request_head, _read_request_head):
            with pytest.raises(CodecError, match="no service path or method name"):
                reader(data)
        return
    expected = _read_request_head(data)
    assert expected[:4] == tuple(strings)
    assert read_request_head(data) == expected
    m = DubboCodec().decode(bytearray(data))
    assert m is not None
    assert (m.metadata["dubbo_version"], m.metadata["interface"]) == tuple(strings[:2])
    assert (m.metadata["version"], m.metadata["method"]) == tuple(strings[2:])


def test_null_head_strings_fall_back() -> None:
    body = hstr("2.0.2") + hstr(IFACE) + b"N" + hstr("m") + hstr("") + b"H" + b"Z"
    data = frame(0xC2, 0, 1, body)
    assert read_request_head(data) == _read_request_head(data) == ("2.0.2", IFACE, "", "m", 60)
    body = b"N" + body[6:]
    data = frame(0xC2, 0, 1, body)
    assert read_request_head(data) == _read_request_head(data)


@pytest.mark.parametrize("cut", range(17, 80))
def test_truncated_heads_raise_the_general_error(cut: int) -> None:
    data = request(1)
    head_end = _read_request_head(data)[4]
    truncated = data[:cut]
    if cut >= head_end:
        assert read_request_head(truncated) == _read_request_head(truncated)
        return
    with pytest.raises(CodecError) as general:
        _read_request_head(truncated)
    with pytest.raises(CodecError) as inline:
        read_request_head(truncated)
    assert str(inline.value) == str(general.value)


def test_a_frame_whose_body_ends_inside_the_head_is_a_codec_error() -> None:
    full = request(1)
    body = full[16:40]  # ends inside the service path
    with pytest.raises(CodecError, match="malformed request body"):
        DubboCodec().decode(bytearray(frame(0xC2, 0, 1, body)))


def test_head_memo_follows_the_connection() -> None:
    codec = DubboCodec()
    frames = [
        request(1, method="say"),
        request(2, method="sayHello"),  # the previous method's name is a prefix of this one
        request(3, method="sayHello"),
        request(4, method="sayHello", interface="a.B"),
        request(5, method="say", version="2.0.0"),
        request(6, method="say", version="2.0.0", descriptor="", args=[]),
    ]
    buf = bytearray(b"".join(frames))
    got = []
    while (m := codec.decode(buf)) is not None:
        md = m.metadata
        got.append((m.request_id, md["interface"], md["method"], md["version"], md["path"]))
    assert got == [
        (1, IFACE, "say", "0.0.0", IFACE),
        (2, IFACE, "sayHello", "0.0.0", IFACE),
        (3, IFACE, "sayHello", "0.0.0", IFACE),
        (4, "a.B", "sayHello", "0.0.0", "a.B"),
        (5, IFACE, "say", "2.0.0", IFACE),
        (6, IFACE, "say", "2.0.0", IFACE),
    ]


def test_head_memo_does_not_hide_a_later_bad_frame() -> None:
    codec = DubboCodec()
    assert codec.decode(bytearray(request(1))) is not None
    bad = request(2, method="")
    with pytest.raises(CodecError, match="no service path or method name"):
        codec.decode(bytearray(bad))


def test_head_memo_and_frames_shorter_than_the_head() -> None:
    # A request with an empty body first (before any head is memoised), then one cut inside
    # the memoised head: each is refused as malformed, not matched against the memo (nor, in
    # the native build, failing in the slice that compares them).
    for first in (True, False):
        codec = DubboCodec()
        if not first:
            assert codec.decode(bytearray(request(1))) is not None
        short = frame(0xC2, 0, 2, b"" if first else request(2)[16:30])
        with pytest.raises(CodecError, match="malformed request body"):
            codec.decode(bytearray(short))
        with pytest.raises(CodecError, match="malformed request body"):
            codec.decode_at(short, 0)


@pytest.mark.parametrize("body", [b"\xff", b"\xff\xff", b"\xff\xff" + request(1)[16:]])
def test_no_first_request_matches_the_empty_memo(body: bytes) -> None:
    # Before any head is parsed the memo holds nothing a body can start with: a first request
    # is always parsed, so garbage is refused instead of taking the empty memo's metadata.
    with pytest.raises(CodecError, match="malformed request body"):
        DubboCodec().decode(bytearray(frame(0xC2, 0, 1, body)))


@pytest.mark.parametrize("kind", range(6))
def test_result_kind_inline_and_as_a_long_int(kind: int) -> None:
    short = response(7, kind=kind, attachments={"k": "v"})
    long_form = short[:16] + b"I" + kind.to_bytes(4, "big") + short[17:]
    long_form = long_form[:12] + (len(long_form) - 16).to_bytes(4, "big") + long_form[16:]
    for data in (short, long_form):
        m = DubboCodec().decode(bytearray(data))
        assert m is not None and m.type is MessageType.RESPONSE and m.request_id == 7
        exception = kind % 3 == 0
        expected = ResponseStatus.BUSINESS_EXCEPTION if exception else ResponseStatus.OK
        assert m.status is expected
        assert m.metadata == ({"k": "v"} if kind >= 3 else {})


@pytest.mark.parametrize("tag", [b"\x96", b"\x8f", b"I\x00\x00\x00\x06"])
def test_unknown_result_kind_is_refused(tag: bytes) -> None:
    with pytest.raises(CodecError, match="unknown response result kind"):
        DubboCodec().decode(bytearray(frame(0x02, 20, 1, tag + b"N")))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (frame(0x02, 21, 1, b"N")[:16], "unknown response status 21"),  # header only
        (frame(0x22, 21, 1, b"N"), "unknown response status 21"),  # event
        (frame(0xC3, 0, 1, b"N"), "unsupported serialization id 3"),
        (b"\xda\xbc" + frame(0xC2, 0, 1, b"N")[2:], "bad magic"),
    ],
)
def test_header_errors_are_raised_before_the_body(data: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        DubboCodec().decode(bytearray(data))


def test_pipelined_and_exact_buffers_consume_the_same() -> None:
    one = request(1)
    codec = DubboCodec()
    buf = bytearray(one + one[:20])
    m = codec.decode(buf)
    assert m is not None and m.frame == one and buf == one[:20]
    buf += one[20:]
    m = codec.decode(buf)
    assert m is not None and m.frame == one and buf == b""


def test_memoised_heads_give_each_request_its_own_metadata() -> None:
    codec = DubboCodec()
    first = codec.decode(bytearray(request(1, attachments={"group": "a"})))
    second = codec.decode(bytearray(request(2, attachments={"group": "b"})))
    assert first is not None and second is not None
    assert first.metadata is not second.metadata
    first.metadata["method"] = "changed"  # a filter editing one request's map
    assert (first.metadata["group"], second.metadata["group"]) == ("a", "b")
    assert second.metadata["method"] == "sayHello"
    third = codec.decode(bytearray(request(3)))
    assert third is not None and third.metadata["method"] == "sayHello"


@pytest.mark.parametrize("lookup_first", [False, True])
def test_request_mutation_with_and_without_an_attachment_lookup_first(lookup_first: bool) -> None:
    data = request(5, attachments={"group": "g", "k": "old"})
    codec = DubboCodec()
    m = codec.decode(bytearray(data))
    assert m is not None
    if lookup_first:
        assert m.metadata["group"] == "g"  # walks the arguments; encode reuses that walk
    out = codec.encode(m, {"k": "new"})
    again = DubboCodec().decode(bytearray(out))
    assert again is not None
    assert dict(again.metadata) == {**m.metadata, "k": "new"}
    assert out[:4] == data[:4] and out[4:12] == data[4:12]


@pytest.mark.parametrize(
    "mutation",
    [
        {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},  # only new keys
        {"b": "B"},  # the middle entry replaced
        {"a": "A", "c": "C" * 200, "d": "D"},  # both ends replaced, one key added
        {"b": "\u00e9t\u00e9"},  # a value that is not ASCII
    ],
)
def test_request_mutation_copies_the_untouched_entries_byte_for_byte(
    mutation: dict[str, str],
) -> None:
    data = request(6, attachments={"a": "1", "b": "x" * 200, "c": "3"})
    codec = DubboCodec()
    m = codec.decode(bytearray(data))
    assert m is not None
    out = codec.encode(m, mutation)
    again = DubboCodec().decode(bytearray(out))
    assert again is not None
    assert dict(again.metadata) == {**m.metadata, **mutation}
    assert int.from_bytes(out[12:16], "big") == len(out) - 16
    for key in {"a", "b", "c"} - set(mutation):  # its key and value bytes, unchanged
        entry = hstr(key) + hstr(m.metadata[key])
        assert entry in data and entry in out


@pytest.mark.parametrize("kind", range(6))
@pytest.mark.parametrize("lookup_first", [False, True])
def test_response_layout_made_on_demand_agrees_with_the_long_form(
    kind: int, lookup_first: bool
) -> None:
    """The inline result kind leaves a bare kind as codec state; metadata and mutation turn it
    into the same layout the general reader makes for a long-form kind."""
    short = response(7, kind=kind, value="v", attachments={"k": "v"})
    long_form = short[:16] + b"I" + kind.to_bytes(4, "big") + short[17:]
    long_form = long_form[:12] + (len(long_form) - 16).to_bytes(4, "big") + long_form[16:]
    outs = []
    for data in (short, long_form):
        codec = DubboCodec()
        m = codec.decode(bytearray(data))
        assert m is not None
        if lookup_first:
            assert m.metadata == ({"k": "v"} if kind >= 3 else {})
        out = codec.encode(m, {"x": "y"})
        again = DubboCodec().decode(bytearray(out))
        assert again is not None and again.status is m.status
        assert again.metadata == {"x": "y", **({"k": "v"} if kind >= 3 else {})}
        # kinds 0-2 are rewritten as the one-byte 3-5; kinds 3-5 keep their bytes
        outs.append(out[17:] if data is short or kind < 3 else out[21:])
    assert outs[0] == outs[1]  # same value and attachments bytes either way


def test_error_and_no_attachment_responses_have_empty_metadata() -> None:
    for data in (response(8, kind=1, value="v"), error_response(9, 80, "boom")):
        m = DubboCodec().decode(bytearray(data))
        assert m is not None and m.metadata == {}


def _encoded(value: object, as_long: bool = False) -> bytes:
    from metamesh.codecs.hessian2 import Hessian2Encoder

    enc = Hessian2Encoder()
    if as_long:
        enc.write_long(value)  # type: ignore[arg-type]
    else:
        enc.write(value)
    return enc.getvalue()


def _walked(body: bytes) -> tuple[int, tuple[object, ...]] | None:
    """(tail start, map) of ``body`` by the inline walk, or None when it hands over."""
    from metamesh.codecs.dubbo.body import _inline_attachments, _NotInline

    try:
        tail, amap = _inline_attachments(bytes(16) + body, 16)
    except (_NotInline, IndexError):
        return None
    return tail, (amap.start, amap.end, amap.prefix, amap.entries)


def _decoded(body: bytes) -> tuple[int, tuple[object, ...]]:
    from metamesh.codecs.dubbo.body import _read_map
    from metamesh.codecs.dubbo.descriptor import count_parameters
    from metamesh.codecs.hessian2 import Hessian2Decoder

    d = Hessian2Decoder(bytes(16) + body, 16)
    for _ in range(count_parameters(d.read_string_or_none() or "")):
        d.skip()
    tail = d.offset
    amap = _read_map(bytes(16) + body, d)
    return tail, (amap.start, amap.end, amap.prefix, amap.entries)


def test_the_inline_attachment_walk_finds_what_the_decoder_finds() -> None:
    import random

    rng = random.Random(19)
    ints = [0, -16, 47, -2048, 2047, -(2**18), 2**18 - 1, -(2**31), 2**31 - 1]
    longs = [0, -8, 15, -2048, 2047, -(2**18), 2**18 - 1, -(2**31), 2**31 - 1, 2**63 - 1]
    args = [
        *(_encoded(i) for i in ints),
        *(_encoded(i, as_long=True) for i in longs),
        *(_encoded(v) for v in (None, True, False, "", "x" * 31, "x" * 200, "x" * 1023)),
        # handed over: not ASCII, long string, double, list, map
        *(_encoded(v) for v in ("\u00e9", "x" * 1024, 1.5, [1, 2], {"a": 1})),
    ]
    maps = [
        _encoded({"path": "svc", "traceparent": "00-" + "a" * 52}),
        _encoded({}),
        _encoded(None),
        b"",
        _encoded({"k": 1}),  # handed over: a value that is not a string
        # a medium length byte >= 0x80 (the map is not ASCII as a whole, its strings are)
        _encoded({"tracestate": "x" * 200, "a": "b"}),
        _encoded({"a": "\u00e9"}),  # handed over: a string that is not ASCII
    ]
    walked = 0
    for _ in range(400):
        chosen = rng.sample(args, rng.randint(0, 3))
        body = _encoded("Ljava/lang/Object;" * len(chosen)) + b"".join(chosen) + rng.choice(maps)
        got = _walked(body)
        if got is not None:
            walked += 1
            assert got == _decoded(body), body
    assert walked > 100  # the common shapes do take the inline walk
