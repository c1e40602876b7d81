"""Property tests of the Redis codec: any cut of valid traffic decodes to the same messages,
and arbitrary bytes give messages or CodecError, never another exception."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metamesh.codecs import CodecError, FrameTooLargeError, Message
from metamesh.codecs.redis import RedisCodec
from metamesh.codecs.redis.resp import _value_end, encode_command, parse_command, value_end

_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

args = st.lists(st.binary(max_size=40), min_size=1, max_size=6)
commands = st.lists(
    st.tuples(st.sampled_from([b"GET", b"SET", b"MGET", b"DEL", b"HSET", b"EVAL", b"PING"]), args),
    min_size=1,
    max_size=8,
)
replies = st.recursive(
    st.one_of(
        st.binary(max_size=30).map(lambda b: b"$%d\r\n%s\r\n" % (len(b), b)),
        st.integers(-(10**12), 10**12).map(lambda i: b":%d\r\n" % i),
        st.sampled_from([b"+OK\r\n", b"-ERR x\r\n", b"$-1\r\n", b"_\r\n", b",1.5\r\n"]),
    ),
    lambda inner: st.lists(inner, max_size=4).map(lambda xs: b"*%d\r\n" % len(xs) + b"".join(xs)),
    max_leaves=12,
)


def _drain(codec: RedisCodec, chunks: list[bytes]) -> list[bytes]:
    buf = bytearray()
    out: list[bytes] = []
    for chunk in chunks:
        buf += chunk
        while (msg := codec.decode(buf)) is not None:
            out.append(msg.frame)
    assert not buf
    return out


def _cuts(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(marks)]


@_SETTINGS
@given(commands, st.lists(st.integers(0, 10_000), max_size=10))
def test_requests_decode_the_same_whatever_the_cuts(
    cmds: list[tuple[bytes, list[bytes]]], points: list[int]
) -> None:
    frames = [encode_command([name, *rest]) for name, rest in cmds]
    data = b"".join(frames)
    whole = _drain(RedisCodec(), [data])
    assert _drain(RedisCodec(), _cuts(data, points)) == whole
    assert whole == frames


@_SETTINGS
@given(st.lists(replies, min_size=1, max_size=6), st.lists(st.integers(0, 10_000), max_size=10))
def test_replies_decode_the_same_whatever_the_cuts(values: list[bytes], points: list[int]) -> None:
    for v in values:
        assert value_end(v, 0, 1 << 20) == len(v)
    up = RedisCodec()
    assert up.upstream_preamble({}) is None
    data = b"".join(values)
    assert _drain(up, _cuts(data, points)) == values


@_SETTINGS
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_messages_or_codec_errors(data: bytes) -> None:
    for codec in (RedisCodec(max_frame_size=64), RedisCodec()):
        if codec.max_frame_size > 64:
            codec.upstream_preamble({})
        buf = bytearray(data)
        try:
            while (msg := codec.decode(buf)) is not None:
                assert isinstance(msg, Message)
        except CodecError:
            pass


def _parsed(buf: bytes | bytearray, pos: int, max_size: int) -> object:
    try:
        return parse_command(buf, pos, max_size)
    except CodecError as e:
        return type(e)


@_SETTINGS
@given(commands, st.data())
def test_the_fast_parse_of_bytes_agrees_with_the_general_one(
    cmds: list[tuple[bytes, list[bytes]]], data: st.DataObject
) -> None:
    """parse_command on ``bytes`` (digit-by-digit fast path) and on ``bytearray`` (the general
    parse) give the same answer for any cut, any corruption and any size limit."""
    wire = bytearray(b"".join(encode_command([name, *a]) for name, a in cmds))
    framing = [i for i, b in enumerate(wire) if b in b"\r\n$*0123456789"]
    for _ in range(data.draw(st.integers(0, 2))):  # corrupt framing bytes mostly
        at = data.draw(st.sampled_from(framing) | st.integers(0, len(wire) - 1))
        wire[at] = data.draw(st.sampled_from(b"*$-0123\r\nx"))
    cut = data.draw(st.integers(0, len(wire)))
    limit = data.draw(st.sampled_from([8, 64, 1 << 20]))
    raw = bytes(wire[:cut])
    pos = 0
    while True:
        fast, general = _parsed(raw, pos, limit), _parsed(bytearray(raw), pos, limit)
        assert fast == general
        if not isinstance(fast, tuple) or not fast[0]:
            break
        pos = fast[1]


def _measured(f: object, buf: bytes, pos: int, limit: int) -> object:
    try:
        return f(buf, pos, limit, 64)  # type: ignore[operator]
    except CodecError as e:
        return type(e)


@_SETTINGS
@given(st.lists(replies, min_size=1, max_size=6), st.data())
def test_value_end_s_fast_paths_agree_with_the_general_walk(
    values: list[bytes], data: st.DataObject
) -> None:
    """value_end (bulk lengths read digit by digit) and the general walk agree on every
    cut and corruption of a run of replies. (Limits above any line here: a one-line value's
    fast path leaves its length to the line limit, MAX_INLINE, as it always did.)"""
    wire = bytearray(b"".join(values))
    framing = [i for i, b in enumerate(wire) if b in b"\r\n$*+-:0123456789"]
    for _ in range(data.draw(st.integers(0, 2))):
        at = data.draw(st.sampled_from(framing) | st.integers(0, len(wire) - 1))
        wire[at] = data.draw(st.sampled_from(b"*$-+09\r\nx"))
    raw = bytes(wire[: data.draw(st.integers(0, len(wire)))])
    limit = data.draw(st.sampled_from([256, 1 << 20]))
    pos = 0
    while pos < len(raw):
        fast = _measured(value_end, raw, pos, limit)
        assert fast == _measured(_value_end, raw, pos, limit)
        if not isinstance(fast, int):
            break
        pos = fast


def test_a_bulk_reply_over_the_limit_is_refused_from_its_header() -> None:
    with pytest.raises(FrameTooLargeError):
        value_end(b"$10\r\n0123", 0, 4)
    assert value_end(b"$4\r\n0123\r\n", 0, 4) == 10
