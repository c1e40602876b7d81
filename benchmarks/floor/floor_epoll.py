"""floor-epoll: the featureless forwarder of ``floor_py.py`` without asyncio, on raw epoll.

Asks one question: is uvloop's per-read machinery (a libuv callback, a Cython layer, a
``data_received`` call per readable socket, a ``transport.write`` per reply) what a Python proxy
pays above the kernel at one request in flight per connection, or is it the Python side of
every read and write whatever loop drives them? Same job and syscall pattern as ``floor.c``:
``select.epoll.poll()`` once per turn, ``os.read`` once per readable socket, frames cut and ids
rewritten by ``floor_frames.Peer`` as in ``floor_py.py``, then ``os.write`` once per socket
with output. A short write arms ``EPOLLOUT`` and the rest goes out when the socket has room.
The benchmark target compiles it with mypyc, as it does ``floor_py.py``.

Run: ``python benchmarks/floor/floor_epoll.py dubbo|thrift LISTEN_PORT UPSTREAM_PORT``.
"""

from __future__ import annotations

import os
import select
import socket
import sys

from floor_frames import Peer

_READ_SIZE = 262144
_IN = select.EPOLLIN
_IN_OUT = select.EPOLLIN | select.EPOLLOUT


class Conn(Peer):
    """One socket: a client (requests in) or the upstream (replies in)."""

    def __init__(
        self, sock: socket.socket, thrift: bool, upstream: Conn | None, dirty: list[Conn]
    ) -> None:
        super().__init__(thrift, upstream)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.fd = sock.fileno()
        self.dirty_list = dirty  # the loop's: peers to write at the end of this turn
        self.want_out = False  # EPOLLOUT armed: the last write was short
        self.closed = False

    def mark(self, target: Peer) -> None:
        assert isinstance(target, Conn)
        target.dirty = True
        self.dirty_list.append(target)


def serve(protocol: str, listen_port: int, upstream_port: int) -> None:
    thrift = protocol == "thrift"
    dirty: list[Conn] = []
    upstream = Conn(socket.create_connection(("127.0.0.1", upstream_port)), thrift, None, dirty)
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
    while True:
        for fd, events in ep.poll():
            if fd == lfd:
                with_peer = listener.accept()
                conn = Conn(with_peer[0], thrift, upstream, dirty)
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
            found.feed(data)
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
