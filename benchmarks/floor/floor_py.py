"""floor-py: the cheapest Python + uvloop multiplexing forwarder, for the benchmark's floor.

Same job and syscall pattern as ``floor.c`` (see there): one shared upstream connection, fresh
upstream ids, replies mapped back to their caller, and one write per socket per loop turn
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
import struct
import sys
from typing import cast

import uvloop

_DUBBO = struct.Struct(">HBBqi")  # magic, flags, status, id, body length
_THRIFT = struct.Struct(">iIi")  # frame length, version|type, name length
_I64 = struct.Struct(">q")
_I32 = struct.Struct(">i")


class Flusher:
    """Writes every socket with output once, at the end of the loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[Conn] = []

    def mark(self, conn: Conn) -> None:
        if not conn.dirty:
            conn.dirty = True
            if not self.dirty:
                self.loop.call_soon(self.flush)
            self.dirty.append(conn)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            conn.dirty = False
            out, conn.out = conn.out, []
            conn.transport.write(out[0] if len(out) == 1 else b"".join(out))


class Conn:
    """One socket: a client (requests in) or the upstream (replies in)."""

    def __init__(self, flusher: Flusher, thrift: bool, upstream: Conn | None) -> None:
        self.flusher = flusher
        self.thrift = thrift
        self.upstream = upstream
        self.out: list[bytes] = []
        self.dirty = False
        self.buf = bytearray()
        self.pending: dict[int, tuple[Conn, int]] = {}  # upstream only: new id -> caller, id
        self.next_id = 1
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, end = 0, len(buf)
        while True:
            if self.thrift:
                if end - pos < 12:
                    break
                size, _version, name_len = _THRIFT.unpack_from(buf, pos)
                size += 4
                at = pos + 12 + name_len
                fmt = _I32
            else:
                if end - pos < 16:
                    break
                _magic, _flags, _status, _rid, body = _DUBBO.unpack_from(buf, pos)
                size, at, fmt = 16 + body, pos + 4, _I64
            if end - pos < size:
                break
            rid = fmt.unpack_from(buf, at)[0]
            up = self.upstream
            if up is not None:  # a request: give it a fresh upstream id
                new = up.next_id
                up.next_id = new + 1 if new < 0x7FFFFFFF else 1
                up.pending[new] = (self, rid)
                target = up
            else:  # a reply: back to its caller, with its own id
                target, new = self.pending.pop(rid)
            fmt.pack_into(buf, at, new)
            target.out.append(bytes(buf[pos : pos + size]))
            self.flusher.mark(target)
            pos += size
        del buf[:pos]


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
