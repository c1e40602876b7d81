"""Redis Cluster pieces of the codec: slots (checked against redis-server's CLUSTER KEYSLOT
values), hashtags, MOVED/ASK parsing, slot metadata and redirections on replies."""

import pytest

from metamesh.codecs import CodecError, MessageType, Redirect
from metamesh.codecs.message import Ownership
from metamesh.codecs.redis import RedisCodec
from metamesh.codecs.redis.cluster import (
    ASKING,
    crc16,
    key_slot,
    parse_cluster_slots,
    parse_redirect,
)
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
    assert up.upstream_preamble({"mode": "CLUSTER"}) == encode_command([b"CLUSTER", b"SLOTS"])
    buf = bytearray(b"*0\r\n-MOVED 1 127.0.0.1:7002\r\n-ERR other\r\n")
    table = up.decode(buf)
    assert table is not None and table.type is MessageType.HEARTBEAT
    assert table.codec_state == Ownership(())
    moved, other = up.decode(buf), up.decode(buf)
    assert moved is not None and moved.codec_state == Redirect(1, "127.0.0.1", 7002)
    assert other is not None and other.codec_state is None


def test_cluster_slots_reply_of_redis_7() -> None:
    reply = (
        b"*2\r\n"
        b"*3\r\n:0\r\n:5460\r\n*4\r\n$9\r\n127.0.0.1\r\n:30001\r\n$2\r\nid\r\n*0\r\n"
        b"*4\r\n:5461\r\n:16383\r\n*3\r\n$0\r\n\r\n:30002\r\n$1\r\nx\r\n"
        b"*3\r\n$9\r\n127.0.0.1\r\n:30004\r\n$1\r\ny\r\n"  # a replica: ignored
    )
    assert parse_cluster_slots(reply) == Ownership(
        ((0, 5460, "127.0.0.1", 30001), (5461, 16383, "127.0.0.1", 30002))
    )
    resp3 = (  # HELLO 3: the node's metadata is a map
        b"*1\r\n*3\r\n:0\r\n:16383\r\n"
        b"*4\r\n$9\r\n127.0.0.1\r\n:30001\r\n$2\r\nid\r\n%1\r\n+hostname\r\n+h\r\n"
    )
    assert parse_cluster_slots(resp3) == Ownership(((0, 16383, "127.0.0.1", 30001),))
    with pytest.raises(CodecError):
        parse_cluster_slots(b"*1\r\n:1\r\n")


def test_a_cross_slot_mget_comes_out_as_an_array_header_and_one_get_per_key() -> None:
    codec = RedisCodec(options={"mode": "CLUSTER"})
    mget = encode_command([b"MGET", b"a", b"b", b"{a}x"])
    buf = bytearray(mget + encode_command([b"GET", b"z"]))
    assert codec.decode_at(mget, 0) is None  # left to decode, which may split
    parts = []
    while (msg := codec.decode(buf)) is not None:
        parts.append(msg)
    assert not buf
    assert codec.heartbeat_reply(parts[0]) == b"*3\r\n"
    assert [m.frame for m in parts[1:]] == [
        encode_command([b"GET", k]) for k in (b"a", b"b", b"{a}x", b"z")
    ]
    assert [m.metadata["slot"] for m in parts[1:4]] == [
        str(key_slot(k)) for k in (b"a", b"b", b"a")
    ]
    # one slot: forwarded whole; a partial MGET waits
    same = encode_command([b"MGET", b"{u}1", b"{u}2"])
    whole = codec.decode(bytearray(same))
    assert whole is not None and whole.frame == same
    assert codec.decode(bytearray(mget[:-3])) is None
    # a re-decode of another buffer (the core's mutations) never takes a pending part
    pending = bytearray(mget)
    codec.decode(pending)
    other = codec.decode(bytearray(encode_command([b"GET", b"q"])))
    assert other is not None and other.metadata["key"] == "q"
