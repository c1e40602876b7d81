"""RedisCodec from byte strings: request metadata, local commands, replies, mutations."""

import pytest

from metamesh.codecs import (
    CodecError,
    ErrorKind,
    FrameTooLargeError,
    LocalError,
    MessageType,
    ResponseStatus,
    create_codec,
)
from metamesh.codecs.base import REPLY_ERROR, REPLY_OK, REPLY_SKIP
from metamesh.codecs.redis import REMOVE_PREFIX, RedisCodec
from metamesh.codecs.redis.resp import encode_command


def cmd(*args: bytes | str) -> bytes:
    return encode_command([a.encode() if isinstance(a, str) else a for a in args])


def decode_all(codec: RedisCodec, data: bytes) -> list:
    buf = bytearray(data)
    out = []
    while (msg := codec.decode(buf)) is not None:
        out.append(msg)
    assert not buf
    return out


def test_registered_by_name_and_aeraki_spelling() -> None:
    assert isinstance(create_codec("redis"), RedisCodec)
    assert isinstance(create_codec("aeraki.meta_protocol.codec.redis"), RedisCodec)


@pytest.mark.parametrize(
    ("args", "key", "keys", "access"),
    [
        (("GET", "user:1"), "user:1", "user:1", "read"),
        (("set", "a", "1", "EX", "10"), "a", "a", "write"),
        (("MSET", "a", "1", "b", "2"), "a", "a,b", "write"),
        (("MGET", "x", "y", "z"), "x", "x,y,z", "read"),
        (("EVAL", "return 1", "2", "k1", "k2", "arg"), "k1", "k1,k2", "write"),
        (("ZUNIONSTORE", "dst", "2", "s1", "s2", "WEIGHTS", "1", "2"), "dst", "dst,s1,s2", "write"),
        (("OBJECT", "ENCODING", "k"), "k", "k", "read"),
        (("RENAME", "a", "b"), "a", "a,b", "write"),
        (("DBSIZE",), None, None, "read"),
        (("NOSUCHCMD", "x"), None, None, "write"),
    ],
)
def test_request_metadata(
    args: tuple[str, ...], key: str | None, keys: str | None, access: str
) -> None:
    frame = cmd(*args)
    (msg,) = decode_all(RedisCodec(), frame)
    assert msg.type is MessageType.REQUEST and msg.request_id is None
    assert msg.frame == frame
    md = msg.metadata
    assert md["command"] == args[0].lower()
    assert md.get("key") == key and md.get("keys") == keys
    assert md["access"] == access and md["db"] == "0"


def test_inline_and_pipelined_requests_come_out_one_per_call() -> None:
    data = b"GET a\r\n" + cmd("SET", "b", "1") + b"\r\n" + b"DBSIZE\r\n"
    msgs = decode_all(RedisCodec(), data)
    assert [m.metadata["command"] for m in msgs] == ["get", "set", "dbsize"]
    assert msgs[0].frame == b"GET a\r\n"


def test_partial_frames_consume_nothing() -> None:
    frame = cmd("SET", "k", "v" * 100)
    codec = RedisCodec()
    for cut in range(len(frame)):
        buf = bytearray(frame[:cut])
        assert codec.decode(buf) is None and len(buf) == cut


def test_decode_at_matches_decode() -> None:
    data = cmd("GET", "a") + cmd("GET", "b")
    codec = RedisCodec()
    first = codec.decode_at(data, 0)
    assert first is not None and first.frame == cmd("GET", "a")
    second = codec.decode_at(data, len(first.frame))
    assert second is not None and second.metadata["key"] == "b"
    one = cmd("GET", "c")
    whole = codec.decode_at(one, 0)
    assert whole is not None and whole.frame is one


def test_case_insensitive_lowers_the_routing_key_only() -> None:
    codec = RedisCodec(options={"case_insensitive": "true"})
    (msg,) = decode_all(codec, cmd("GET", "User:1"))
    assert msg.metadata["key"] == "user:1" and msg.frame == cmd("GET", "User:1")


def test_remove_prefix_mutation_cuts_every_matching_key() -> None:
    codec = RedisCodec()
    (msg,) = decode_all(codec, cmd("MSET", "p:a", "p:1", "q:b", "2"))
    out = codec.encode(msg, {REMOVE_PREFIX: "p:"})
    assert out == cmd("MSET", "a", "p:1", "q:b", "2")  # values untouched
    (plain,) = decode_all(codec, cmd("GET", "other"))
    assert codec.encode(plain, {REMOVE_PREFIX: "p:"}) is plain.frame
    assert codec.encode(plain) is plain.frame
    codec.encode(plain, {"x-other": "1"})
    assert codec.dropped_mutations == 1


