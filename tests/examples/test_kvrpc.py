"""The example KV-RPC codec: registration, the codec contract, and a live round trip."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from examples.kvrpc.kvrpc_codec import KvRpcCodec, build_frame
from metamesh.codecs import (
    CodecError,
    ErrorKind,
    LocalError,
    Message,
    MessageType,
    Mutation,
    ResponseStatus,
    create_codec,
    register_codec,
)
from tests.support.relay import Relay


def test_registers_under_its_name_and_aeraki_name() -> None:
    register_codec("kvrpc", KvRpcCodec)
    assert isinstance(create_codec("kvrpc"), KvRpcCodec)
    assert isinstance(create_codec("aeraki.meta_protocol.codec.kvrpc"), KvRpcCodec)


def test_decode_pipelined_partial_and_mutation() -> None:
    codec = KvRpcCodec()
    a = build_frame(1, 1, {"method": "get", "key": "k1"}, b"body-1")
    b = build_frame(3, 2, {"method": "put"}, b"")
    buf = bytearray(a + b[:5])
    first = codec.decode(buf)
    assert first is not None and first.metadata == {"method": "get", "key": "k1"}
    assert codec.decode(buf) is None and bytes(buf) == b[:5]
    buf += b[5:]
    second = codec.decode(buf)
    assert second is not None and second.type is MessageType.ONEWAY and not buf
    assert codec.encode(first) == a
    mutated = bytearray(codec.encode(first, {"key": "k2", "x": "y"}))
    again = codec.decode(mutated)
    assert again is not None and again.metadata == {"method": "get", "key": "k2", "x": "y"}
    assert again.frame.endswith(b"body-1")


def test_error_reply_heartbeat_and_id_rewrite() -> None:
    codec = KvRpcCodec()
    req = codec.decode(bytearray(build_frame(1, 9, {"method": "get"}, b"")))
    assert req is not None
    reply = codec.decode(
        bytearray(codec.error_reply(req, LocalError(ErrorKind.OVER_LIMIT, "slow down")))
    )
    assert reply is not None and reply.request_id == 9 and reply.status is ResponseStatus.ERROR
    assert reply.frame.endswith(b"slow down") and reply.metadata["error"] == "over_limit"
    ping = codec.decode(bytearray(build_frame(4, 3, {}, b"")))
    assert ping is not None and ping.type is MessageType.HEARTBEAT
    pong = codec.decode(bytearray(codec.heartbeat_reply(ping) or b""))
    assert pong is not None and pong.request_id == 3 and codec.heartbeat_reply(pong) is None
    moved = codec.decode(bytearray(codec.rewrite_request_id(req, 77)))
    assert moved is not None and moved.request_id == 77


def test_bad_input_raises_codec_error() -> None:
    with pytest.raises(CodecError, match="magic"):
        KvRpcCodec().decode(bytearray(b"XX" + bytes(20)))
    with pytest.raises(CodecError, match="exceeds"):
        KvRpcCodec(max_frame_size=100).decode(bytearray(build_frame(1, 1, {}, bytes(200))))
    broken = bytearray(build_frame(1, 1, {"k": "v"}, b""))
    broken[15] = 200  # key length runs past the block
    msg = KvRpcCodec().decode(broken)
    assert msg is not None
    with pytest.raises(CodecError):
        _ = msg.metadata


@given(st.binary(max_size=64))
def test_random_bytes_only_raise_codec_error(data: bytes) -> None:
    codec = KvRpcCodec()
    buf = bytearray(data)
    try:
        while (m := codec.decode(buf)) is not None:
            _ = m.metadata
    except CodecError:
        pass


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        codec = KvRpcCodec()
        buf = bytearray()
        while data := self.request.recv(4096):
            buf += data
            while (m := codec.decode(buf)) is not None:
                body = f"{m.metadata.get('method')}:{m.metadata.get('tenant', '-')}".encode()
                self.request.sendall(build_frame(2, m.request_id or 0, {}, body))


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[0], srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _call(sock: socket.socket, rid: int, method: str) -> tuple[int, bytes, int]:
    sock.sendall(build_frame(1, rid, {"method": method}, b""))
    codec, buf = KvRpcCodec(), bytearray()
    while (m := codec.decode(buf)) is None:
        buf += sock.recv(4096)
    return m.request_id or 0, m.frame[m.header_size :], int(m.status)


def test_live_round_trip_through_the_codec(server: tuple[str, int]) -> None:
    def policy(m: Message) -> Mutation | LocalError | None:
        if m.metadata["method"] == "forbidden":
            return LocalError(ErrorKind.UNAUTHORIZED, "not allowed")
        return {"tenant": "blue"}

    with Relay(KvRpcCodec, server, on_request=policy) as relay:
        with socket.create_connection(("127.0.0.1", relay.port)) as sock:
            assert _call(sock, 5, "get") == (5, b"get:blue", 0)
            assert _call(sock, 6, "forbidden") == (6, b"not allowed", 1)
            assert _call(sock, 7, "put") == (7, b"put:blue", 0)
        assert [m.metadata["method"] for m in relay.requests] == ["get", "forbidden", "put"]
