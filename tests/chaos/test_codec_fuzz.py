"""The Dubbo and Thrift codecs fuzzed for a fixed budget on every run (hypothesis).

Inputs (:mod:`tests.chaos.hostile_bytes`): streams of valid frames as real peers write them,
mutated frames of either protocol and random noise, cut the way a socket might deliver them,
with a small ``max_frame_size`` so length checks are hit too. For each, with each codec:

* ``decode`` gives only a :class:`~metamesh.codecs.Message` or ``None`` or raises
  :class:`~metamesh.codecs.CodecError` (``FrameTooLargeError`` included): no other exception.
  ``None`` consumes nothing; a message consumes exactly its ``frame`` off the front.
* Whatever is decoded can be handled as the proxy handles it without anything but
  ``CodecError`` coming out: its (lazy) metadata, ``encode`` unchanged (byte for byte the frame)
  and with a mutation, ``rewrite_request_id``, ``heartbeat_reply``, and ``error_reply`` for a
  request (which must never fail: the proxy answers with it).
* The cuts do not matter: fed in pieces, the codec gives the same messages, then refuses
  too (see :func:`same_outcome` for why not always with the same error) or leaves the same
  bytes waiting, as fed all at once.
* ``decode_at`` agrees with ``decode``: driven as the proxy's read loop drives it (whole frames
  straight from each read while nothing is buffered, the rest buffered for ``decode``), the
  same messages come out, then the same refusal or the same bytes waiting; and at any offset of
  any input, ``decode_at`` declines (``None``) or gives what a fresh ``decode`` of the bytes
  from there gives, or raises the very error (text included) that ``decode`` raises.

The budget: :data:`EXAMPLES` examples per test and per codec, a deadline per example (a codec
that takes long on a small input fails), a fresh random draw each run.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metamesh.codecs import Codec, CodecError, ErrorKind, LocalError, Message, MessageType
from metamesh.codecs.dubbo import DubboCodec
from metamesh.codecs.thrift import ThriftCodec
from tests.chaos.hostile_bytes import cuts, hostile_stream

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

CODECS: dict[str, type[Codec]] = {"dubbo": DubboCodec, "thrift": ThriftCodec}
#: The budget per test and codec; ``CHAOS_FUZZ_EXAMPLES=20000`` for a deeper run by hand.
EXAMPLES = int(os.environ.get("CHAOS_FUZZ_EXAMPLES", "800"))
BUDGET = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
FRAME_LIMITS = st.sampled_from([64, 512, 4096, 1 << 20])
Outcome = tuple[list[tuple[Any, ...]], str | None, bytes]


def handle(codec: Codec, m: Message) -> tuple[Any, ...]:
    """Everything the proxy may do with a decoded message; a summary of the results."""
    assert isinstance(m, Message) and isinstance(m.frame, bytes)
    try:
        metadata: Any = dict(m.metadata)
    except CodecError as e:
        metadata = f"CodecError: {e}"
    assert codec.encode(m) == m.frame
    try:
        mutated: Any = codec.encode(m, {"x-chaos": "1"})
        assert isinstance(mutated, bytes)
    except CodecError as e:
        mutated = f"CodecError: {e}"
    if m.type is MessageType.REQUEST:  # (the core answers no one-way request)
        reply = codec.error_reply(m, LocalError(ErrorKind.UPSTREAM_RESET, "chaos"))
        assert isinstance(reply, bytes) and reply
    if codec.request_id_bits is not None and m.request_id is not None:
        with contextlib.suppress(CodecError):
            assert len(codec.rewrite_request_id(m, 7)) > 0
    if m.type is MessageType.HEARTBEAT:
        codec.heartbeat_reply(m)
    return (m.type, m.request_id, m.status, m.frame, metadata, mutated)


def decode_pieces(codec: Codec, pieces: list[bytes]) -> Outcome:
    """``decode`` over the pieces: (message summaries, the error if any, bytes left)."""
    buf = bytearray()
    out: list[tuple[Any, ...]] = []
    for piece in pieces:
        buf += piece
        while buf:
            before = bytes(buf)
            try:
                m = codec.decode(buf)
            except CodecError as e:
                return out, f"{type(e).__name__}: {e}", before
            if m is None:
                assert buf == before, "a partial frame consumed bytes"
                break
            assert before[: len(m.frame)] == m.frame and buf == before[len(m.frame) :]
            out.append(handle(codec, m))
    return out, None, bytes(buf)


def proxy_read_loop(codec: Codec, pieces: list[bytes]) -> Outcome:
    """``decode_at`` then ``decode``, as ``DownstreamSide.downstream_data`` drives them."""
    buf = bytearray()
    out: list[tuple[Any, ...]] = []
    for data in pieces:
        if not buf:
            pos = 0
            while pos < len(data):
                try:
                    m = codec.decode_at(data, pos)
                except CodecError as e:
                    return out, f"{type(e).__name__}: {e}", data[pos:]
                if m is None:
                    break
                assert data[pos : pos + len(m.frame)] == m.frame
                pos += len(m.frame)
                out.append(handle(codec, m))
            data = data[pos:]
        rest = decode_pieces(codec, [bytes(buf) + data])
        out += rest[0]
        if rest[1] is not None:
            return out, rest[1], rest[2]
        buf = bytearray(rest[2])
    return out, None, bytes(buf)


def same_outcome(got: Outcome, expected: Outcome) -> bool:
    """The same messages, then both refused or the same bytes left waiting. (Not always the
    same refusal: a codec may refuse a bad prefix before the rest arrives, saying what it saw;
    and the size of an unframed Thrift message is found while parsing, so with a cut the
    "needs over max_frame_size" check can come before a parse error further on.)"""
    if expected[1] is not None or got[1] is not None:
        return got[0] == expected[0] and None not in (got[1], expected[1])
    return got == expected


@pytest.mark.parametrize("name", sorted(CODECS))
@BUDGET
@given(data=st.data(), limit=FRAME_LIMITS)
def test_decode_only_raises_codec_error_and_cuts_do_not_matter(
    name: str, data: st.DataObject, limit: int
) -> None:
    stream = data.draw(hostile_stream(name))
    pieces = data.draw(cuts(stream))
    whole = decode_pieces(CODECS[name](max_frame_size=limit), [stream])
    assert same_outcome(decode_pieces(CODECS[name](max_frame_size=limit), pieces), whole)


@pytest.mark.parametrize("name", sorted(CODECS))
@BUDGET
@given(data=st.data(), limit=FRAME_LIMITS)
def test_decode_at_agrees_with_decode(name: str, data: st.DataObject, limit: int) -> None:
    stream = data.draw(hostile_stream(name))
    pieces = data.draw(cuts(stream))
    whole = decode_pieces(CODECS[name](max_frame_size=limit), [stream])
    assert same_outcome(proxy_read_loop(CODECS[name](max_frame_size=limit), pieces), whole)
    pos = data.draw(st.integers(0, len(stream)))
    codec = CODECS[name](max_frame_size=limit)
    try:
        got = codec.decode_at(stream, pos)
    except CodecError as e:
        got_error: str | None = f"{type(e).__name__}: {e}"
        got = None
    else:
        got_error = None
    expected = decode_pieces(CODECS[name](max_frame_size=limit), [stream[pos:]])
    if got_error is not None:
        assert not expected[0] and expected[1] == got_error
    elif got is not None:
        assert [handle(codec, got)] == expected[0][:1]
