"""Property tests of the Kafka codec: any cut of real client traffic decodes to the same
frames, and damaged or arbitrary bytes give messages or CodecError, never another exception
(for requests, for responses upstream, and for the responses the proxy rewrites)."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metamesh.codecs import CodecError, ErrorKind, LocalError, MessageType
from metamesh.codecs.kafka import KafkaCodec
from metamesh.codecs.kafka.codec import AddressRewrite
from tests.codecs.kafka.test_codec import BROKER, LISTENER, ROWS

_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

REQUESTS = [bytes.fromhex(r["request"]) for r in ROWS]
RESPONSES = [(r["api_key"], r["api_version"], bytes.fromhex(r["response"])) for r in ROWS]
ADVERTISE = {"advertise": f"{BROKER}={LISTENER[0]}:{LISTENER[1]}"}


@_SETTINGS
@given(st.lists(st.sampled_from(REQUESTS), min_size=1, max_size=6), st.data())
def test_any_cut_of_client_traffic_decodes_to_the_same_frames(
    frames: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    codec = KafkaCodec()
    buf = bytearray()
    out: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        buf += stream[start:end]
        while (msg := codec.decode(buf)) is not None:
            out.append(msg.frame)
    assert out == frames and not buf


def damaged(frames: list[bytes]) -> st.SearchStrategy[bytes]:
    def damage(frame: bytes, at: int, value: int) -> bytes:
        at %= len(frame)
        return frame[:at] + bytes([value]) + frame[at + 1 :]

    return st.builds(damage, st.sampled_from(frames), st.integers(4, 10_000), st.integers(0, 255))


@_SETTINGS
@given(st.one_of(damaged(REQUESTS), st.binary(max_size=64)))
def test_damaged_requests_give_messages_or_codec_errors(data: bytes) -> None:
    codec = KafkaCodec(options=ADVERTISE)
    try:
        msg = codec.decode(bytearray(data))
    except CodecError:
        return
    if msg is not None and msg.type is MessageType.REQUEST:
        reply = codec.error_reply(msg, LocalError(ErrorKind.ROUTE_NOT_FOUND, "no route"))
        assert reply[4:8] == msg.frame[8:12]  # the request's correlation id


@_SETTINGS
@given(st.sampled_from(RESPONSES), st.integers(8, 10_000), st.integers(0, 255))
def test_damaged_responses_are_forwarded_or_rewritten_never_raise(
    row: tuple[int, int, bytes], at: int, value: int
) -> None:
    api_key, version, frame = row
    at %= len(frame)
    bad = frame[:at] + bytes([value]) + frame[at + 1 :]
    upstream = KafkaCodec()
    upstream.upstream_preamble({})
    with contextlib.suppress(CodecError):
        upstream.decode(bytearray(bad))
    out = KafkaCodec(options=ADVERTISE).merge_reply(AddressRewrite(api_key, version), bad)
    assert out is bad or out[4:8] == bad[4:8]
