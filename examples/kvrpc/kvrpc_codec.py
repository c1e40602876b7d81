"""KV-RPC: a tiny request/response protocol, and the metamesh codec for it.

This file is the worked example of teaching metamesh a new protocol. KV-RPC is made up for the
example, but it has what real RPC protocols have: a request id, string headers to route on, an
opaque body, one-way calls and a ping. Every frame is a fixed 14-byte header, the headers, then
the body (all integers big-endian):

    0  magic  b"KV"        2  type u8 (1 call, 2 reply, 3 oneway, 4 ping, 5 pong)
    3  status u8 (0 ok, 1 error)      4  request id u32
    8  header block length u16       10  body length u32
    14 headers: repeated (key length u8, key, value length u16, value), UTF-8
       body

The codec is the whole integration: it frames bytes into ``Message`` objects whose metadata is
the header map, re-encodes the header block for a mutation, writes error replies as ``status=1``
replies whose body is the message, and answers pings. Register it with
``register_codec("kvrpc", KvRpcCodec)`` or, from an installed package, with an entry point in the
``metamesh.codecs`` group (see README.md beside this file).
"""

from __future__ import annotations

import struct

from metamesh.codecs import (
    Codec,
    CodecError,
    FrameTooLargeError,
    LocalError,
    Message,
    MessageType,
    Mutation,
    ResponseStatus,
)

MAGIC = b"KV"
HEADER = struct.Struct(">2sBBIHI")
_TYPES = {
    1: MessageType.REQUEST,
    2: MessageType.RESPONSE,
    3: MessageType.ONEWAY,
    4: MessageType.HEARTBEAT,
    5: MessageType.HEARTBEAT,
}
_WIRE_TYPE = {MessageType.REQUEST: 1, MessageType.RESPONSE: 2, MessageType.ONEWAY: 3}


def encode_headers(headers: dict[str, str]) -> bytes:
    out = bytearray()
    for key, value in headers.items():
        k, v = key.encode(), value.encode()
        if len(k) > 0xFF or len(v) > 0xFFFF:
            raise ValueError(f"header {key!r} too long for KV-RPC")
        out += bytes([len(k)]) + k + len(v).to_bytes(2, "big") + v
    return bytes(out)


def decode_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    pos = 0
    try:
        while pos < len(block):
            klen = block[pos]
            key = block[pos + 1 : pos + 1 + klen].decode()
            pos += 1 + klen
            if pos + 2 > len(block):
                raise CodecError("KV-RPC header runs past the header block")
            vlen = int.from_bytes(block[pos : pos + 2], "big")
            if pos + 2 + vlen > len(block):
                raise CodecError("KV-RPC header runs past the header block")
            headers[key] = block[pos + 2 : pos + 2 + vlen].decode()
            pos += 2 + vlen
    except (IndexError, UnicodeDecodeError) as e:
        raise CodecError(f"KV-RPC header block is malformed: {e}") from None
    return headers


def build_frame(
    wire_type: int, request_id: int, headers: dict[str, str], body: bytes, status: int = 0
) -> bytes:
    """Serialize one KV-RPC frame (used by clients, servers and the codec)."""
    block = encode_headers(headers)
    return HEADER.pack(MAGIC, wire_type, status, request_id, len(block), len(body)) + block + body


class KvRpcCodec(Codec):
    """metamesh codec for KV-RPC: one instance per connection direction."""

    name = "kvrpc"
    request_id_bits = 32

    def decode(self, buffer: bytearray) -> Message | None:
        if len(buffer) < HEADER.size:
            return None
        magic, wire_type, status, rid, hlen, blen = HEADER.unpack_from(buffer)
        if magic != MAGIC:
            raise CodecError(f"not a KV-RPC frame: magic {bytes(magic)!r}")
        if wire_type not in _TYPES:
            raise CodecError(f"unknown KV-RPC frame type {wire_type}")
        total = HEADER.size + hlen + blen
        if total > self.max_frame_size:
            raise FrameTooLargeError(f"KV-RPC frame of {total} bytes exceeds {self.max_frame_size}")
        if len(buffer) < total:
            return None
        frame = bytes(buffer[:total])
        del buffer[:total]
        return Message(
            _TYPES[wire_type],
            rid,
            frame,
            HEADER.size + hlen,
            blen,
            status=ResponseStatus.ERROR if status else ResponseStatus.OK,
            codec_state=wire_type,
            loader=lambda m: decode_headers(m.frame[HEADER.size : m.header_size]),
        )

    def encode(self, message: Message, mutation: Mutation | None = None) -> bytes:
        if not mutation:
            return message.frame
        headers = {**message.metadata, **mutation}
        body = message.frame[message.header_size :]
        status = 1 if message.status is not ResponseStatus.OK else 0
        return build_frame(message.codec_state, message.request_id or 0, headers, body, status)

    def error_reply(self, request: Message, error: LocalError) -> bytes:
        headers = {"error": error.kind.value}
        return build_frame(2, request.request_id or 0, headers, error.message.encode(), status=1)

    def heartbeat_reply(self, message: Message) -> bytes | None:
        if message.codec_state != 4:  # only pings get an answer
            return None
        return build_frame(5, message.request_id or 0, {}, b"")

    def rewrite_request_id(self, message: Message, request_id: int) -> bytes:
        return message.frame[:4] + request_id.to_bytes(4, "big") + message.frame[8:]
