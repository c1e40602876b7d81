"""Property tests: any split of a valid stream decodes the same; random bytes only CodecError."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from metamesh.codecs import CodecError, Message
from metamesh.codecs.thrift import ThriftCodec
from tests.codecs.thrift import wire

_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], list[int]]:
    transport, protocol = draw(st.sampled_from(wire.COMBOS))
    count = draw(st.integers(1, 4))
    frames = []
    for i in range(count):
        mtype = draw(st.sampled_from([wire.CALL, wire.ONEWAY, wire.REPLY, wire.EXCEPTION]))
        frames.append(
            wire.frame(
                transport,
                protocol,
                name=draw(st.sampled_from(["add", "Calc:echo", "", "\u00e9"])),
                mtype=mtype,
                seqid=draw(st.integers(-(2**31), 2**31 - 1)),
                size=draw(st.integers(0, 20)),
                result_field=draw(st.sampled_from([0, 1, 3])),
                headers={b"h": str(i).encode()},
            )
        )
    total = sum(len(f) for f in frames)
    cuts = sorted(draw(st.lists(st.integers(0, total), max_size=12)))
    return frames, cuts


def _summary(m: Message) -> tuple[object, ...]:
    return (m.frame, m.type, m.status, m.request_id, sorted(m.metadata.items()))


@_SETTINGS
@given(streams())
def test_any_split_decodes_to_the_same_messages(case: tuple[list[bytes], list[int]]) -> None:
    frames, cuts = case
    stream = b"".join(frames)
    whole_codec = ThriftCodec()
    whole = bytearray(stream)
    expected = []
    while (m := whole_codec.decode(whole)) is not None:
        expected.append(_summary(m))
    assert [e[0] for e in expected] == frames

    codec = ThriftCodec()
    buf = bytearray()
    got = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        buf += stream[start:stop]
        while (m := codec.decode(buf)) is not None:
            got.append(_summary(m))
    assert got == expected
    assert buf == b""


def _feed(data: bytes, chunk: int, max_frame_size: int) -> None:
    codec = ThriftCodec(max_frame_size=max_frame_size)
    buf = bytearray()
    try:
        for i in range(0, len(data), chunk):
            buf += data[i : i + chunk]
            while (m := codec.decode(buf)) is not None:
                codec.encode(m, {"k": "v"})
                codec.rewrite_request_id(m, 7)
                _ = m.metadata
    except CodecError:
        pass


@_SETTINGS
@given(st.binary(max_size=300), st.integers(1, 64), st.integers(16, 1024))
def test_random_bytes_only_raise_codec_error(data: bytes, chunk: int, limit: int) -> None:
    _feed(data, chunk, limit)


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    transport, protocol = draw(st.sampled_from(wire.COMBOS))
    data = bytearray(wire.frame(transport, protocol, size=draw(st.integers(0, 4))))
    for _ in range(draw(st.integers(1, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data) * draw(st.integers(1, 2))


@_SETTINGS
@given(corrupted(), st.integers(1, 64))
def test_corrupted_frames_only_raise_codec_error(data: bytes, chunk: int) -> None:
    _feed(data, chunk, 4096)
