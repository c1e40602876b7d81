"""Redis Cluster pieces of the codec: slots (checked against redis-server's CLUSTER KEYSLOT
values), hashtags, MOVED/ASK parsing, slot metadata and redirections on replies."""

import pytest

from metamesh.codecs import Redirect
from metamesh.codecs.redis import RedisCodec
from metamesh.codecs.redis.cluster import ASKING, crc16, key_slot, parse_redirect
from metamesh.codecs.redis.resp import encode_command


def test_crc16_and_slots_match_redis() -> None:
    assert crc16(b"123456789") == 0x31C3  # the XMODEM check value
    # CLUSTER KEYSLOT answers of redis-server 7.0
    assert key_slot(b"foo") == 12182
    assert key_slot(b"{user1}.a") == 8106 == key_slot(b"user1")
    assert key_slot(b"{}x") == crc16(b"{}x") % 16384  # an empty hashtag is no hashtag
    assert key_slot(b"a{b") == crc16(b"a{b") % 16384


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b"-MOVED 3999 127.0.0.1:6381\r\n", Redirect(3999, "127.0.0.1", 6381)),
        (b"-ASK 12 127.0.0.1:7000\r\n", Redirect(12, "127.0.0.1", 7000, True, ASKING)),
        (b"-MOVED 5 :7000\r\n", Redirect(5, "127.0.0.1", 7000)),
        (b"-MOVED x 127.0.0.1:1\r\n", None),
        (b"-MOVEDX 1 a:1\r\n", None),
        (b"-ERR MOVED\r\n", None),
    ],
)
def test_parse_redirect(frame: bytes, expected: Redirect | None) -> None:
    assert parse_redirect(frame) == expected


def test_cluster_mode_requests_carry_the_slot_and_refuse_select() -> None:
    codec = RedisCodec(options={"mode": "CLUSTER"})
    buf = bytearray(encode_command([b"GET", b"{user1}.a"]) + encode_command([b"SELECT", b"1"]))
    get = codec.decode(buf)
    assert get is not None and get.metadata["slot"] == "8106"
    select = codec.decode(buf)
    assert select is not None and codec.heartbeat_reply(select) == (
        b"-ERR SELECT is not allowed in cluster mode\r\n"
    )
    plain = RedisCodec().decode(bytearray(encode_command([b"GET", b"k"])))
    assert plain is not None and "slot" not in plain.metadata


def test_upstream_redirections_ride_on_the_reply() -> None:
    up = RedisCodec()
    up.upstream_preamble({"mode": "CLUSTER"})
    buf = bytearray(b"-MOVED 1 127.0.0.1:7002\r\n-ERR other\r\n")
    moved, other = up.decode(buf), up.decode(buf)
    assert moved is not None and moved.codec_state == Redirect(1, "127.0.0.1", 7002)
    assert other is not None and other.codec_state is None
