"""runtime.protocols.cork: a drained client's last reply and the FIN leave in one segment.

On a real loopback TCP pair under uvloop: what is written after ``cork`` stays in the kernel
until ``write_eof``, then the peer's first read that returns it is followed by end-of-file at
once (non-blocking), so a client that has the reply cannot miss the FIN.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvloop

from metamesh.runtime.protocols import cork


class _Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport


def _server_side_corked_write_then_eof() -> tuple[bytes, bytes, bytes]:
    async def main() -> tuple[bytes, bytes, bytes]:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[_Sink] = loop.create_future()

        def factory() -> _Sink:
            sink = _Sink()
            loop.call_soon(accepted.set_result, sink)
            return sink

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        client.setblocking(False)
        try:
            sink = await accepted
            cork(sink.transport)
            sink.transport.write(b"reply")
            await asyncio.sleep(0.05)
            try:
                held = client.recv(100)
            except BlockingIOError:
                held = b""
            sink.transport.write_eof()
            await asyncio.sleep(0.05)
            reply = client.recv(100)
            eof = client.recv(100)  # non-blocking: raises if the FIN were still to come
            return held, reply, eof
        finally:
            client.close()
            server.close()
            await server.wait_closed()

    return uvloop.run(main())


def test_the_corked_reply_waits_for_the_fin_and_arrives_with_it() -> None:
    held, reply, eof = _server_side_corked_write_then_eof()
    assert held == b""  # corked: nothing sent before the shutdown
    assert reply == b"reply"
    assert eof == b""


def test_cork_ignores_a_transport_without_a_tcp_socket() -> None:
    class NoSocket:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return default

    class UnixSocket:
        def __init__(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return self.sock if name == "socket" else default

    cork(NoSocket())
    unix = UnixSocket()
    try:
        cork(unix)  # EOPNOTSUPP swallowed: nothing to cork
    finally:
        unix.sock.close()
