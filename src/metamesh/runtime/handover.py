"""``--worker-accept handover``: worker 0 accepts every connection and hands it to a worker.

The alternative to ``SO_REUSEPORT`` (docs/workers.md). Worker 0 alone binds each listener; when
its listening socket is readable, :class:`HandOverListener` accepts what is queued and deals the
new connections round robin over worker 0 itself and the live workers: worker 0 serves its own
turn on its loop (``connect_accepted_socket``), and for the others it sends the socket over the
worker's datagram socketpair with ``SCM_RIGHTS`` (``socket.send_fds``, the listener's name as
the datagram) and closes its copy. The worker (:func:`receive_handed_over`) wraps each socket it
receives in a transport of the named listener. Nothing is read before the hand-over, so the
client's bytes all reach the worker that serves it.

What it buys: an even spread of connections (by count, not by a hash), which matters when a
few long-lived connections carry the load. What it costs: worker 0 makes an ``accept`` and a
``sendmsg`` for every connection, and a worker that is restarting gets none meanwhile. A worker
whose socketpair is full or gone leaves the connection to worker 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from metamesh.runtime.fd_limits import PAUSED

if TYPE_CHECKING:
    from metamesh.runtime.server import ProxyServer

log = logging.getLogger("metamesh.workers")

#: Connections accepted per readable event before yielding to the loop.
ACCEPT_BATCH = 64


class HandOverListener:
    """One listener of worker 0 in hand-over mode; closes like an ``asyncio.Server``."""

    def __init__(
        self,
        server: ProxyServer,
        name: str,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        targets: Callable[[], list[socket.socket | None]],
    ) -> None:
        self.server = server
        self.name = name
        self.sockets = (sock,)
        self._factory = factory
        self._targets = targets  # None: worker 0 itself; a socket: a worker's fd channel
        self._next = 0
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self._closed = False
        self._paused = False

    def set_mode(self, mode: str) -> None:
        """Follow the descriptor guard (runtime/fd_limits.py): read the listening socket
        unless accepting is paused (connections then wait in the listen backlog). This loop
        sees EMFILE itself, so its fast and careful modes are the same."""
        paused = mode == PAUSED
        if paused != self._paused and not self._closed:
            self._paused = paused
            if paused:
                self._loop.remove_reader(self.sockets[0].fileno())
            else:
                self._loop.add_reader(self.sockets[0].fileno(), self._on_readable)

    def _on_readable(self) -> None:
        sock = self.sockets[0]
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.server.accept_failed(exc)  # counted, logged, accepting paused
                    return
                log.debug("listener %s: accept failed: %s", self.name, exc)
                continue  # ECONNABORTED and the like: that client only
            self._deal(conn)

    def _deal(self, conn: socket.socket) -> None:
        targets = self._targets()
        self._next = (self._next + 1) % len(targets)
        target = targets[self._next]
        if target is not None:
            try:
                socket.send_fds(target, [self.name.encode()], [conn.fileno()])
            except OSError:  # the worker's channel is full or gone: served here instead
                pass
            else:
                conn.close()
                return
        conn.setblocking(False)
        self.server.spawn_task(self._loop.connect_accepted_socket(self._factory, conn))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if not self._paused:
                self._loop.remove_reader(self.sockets[0].fileno())
            self.sockets[0].close()

    async def wait_closed(self) -> None:
        return None


def listen_socket(address: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket (``SO_REUSEADDR``, as ``create_server`` makes)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(4096)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def receive_handed_over(server: ProxyServer, channel: socket.socket) -> Callable[[], None]:
    """Serve the connections worker 0 sends on ``channel``; returns the function that stops."""
    loop = asyncio.get_running_loop()
    channel.setblocking(False)

    def on_readable() -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                data, fds, flags, _ = socket.recv_fds(channel, 1024, 4)
            except BlockingIOError:
                return
            except OSError:
                stop()
                return
            if not data and not fds:  # worker 0's end is closed
                stop()
                return
            if flags & socket.MSG_CTRUNC and not fds:  # no descriptor left here for it
                server.accept_failed(OSError(errno.EMFILE, "Too many open files (hand-over)"))
                continue
            name = data.decode(errors="replace")
            for fd in fds:
                _serve(server, loop, name, socket.socket(fileno=fd))

    def stop() -> None:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(channel.fileno())

    loop.add_reader(channel.fileno(), on_readable)
    return stop


def _serve(server: ProxyServer, loop: Any, name: str, conn: socket.socket) -> None:
    if server.draining or name not in server.core.listeners:
        conn.close()  # the listener is gone here (a config change raced the hand-over)
        return
    conn.setblocking(False)
    server.spawn_task(loop.connect_accepted_socket(server.protocol_factory(name), conn))
