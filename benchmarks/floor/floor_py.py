"""floor-py: the cheapest Python + uvloop multiplexing forwarder, for the benchmark's floor.

Same job and syscall pattern as ``floor.c`` (see there), with the framing and id mapping of
``floor_frames.py``: one shared upstream connection, upstream ids (the caller's own while
free), replies mapped back to their caller, and one write per socket per loop turn
(``call_soon`` on the first frame of a turn). No routing, stats, timeouts or error handling;
a malformed frame raises. It measures what the event loop and the interpreter cost before any
feature, so that metamesh's per-request cost can be split into kernel, loop and features.

The benchmark target compiles it with mypyc first, as metamesh's native build is compiled, so
the comparison is feature cost, not compiled vs interpreted: like metamesh's socket adapters,
:class:`Conn` is a plain class (uvloop only calls its methods), which mypyc compiles natively.

Run: ``python benchmarks/floor/floor_py.py dubbo|thrift LISTEN_PORT UPSTREAM_PORT`` (127.0.0.1).
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop
from floor_frames import Peer


class Flusher:
    """Writes every socket with output once, at the end of the loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[Conn] = []

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            conn.dirty = False
            out, conn.out = conn.out, []
            conn.transport.write(out[0] if len(out) == 1 else b"".join(out))


class Conn(Peer):
    """One socket on uvloop: a client (requests in) or the upstream (replies in)."""

    def __init__(self, flusher: Flusher, thrift: bool, upstream: Conn | None) -> None:
        super().__init__(thrift, upstream)
        self.flusher = flusher
        self.transport: asyncio.Transport

    def mark(self, target: Peer) -> None:
        assert isinstance(target, Conn)
        target.dirty = True
        flusher = self.flusher
        if not flusher.dirty:
            flusher.loop.call_soon(flusher.flush)
        flusher.dirty.append(target)

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self.feed(data)


async def serve(protocol: str, listen_port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    flusher = Flusher(loop)
    thrift = protocol == "thrift"
    upstream = Conn(flusher, thrift, None)
    await loop.create_connection(
        lambda: cast(asyncio.Protocol, upstream), "127.0.0.1", upstream_port
    )

    def accept() -> asyncio.Protocol:
        return cast(asyncio.Protocol, Conn(flusher, thrift, upstream))

    server = await loop.create_server(accept, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("dubbo", "thrift"):
        print("usage: floor_py.py dubbo|thrift LISTEN_PORT UPSTREAM_PORT", file=sys.stderr)
        return 2
    uvloop.run(serve(argv[0], int(argv[1]), int(argv[2])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
