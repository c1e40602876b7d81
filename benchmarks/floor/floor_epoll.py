"""floor-epoll: the featureless forwarder of ``floor_py.py`` without asyncio, on raw epoll.

Asks one question: is uvloop's per-read machinery (a libuv callback, a Cython layer, a
``data_received`` call per readable socket, a ``transport.write`` per reply) what a Python proxy
pays above the kernel at one request in flight per connection, or is it the Python side of
every read and write whatever loop drives them? Same job and syscall pattern as ``floor.c``:
``select.epoll.poll()`` once per turn, ``os.read`` once per readable socket, frames cut and ids
rewritten as in ``floor_py.py``, then ``os.write`` once per socket with output. A short write
arms ``EPOLLOUT`` and the rest goes out when the socket has room. The benchmark target compiles
it with mypyc, as it does ``floor_py.py``.

Run: ``python benchmarks/floor/floor_epoll.py dubbo|thrift LISTEN_PORT UPSTREAM_PORT``.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys

_DUBBO = struct.Struct(">HBBqi")  # magic, flags, status, id, body length
_THRIFT = struct.Struct(">iIi")  # frame length, version|type, name length
_I64 = struct.Struct(">q")
_I32 = struct.Struct(">i")
_READ_SIZE = 262144
_IN = select.EPOLLIN
_IN_OUT = select.EPOLLIN | select.EPOLLOUT


class Conn:
    """One socket: a client (requests in) or the upstream (replies in)."""

    def __init__(self, sock: socket.socket, thrift: bool, upstream: Conn | None) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.fd = sock.fileno()
        self.thrift = thrift
        self.upstream = upstream
        self.out: list[bytes] = []
        self.dirty = False
        self.want_out = False  # EPOLLOUT armed: the last write was short
        self.closed = False
        self.buf = bytearray()
        self.pending: dict[int, tuple[Conn, int]] = {}  # upstream only: new id -> caller, id
        self.next_id = 1

    def feed(self, data: bytes, dirty: list[Conn]) -> None:
        """Cut the complete frames, rewrite their ids and queue them for their peer."""
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
            if not target.dirty:
                target.dirty = True
                dirty.append(target)
            pos += size
        del buf[:pos]


def serve(protocol: str, listen_port: int, upstream_port: int) -> None:
    thrift = protocol == "thrift"
    upstream = Conn(socket.create_connection(("127.0.0.1", upstream_port)), thrift, None)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen_port))
    listener.listen(1024)
    listener.setblocking(False)
    lfd = listener.fileno()
    ep = select.epoll()
    ep.register(lfd, _IN)
    ep.register(upstream.fd, _IN)
    conns: dict[int, Conn] = {upstream.fd: upstream}
    dirty: list[Conn] = []
    while True:
        for fd, events in ep.poll():
            if fd == lfd:
                with_peer = listener.accept()
                conn = Conn(with_peer[0], thrift, upstream)
                conns[conn.fd] = conn
                ep.register(conn.fd, _IN)
                continue
            found = conns.get(fd)
            if found is None:
                continue
            if events & select.EPOLLOUT:  # room again: write the rest this turn
                found.want_out = False
                ep.modify(fd, _IN)
                if not found.dirty:
                    found.dirty = True
                    dirty.append(found)
                if not events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    continue
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                if found is upstream:
                    raise SystemExit("floor-epoll: upstream closed")
                _close(ep, conns, found)
                continue
            found.feed(data, dirty)
        if dirty:
            for conn in dirty:
                conn.dirty = False
                if conn.closed or conn.want_out:
                    continue
                out = conn.out
                payload = out[0] if len(out) == 1 else b"".join(out)
                try:
                    sent = os.write(conn.fd, payload)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    _close(ep, conns, conn)
                    continue
                conn.out = [payload[sent:]] if sent < len(payload) else []
                if conn.out:
                    conn.want_out = True
                    ep.modify(conn.fd, _IN_OUT)
            dirty.clear()


def _close(ep: select.epoll, conns: dict[int, Conn], conn: Conn) -> None:
    ep.unregister(conn.fd)
    del conns[conn.fd]
    conn.closed = True
    conn.sock.close()


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("dubbo", "thrift"):
        print("usage: floor_epoll.py dubbo|thrift LISTEN_PORT UPSTREAM_PORT", file=sys.stderr)
        return 2
    serve(argv[0], int(argv[1]), int(argv[2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