def test_local_commands_are_answered_by_the_codec() -> None:
    codec = RedisCodec()
    data = (
        cmd("CLIENT", "SETINFO", "LIB-NAME", "redis-py")
        + cmd("CLIENT", "SETNAME", "me")
        + cmd("CLIENT", "GETNAME")
        + cmd("SELECT", "2")
        + cmd("MULTI")
        + cmd("BLPOP", "q", "0")
        + cmd("SUBSCRIBE", "ch")
        + cmd("AUTH", "pw")
        + b"PING\r\n"
        + cmd("ECHO", "hi")
    )
    msgs = decode_all(codec, data)
    assert all(m.type is MessageType.HEARTBEAT for m in msgs)
    replies = [codec.heartbeat_reply(m) for m in msgs]
    assert replies[:4] == [b"+OK\r\n", b"+OK\r\n", b"$2\r\nme\r\n", b"+OK\r\n"]
    assert replies[4].startswith(b"-ERR MULTI is not supported")
    assert replies[5].startswith(b"-ERR BLPOP is not supported")
    assert replies[6].startswith(b"-ERR SUBSCRIBE is not supported")
    assert replies[7].startswith(b"-ERR AUTH <password> called without any password")
    assert replies[8:] == [b"+PONG\r\n", b"$2\r\nhi\r\n"]
    assert codec.wire_variant == (2, 2)
    (get,) = decode_all(codec, cmd("GET", "k"))
    assert get.metadata["db"] == "2"


def test_downstream_auth_gates_every_command() -> None:
    codec = RedisCodec(options={"auth_password": "s3cret"})
    first, wrong, right, after = decode_all(
        codec,
        cmd("GET", "k") + cmd("AUTH", "nope") + cmd("AUTH", "default", "s3cret") + cmd("GET", "k"),
    )
    assert codec.heartbeat_reply(first) == b"-NOAUTH Authentication required.\r\n"
    assert codec.heartbeat_reply(wrong).startswith(b"-WRONGPASS")
    assert codec.heartbeat_reply(right) == b"+OK\r\n"
    assert after.type is MessageType.REQUEST


def test_hello_3_with_auth_switches_protocol_and_variant() -> None:
    codec = RedisCodec(options={"auth_password": "pw"})
    (hello,) = decode_all(codec, cmd("HELLO", "3", "AUTH", "default", "pw", "SETNAME", "n"))
    reply = codec.heartbeat_reply(hello)
    assert reply is not None and reply.startswith(b"%7\r\n") and b"proto\r\n:3\r\n" in reply
    assert codec.wire_variant == (3, 0)
    (bad,) = decode_all(codec, cmd("HELLO", "4"))
    assert codec.heartbeat_reply(bad).startswith(b"-NOPROTO")


def test_upstream_preamble_and_its_replies_are_consumed() -> None:
    up = RedisCodec()
    up.expect_variant((3, 5))
    pre = up.upstream_preamble({"auth_password": "pw", "auth_username": "app"})
    assert pre == cmd("AUTH", "app", "pw") + cmd("HELLO", "3") + cmd("SELECT", "5")
    hello_map = b"%1\r\n+server\r\n+redis\r\n"
    data = b"+OK\r\n" + hello_map + b"+OK\r\n" + b"$1\r\nv\r\n" + b"-ERR no\r\n"
    assert up.decode_at(data, 0) is None  # preamble replies are left to decode
    msgs = decode_all(up, data)
    assert [m.frame for m in msgs] == [b"$1\r\nv\r\n", b"-ERR no\r\n"]
    assert [m.status for m in msgs] == [ResponseStatus.OK, ResponseStatus.ERROR]
    assert all(m.type is MessageType.RESPONSE for m in msgs)


def test_refused_upstream_auth_is_a_codec_error() -> None:
    up = RedisCodec()
    assert up.upstream_preamble({"auth_password": "bad"}) == cmd("AUTH", "bad")
    with pytest.raises(CodecError, match="WRONGPASS"):
        up.decode(bytearray(b"-WRONGPASS invalid username-password pair\r\n"))


