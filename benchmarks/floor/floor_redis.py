"""floor-redis: the cheapest Python + uvloop Redis forwarder, for the Redis benchmark's floor.

It copies bytes and does nothing else: each client connection gets an upstream connection of
its own to the backend, and whatever one side sends is written to the other as it arrives
(``transport.write`` inside ``data_received``: one read and one write per burst each way, the
least a user-space proxy can do). No parsing, routing, shared connections, stats, timeouts or
error handling. Measured with the same ``redis-benchmark`` shapes as metamesh and Envoy
(``benchmarks/redis_compare.py --floor``), its CPU per request is what the kernel's loopback
path and the event loop cost a proxy written on uvloop before any feature; what metamesh costs
above it is the proxy's own work. It runs as plain Python: per event it runs two short callbacks,
so compiling it would change little (the floors of ``floor_py.py`` are compiled because they
parse frames).

Run: ``python benchmarks/floor/floor_redis.py LISTEN_HOST LISTEN_PORT UPSTREAM_PORT``
(the upstream on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop


class Upstream(asyncio.Protocol):
    """The backend side of one client: replies go straight to the client."""

    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class Client(asyncio.Protocol):
    """One client: requests go straight to its upstream (buffered until it is connected)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's, not a subclass)
        asyncio.get_running_loop().create_task(self._connect(self.transport))

    async def _connect(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        upstream, _ = await loop.create_connection(
            lambda: Upstream(transport), "127.0.0.1", self.upstream_port
        )
        self.upstream = upstream
        if self.early:
            upstream.write(b"".join(self.early))
            self.early = []

    def data_received(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def serve(host: str, port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(upstream_port), host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    host, port, upstream_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    uvloop.run(serve(host, port, upstream_port))


if __name__ == "__main__":
    main()
