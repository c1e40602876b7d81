"""Properties of DubboCodec over generated streams: splits do not matter, garbage is CodecError."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from metamesh.codecs import CodecError, Message
from metamesh.codecs.dubbo import DubboCodec
from tests.codecs.dubbo import frames

text = st.text(max_size=12)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), text)
hessian_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3)
)
attachments = st.dictionaries(text, text, max_size=4)


@st.composite
def frames_(draw: st.DrawFn) -> bytes:
    rid = draw(st.integers(0, 2**64 - 1))
    choice = draw(st.sampled_from(["request", "oneway", "response", "error", "heartbeat"]))
    if choice in ("request", "oneway"):
        args = draw(st.lists(hessian_values, max_size=3))
        return frames.request(
            rid,
            method=draw(text.filter(bool)),
            descriptor="Ljava/lang/Object;" * len(args),
            args=args,
            attachments=draw(attachments),
            two_way=choice == "request",
        )
    if choice == "response":
        kind = draw(st.integers(0, 5))
        return frames.response(
            rid, kind=kind, value=draw(hessian_values), attachments=draw(attachments)
        )
    if choice == "error":
        return frames.error_response(rid, draw(st.sampled_from([31, 60, 80])), draw(text))
    return frames.heartbeat_request(rid)


def summary(m: Message) -> tuple[Any, ...]:
    return (m.type, m.request_id, m.status, m.frame, dict(m.metadata))


def decode_all(chunks: list[bytes]) -> list[tuple[Any, ...]]:
    codec = DubboCodec()
    buf = bytearray()
    out = []
    for chunk in chunks:
        buf += chunk
        while (m := codec.decode(buf)) is not None:
            out.append(summary(m))
    assert buf == b""
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(frames_(), min_size=1, max_size=5), st.data())
def test_any_split_of_a_stream_decodes_to_the_same_messages(
    stream: list[bytes], data: st.DataObject
) -> None:
    whole = b"".join(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=8)))
    chunks = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    expected = decode_all([whole])
    assert [m[3] for m in expected] == stream
    assert decode_all(chunks) == expected


@settings(max_examples=100, deadline=None)
@given(frames_(), attachments.filter(bool))
def test_mutation_round_trips(data: bytes, mutation: dict[str, str]) -> None:
    codec = DubboCodec()
    m = codec.decode(bytearray(data))
    assert m is not None
    out = codec.encode(m, mutation)
    again = codec.decode(bytearray(out))
    assert again is not None
    assert (again.type, again.request_id, again.status) == (m.type, m.request_id, m.status)
    if out != data:
        md = again.metadata
        assert all(
            md[k] == v or k in ("interface", "method", "version", "dubbo_version")
            for k, v in mutation.items()
        )


def exercise(data: bytes) -> None:
    codec = DubboCodec(max_frame_size=4096)
    buf = bytearray(data)
    try:
        while (m := codec.decode(buf)) is not None:
            dict(m.metadata)
            codec.encode(m, {"k": "v"})
            codec.heartbeat_reply(m)
    except CodecError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_only_raise_codec_error(data: bytes) -> None:
    exercise(data)
    exercise(b"\xda\xbb" + data)
    exercise(b"\xda\xbb\xc2\x00" + bytes(8) + len(data).to_bytes(4, "big") + data)
    exercise(b"\xda\xbb\x02\x14" + bytes(8) + len(data).to_bytes(4, "big") + data)


@settings(max_examples=300, deadline=None)
@given(frames_(), st.data())
def test_corrupted_frames_only_raise_codec_error(data: bytes, draw: st.DataObject) -> None:
    pos = draw.draw(st.integers(16, max(16, len(data) - 1)))
    byte = draw.draw(st.integers(0, 255))
    corrupted = bytearray(data)
    if pos < len(corrupted):
        corrupted[pos] = byte
    exercise(bytes(corrupted))
    truncated = corrupted[: draw.draw(st.integers(16, len(corrupted)))]
    truncated[12:16] = (len(truncated) - 16).to_bytes(4, "big")  # a short but complete body
    exercise(bytes(truncated))


def _lazy_summary(m: Message) -> tuple[Any, ...]:
    """``summary``, with a lazily found attachment error in place of the metadata."""
    try:
        return summary(m)
    except CodecError as e:
        return (m.type, m.request_id, m.status, m.frame, str(e))


def _at_vs_buffered(data: bytes, pos: int = 0, max_frame_size: int = 4096) -> Message | None:
    """``decode_at(data, pos)`` must give what ``decode`` gives for a buffer holding
    ``data[pos:]``, or decline (``None``), and raise only the error ``decode`` raises."""
    buf = bytearray(data[pos:])
    try:
        expected = DubboCodec(max_frame_size=max_frame_size).decode(buf)
        error = None
    except CodecError as e:
        expected, error = None, str(e)
    try:
        got = DubboCodec(max_frame_size=max_frame_size).decode_at(data, pos)
    except CodecError as e:
        assert str(e) == error
        return None
    if got is None:
        return None
    assert error is None and expected is not None
    assert _lazy_summary(got) == _lazy_summary(expected)
    assert (got.header_size, got.body_size) == (expected.header_size, expected.body_size)
    assert len(buf) == len(data) - pos - len(got.frame)  # decode consumed the same frame
    if not pos and len(got.frame) == len(data):
        assert got.frame is data  # a read that is one frame: no copy
    return got


@settings(max_examples=200, deadline=None)
@given(frames_(), frames_(), st.data())
def test_decode_at_takes_every_whole_frame_as_decode_does(
    data: bytes, other: bytes, draw: st.DataObject
) -> None:
    assert _at_vs_buffered(data, max_frame_size=len(data)) is not None
    assert _at_vs_buffered(data, max_frame_size=len(data) - 1) is None  # too large: decode's
    tail = other[: draw.draw(st.integers(0, len(other)))]
    stream = other + data + tail  # a frame after another, then maybe part of a third
    first = _at_vs_buffered(stream)
    assert first is not None and first.frame == other
    second = _at_vs_buffered(stream, len(other))
    assert second is not None and second.frame == data
    if len(tail) < len(other):
        assert _at_vs_buffered(stream, len(other) + len(data)) is None  # a part: buffered


@settings(max_examples=300, deadline=None)
@given(frames_(), st.data())
def test_decode_at_declines_or_agrees_on_anything_else(data: bytes, draw: st.DataObject) -> None:
    assert _at_vs_buffered(data[: draw.draw(st.integers(0, len(data) - 1))]) is None
    corrupted = bytearray(data)
    corrupted[draw.draw(st.integers(0, len(data) - 1))] = draw.draw(st.integers(0, 255))
    _at_vs_buffered(bytes(corrupted))  # header or body: the same answer, or None
    junk = draw.draw(st.binary(max_size=40))
    _at_vs_buffered(junk + bytes(corrupted), len(junk))
    _at_vs_buffered(junk, draw.draw(st.integers(0, len(junk))))
