"""Redis Cluster pieces of the codec: slots (checked against redis-server's CLUSTER KEYSLOT
values), hashtags, MOVED/ASK parsing, slot metadata and redirections on replies."""

import pytest

from metamesh.codecs import CodecError, ErrorKind, LocalError, Message, MessageType, Redirect
from metamesh.codecs.message import Ownership, ReplyPart
from metamesh.codecs.redis import REMOVE_PREFIX, RedisCodec
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
        b"*3\r\n$9\r\n127.0.0.1\r\n:30004\r\n$1\r\ny\r\n"  # its replica
    )
    assert parse_cluster_slots(reply) == Ownership(
        ((0, 5460, "127.0.0.1", 30001), (5461, 16383, "127.0.0.1", 30002)),
        ((5461, 16383, "127.0.0.1", 30004),),
    )
    resp3 = (  # HELLO 3: the node's metadata is a map
        b"*1\r\n*3\r\n:0\r\n:16383\r\n"
        b"*4\r\n$9\r\n127.0.0.1\r\n:30001\r\n$2\r\nid\r\n%1\r\n+hostname\r\n+h\r\n"
    )
    assert parse_cluster_slots(resp3) == Ownership(((0, 16383, "127.0.0.1", 30001),))
    with pytest.raises(CodecError):
        parse_cluster_slots(b"*1\r\n:1\r\n")


def test_a_cross_slot_mget_comes_out_as_one_get_per_key_whose_replies_merge() -> None:
    codec = RedisCodec(options={"mode": "CLUSTER"})
    mget = encode_command([b"MGET", b"a", b"b", b"{a}x"])
    buf = bytearray(mget + encode_command([b"GET", b"z"]))
    assert codec.decode_at(mget, 0) is None  # left to decode, which may split
    parts = []
    while (msg := codec.decode(buf)) is not None:
        parts.append(msg)
    assert not buf
    assert [m.frame for m in parts] == [
        encode_command([b"GET", k]) for k in (b"a", b"b", b"{a}x", b"z")
    ]
    assert [m.metadata["slot"] for m in parts[:3]] == [str(key_slot(k)) for k in (b"a", b"b", b"a")]
    a, b, x = (m.codec_state for m in parts[:3])
    assert codec.merge_reply(b, b"$1\r\nB\r\n") == b""  # any order
    assert codec.merge_reply(a, b"-WRONGTYPE Operation\r\n") == b""
    assert codec.merge_reply(x, b"$-1\r\n") == b"*3\r\n$-1\r\n$1\r\nB\r\n$-1\r\n"
    # one slot: forwarded whole; a partial MGET waits
    same = encode_command([b"MGET", b"{u}1", b"{u}2"])
    whole = codec.decode(bytearray(same))
    assert whole is not None and whole.frame == same
    assert codec.decode(bytearray(mget[:-3])) is None


def parts_of(codec: RedisCodec, *args: bytes) -> list[Message]:
    buf = bytearray(encode_command(list(args)))
    out = []
    while (m := codec.decode(buf)) is not None:
        out.append(m)
    return out


def test_del_exists_and_mset_across_slots_merge_counts_and_ok() -> None:
    codec = RedisCodec(options={"mode": "CLUSTER"})
    d1, d2, d3 = parts_of(codec, b"DEL", b"a", b"b", b"c")
    assert d1.frame == encode_command([b"DEL", b"a"])
    assert codec.merge_reply(d3.codec_state, b":1\r\n") == b""
    assert codec.merge_reply(d1.codec_state, b":1\r\n") == b""
    assert codec.merge_reply(d2.codec_state, b":0\r\n") == b":2\r\n"
    s1, s2 = parts_of(codec, b"MSET", b"a", b"1", b"b", b"2")
    assert s2.frame == encode_command([b"SET", b"b", b"2"])
    assert codec.merge_reply(s1.codec_state, b"+OK\r\n") == b""
    assert codec.merge_reply(s2.codec_state, b"+OK\r\n") == b"+OK\r\n"
    e1, e2 = parts_of(codec, b"EXISTS", b"a", b"b")
    assert codec.merge_reply(e1.codec_state, b"-CLUSTERDOWN down\r\n") == b""
    assert codec.merge_reply(e2.codec_state, b":1\r\n") == b"-CLUSTERDOWN down\r\n"
    # a local error for a part (a timeout) takes its place in the merge too
    t1, t2 = parts_of(codec, b"DEL", b"a", b"b")
    timeout = LocalError(ErrorKind.TIMEOUT, "route timeout")
    assert codec.error_reply(t1, timeout) == b""
    assert codec.error_reply(t2, timeout).startswith(b"-ERR upstream timeout")
    # a part re-encoded by a mutation (removePrefix) stays a part
    r1, _ = parts_of(codec, b"DEL", b"p:a", b"p:b")
    again = codec.decode(bytearray(codec.encode(r1, {REMOVE_PREFIX: "p:"})))
    assert again is not None and again.frame == encode_command([b"DEL", b"a"])
    assert isinstance(again.codec_state, ReplyPart)
