"""The hot half of the runtime: socket adapters and the per-turn clock and flush.

Everything here runs once per socket event or once per loop turn, so it is compiled with the
proxy core in the native build (see ``setup.py``) and kept to plain attribute work:

* :class:`DownstreamProtocol` and :class:`UpstreamProtocol` translate transport callbacks into
  core events with the turn's ``now``. They are plain classes, not ``asyncio.Protocol``
  subclasses (an event loop only calls the methods, and compiled classes cannot derive from
  a Python class). They own backpressure, uvicorn-style: a client that does not read its
  replies gets its own reading paused (``pause_writing`` on its transport), and an upstream
  whose write buffer fills pauses reading from every client until it drains, since any client
  may be feeding it. A mirror's connection (which carries only request copies) never pauses
  clients: while it is congested the core drops further copies for it instead. A client that
  stays behind is closed (socket aborted, the core counts and logs it): paused for longer than
  ``ConnectionLimits.unread_timeout`` (one ``call_later`` armed while paused), or about to
  queue more than ``max_unread_bytes`` while paused (checked by the flush only for a paused
  client, so a reply to a client that keeps up is never cut, whatever its size).
* :class:`Turn` reads the loop clock once per turn and, on the first event of a turn, schedules
  :meth:`Turn.flush` with ``call_soon``. The flush writes each dirty peer once: its ``out`` list
  of frames goes to the transport as the frame itself when there is one (a forwarded frame is
  the ``bytes`` object decoded from the socket, so nothing is copied) or joined once otherwise;
  ``bytes`` also spares uvloop the memoryview it makes of anything else. It then hands the
  core's control actions to the server and keeps a single ``call_at`` armed for the core's
  earliest deadline (re-armed only when an earlier one appears). While draining, a client
  the flush closes has its last reply corked (:func:`cork`), so the FIN travels with it.

Writes never happen in the adapters: they only feed the core; the flush writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from metamesh.proxy.connection import CLOSE_DOWNSTREAM, ConnectionManager, Downstream
from metamesh.proxy.upstream import Upstream

if TYPE_CHECKING:
    from metamesh.runtime.server import ProxyServer


#: ``TCP_CORK`` (Linux): while set, written data waits in the kernel for more.
_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)


def _drain_closes(core: ConnectionManager) -> set[int]:
    """The ids of the clients this flush closes for a drain (after writing their last replies)."""
    return {id(a[1]) for a in core.actions if a[0] == CLOSE_DOWNSTREAM}


def cork(transport: Any) -> None:
    """Hold what is written next to ``transport``'s socket until its FIN, so both leave in one
    segment.

    A drained client is closed right after its last reply. Written apart, the reply and the FIN
    are two segments, and a client that reads the reply and sends its next call before the FIN
    lands (a preempted proxy, uvloop's shutdown running one loop iteration after the write)
    loses that call. Corked, Linux tacks the FIN onto the queued reply (``tcp_send_fin``) and
    sends them together at the shutdown: whoever sees the reply sees the FIN with it. Only a
    draining client's last write is corked; elsewhere (no ``TCP_CORK``, not TCP) this does
    nothing.
    """
    sock = transport.get_extra_info("socket")
    if sock is None or _TCP_CORK is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)


class Turn:
    """One loop turn's clock and end-of-turn flush for ``core``; see the module docstring."""

    def __init__(
        self,
        core: ConnectionManager,
        loop: asyncio.AbstractEventLoop,
        execute: Callable[[tuple[Any, ...]], None],
    ) -> None:
        self.core = core
        self.loop = loop
        self._time = loop.time
        self._call_soon = loop.call_soon
        self._execute = execute
        self._now = 0.0
        self._have_now = False
        self._scheduled = False
        self._flush_cb: Callable[[], None] = self.flush  # one bound method, made once
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = 0.0  # meaningful only while _deadline_timer is set

    def now(self) -> float:
        """The loop time of this turn (read once, reset by the end-of-turn flush)."""
        if self._have_now:
            return self._now
        now = self._now = self._time()
        self._have_now = True
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self._flush_cb)
        return now

    def flush(self) -> None:
        """Write every dirty peer's output once, then execute the core's actions."""
        self._scheduled = False
        self._have_now = False
        core = self.core
        dirty = core.dirty
        if dirty:
            core.dirty = []
            ending = _drain_closes(core) if core.draining and core.actions else None
            for peer in dirty:
                peer.dirty = False
                handle = peer.handle
                if handle is None:  # not connected (yet): the frames wait in ``out``
                    continue
                transport: asyncio.Transport | None = handle.transport
                out = peer.out
                if transport is None or not out:
                    continue
                peer.out = []
                data = out[0] if len(out) == 1 else b"".join(out)
                if handle.behind and handle.over_unread_cap(len(data)):
                    continue  # closed: the client was behind and would pass the cap
                if ending and id(peer) in ending:
                    cork(transport)
                transport.write(data)
        if core.actions:
            for action in core.take_actions():
                self._execute(action)
        deadline = core.deadlines.next_deadline()
        if deadline is not None and (self._deadline_timer is None or deadline < self._deadline_at):
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_at = when
        self._deadline_timer = self.loop.call_at(when, self._on_deadline)

    def _on_deadline(self) -> None:
        self._deadline_timer = None
        self.core.on_timer(self.now())  # now() schedules the flush, which re-arms the timer

    def cancel(self) -> None:
        """Disarm the deadline timer (the server is closing)."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None


class DownstreamProtocol:
    """One accepted client connection."""

    def __init__(self, server: ProxyServer, turn: Turn, listener_name: str) -> None:
        self.server = server
        self.turn = turn
        self.core = turn.core
        self.listener_name = listener_name
        self.transport: asyncio.Transport | None = None
        self.conn: Downstream | None = None
        self.paused_by_self = False
        #: Paused because the client does not read (the flush checks the unread cap then).
        self.behind = False
        self._unread_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = tr
        server = self.server
        tr.set_write_buffer_limits(server.high_water, server.low_water)
        peer = tr.get_extra_info("peername")
        principal = tr.get_extra_info("peer_principal")  # set by runtime/tls.py's transport
        conn = self.core.downstream_connected(
            self.listener_name,
            f"{peer[0]}:{peer[1]}" if peer else "",
            self.turn.now(),
            principal if principal else "",
        )
        conn.handle = self
        self.conn = conn
        server.readers.add(self)
        if server.upstream_congested:
            tr.pause_reading()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None:
            self.core.downstream_data(conn, data, self.turn.now())

    def eof_received(self) -> bool | None:
        conn = self.conn
        if conn is None or conn.closed:
            return None  # close our side too (the end of a drain's lingering close)
        # Keep our side open: the core answers what is in flight, then closes (CLOSE_DOWNSTREAM).
        self.core.downstream_eof(conn, self.turn.now())
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.readers.discard(self)
        self._stop_unread_timer()
        if self.conn is not None:
            self.core.downstream_closed(self.conn, self.turn.now())
        self.transport = None

    def pause_writing(self) -> None:
        self.paused_by_self = self.behind = True
        if self.transport is not None:
            self.transport.pause_reading()
            timeout = self.core.limits.unread_timeout
            if timeout > 0 and self._unread_timer is None:
                self._unread_timer = self.turn.loop.call_later(timeout, self._unread_too_long)

    def resume_writing(self) -> None:
        self.paused_by_self = self.behind = False
        self._stop_unread_timer()
        if self.transport is not None and not self.server.upstream_congested:
            self.transport.resume_reading()

    def _stop_unread_timer(self) -> None:
        if self._unread_timer is not None:
            self._unread_timer.cancel()
            self._unread_timer = None

    def _unread_too_long(self) -> None:
        self._unread_timer = None
        timeout = self.core.limits.unread_timeout
        self.turn.now()  # schedules the flush that executes the core's close and log line
        self.close_unread(f"not reading for {timeout:g} s")

    def over_unread_cap(self, adding: int) -> bool:
        """True (and the client closed) if ``adding`` bytes would put it past the unread cap."""
        cap = self.core.limits.max_unread_bytes
        tr = self.transport
        if cap <= 0 or tr is None:
            return False
        queued = tr.get_write_buffer_size() + adding
        if queued <= cap:
            return False
        self.close_unread(f"over the {cap}-byte cap for a client that is behind")
        return True

    def close_unread(self, why: str) -> None:
        """Close a client that does not read its replies: the core counts and logs it, and
        the socket is aborted (a plain close would wait for replies that never drain)."""
        conn, tr = self.conn, self.transport
        self.behind = False
        self._stop_unread_timer()
        if conn is None or tr is None:
            return
        self.core.downstream_unread(conn, tr.get_write_buffer_size(), why)
        tr.abort()


class UpstreamProtocol:
    """One connection to an upstream endpoint."""

    def __init__(self, server: ProxyServer, turn: Turn, up: Upstream) -> None:
        self.server = server
        self.turn = turn
        self.core = turn.core
        self.up = up
        self.transport: asyncio.Transport | None = None
        self.congested = False
        #: Never set: the flush's unread-reply check is for clients only.
        self.behind = False
        #: ISTIO_MUTUAL and the peer had no mesh identity: never connected to the core.
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = tr
        server = self.server
        tr.set_write_buffer_limits(server.high_water, server.low_water)
        up = self.up
        config = up.cluster.config
        if config.tls_for(up.endpoint) and not server.upstream_identity_ok(tr, config):
            self.refused = True  # before anything is sent; the server reports the failed connect
            return
        up.handle = self
        self.core.upstream_connected(up, self.turn.now())

    def data_received(self, data: bytes) -> None:
        self.core.upstream_data(self.up, data, self.turn.now())

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.congested:
            self.resume_writing()
        if not self.refused:
            self.core.upstream_closed(self.up, self.turn.now())
        self.transport = None

    def pause_writing(self) -> None:
        if not self.congested:
            self.congested = self.up.congested = True
            if not self.up.mirror:  # a mirror's copies are dropped instead (core._mirror)
                self.server.set_upstream_congested(+1)

    def resume_writing(self) -> None:
        if self.congested:
            self.congested = self.up.congested = False
            if not self.up.mirror:
                self.server.set_upstream_congested(-1)