def test_plain_upstream_has_no_preamble_and_skips_pushes() -> None:
    up = RedisCodec()
    assert up.upstream_preamble({}) is None
    (msg,) = decode_all(up, b">2\r\n+invalidate\r\n*0\r\n:1\r\n")
    assert msg.frame == b":1\r\n"


def test_error_replies_are_redis_errors() -> None:
    codec = RedisCodec()
    (msg,) = decode_all(codec, cmd("GET", "k"))
    reply = codec.error_reply(msg, LocalError(ErrorKind.NO_HEALTHY_UPSTREAM, "no healthy upstream"))
    assert reply == b"-ERR no healthy upstream: no healthy upstream\r\n"
    assert codec.error_reply(msg, LocalError(ErrorKind.TIMEOUT, "route\r\ntimeout")).startswith(
        b"-ERR upstream timeout: route  timeout"
    )


@pytest.mark.parametrize("bad", [b"*1\r\n:1\r\n", b"*2\r\n$3\r\nGETx\r\n", b"*1\r\n$-3\r\n"])
def test_malformed_requests_raise(bad: bytes) -> None:
    with pytest.raises(CodecError):
        RedisCodec().decode(bytearray(bad))


def test_oversize_request_is_refused_from_its_header() -> None:
    with pytest.raises(FrameTooLargeError):
        RedisCodec(max_frame_size=1024).decode(bytearray(b"*2\r\n$3\r\nSET\r\n$2147483648\r\n"))


def test_multi_key_commands_over_several_prefix_routes_are_split_and_merged() -> None:
    codec = RedisCodec(options={"route_prefixes": "a:\nab:", "case_insensitive": "true"})
    buf = bytearray(cmd("MGET", "AB:1", "a:2", "x") + cmd("MGET", "a:1", "a:2") + cmd("DEL", "a:1"))
    parts = decode_all(codec, bytes(buf))
    assert [m.frame for m in parts[:3]] == [cmd("GET", k) for k in ("AB:1", "a:2", "x")]
    assert parts[3].frame == cmd("MGET", "a:1", "a:2")  # one route: whole
    assert parts[4].frame == cmd("DEL", "a:1")
    states = [m.codec_state for m in parts[:3]]
    assert codec.merge_reply(states[2], b"$1\r\nx\r\n") == b""
    assert codec.merge_reply(states[0], b"$1\r\n1\r\n") == b""
    assert codec.merge_reply(states[1], b"$-1\r\n") == b"*3\r\n$1\r\n1\r\n$-1\r\n$1\r\nx\r\n"
    assert codec.decode_at(cmd("MGET", "a:1", "x"), 0) is None  # left to decode
    assert codec.decode_at(cmd("GET", "a:1"), 0) is not None


def test_reply_run_measures_replies_and_marks_errors() -> None:
    up = RedisCodec()
    assert up.upstream_preamble({}) is None
    data = b"+OK\r\n$3\r\nabc\r\n-ERR no\r\n*2\r\n:1\r\n$-1\r\n!5\r\nerror\r\n$4\r\nab"
    ends: list[int] = []
    assert up.reply_run(data, 0, 10, ends) == 5  # the sixth is incomplete
    assert [(e >> 2, e & 3) for e in ends] == [
        (5, REPLY_OK), (14, REPLY_OK), (23, REPLY_ERROR), (36, REPLY_OK), (47, REPLY_ERROR)
    ]  # fmt: skip
    ends.clear()
    assert up.reply_run(data, 5, 2, ends) == 2 and [e >> 2 for e in ends] == [14, 23]


def test_reply_run_skips_setup_replies_and_pushes_and_refuses_a_failed_setup() -> None:
    up = RedisCodec()
    up.expect_variant((3, 2))
    up.upstream_preamble({"auth_password": "pw"})  # AUTH, HELLO 3, SELECT 2
    data = b"+OK\r\n%1\r\n+proto\r\n:3\r\n+OK\r\n>2\r\n+message\r\n+x\r\n:7\r\n"
    ends: list[int] = []
    assert up.reply_run(data, 0, 1, ends) == 1
    assert [e & 3 for e in ends] == [REPLY_SKIP] * 4 + [REPLY_OK]
    assert ends[-1] >> 2 == len(data)
    refused = RedisCodec()
    refused.upstream_preamble({"auth_password": "bad"})
    with pytest.raises(CodecError, match="WRONGPASS"):
        refused.reply_run(b"-WRONGPASS invalid\r\n+OK\r\n", 0, 1, [])
