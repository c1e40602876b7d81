"""A tiny real KV-RPC upstream for runtime tests (asyncio, 127.0.0.1, ephemeral port).

It answers each call with ``<name>:<body>`` and echoes the request headers, answers pings,
counts accepted connections, and can hold replies until released (for drain tests).
"""

from __future__ import annotations

import asyncio

from examples.kvrpc.kvrpc_codec import KvRpcCodec, build_frame
from metamesh.codecs import MessageType


class KvServer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.connections = 0
        self.requests = 0
        self.oneways: list[bytes] = []
        self.hold = False
        self.held: list[tuple[asyncio.Transport, bytes]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> KvServer:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def release(self) -> None:
        for transport, data in self.held:
            if not transport.is_closing():
                transport.write(data)
        self.held.clear()
        self.hold = False

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


class _Conn(asyncio.Protocol):
    def __init__(self, owner: KvServer) -> None:
        self.owner = owner
        self.codec = KvRpcCodec()
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.owner.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = bytearray()
        while (msg := self.codec.decode(self.buf)) is not None:
            body = msg.frame[msg.header_size :]
            if msg.type is MessageType.HEARTBEAT:
                out += self.codec.heartbeat_reply(msg) or b""
            elif msg.type is MessageType.ONEWAY:
                self.owner.oneways.append(body)
            else:
                self.owner.requests += 1
                headers = {**msg.metadata, "server": self.owner.name}
                reply_body = self.owner.name.encode() + b":" + body
                out += build_frame(2, msg.request_id or 0, headers, reply_body)
        if out and self.transport is not None:
            if self.owner.hold:
                self.owner.held.append((self.transport, bytes(out)))
            else:
                self.transport.write(bytes(out))
