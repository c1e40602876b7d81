"""The client side of the core: accept, decode loop, heartbeats, close (sans-IO).

:meth:`DownstreamSide.downstream_data` appends bytes to the client's buffer and decodes every
complete frame (with nothing buffered, whole frames are taken straight from the bytes read and
only a trailing part is buffered: see ``Codec.decode_at``): requests go to the request path,
heartbeats are answered locally, anything else is counted and dropped. A frame the codec
rejects or one over ``max_frame_size`` closes that client only.

A client that ends its sending side (EOF, :meth:`DownstreamSide.downstream_eof`) sends no more
requests but still gets the replies it is owed: each client counts its two-way requests not
answered yet (``owed``: up when one is decoded, down when its reply, forwarded or local, is
queued), and the connection is closed once that count is back to zero, at once if it already
is. Aeraki's proxy aborts requests in flight on a client's half-close; here they are lost only
if the client really went away (reset, or closed by us), which abandons its requests in flight
and its dedicated (pipelined) upstream connections. A client that leaves mid-frame is counted as
truncated either way.

A listener's ``idle_timeout`` closes a client that has had nothing in flight for that long:
``idle_since`` restarts when the last reply owed is queued (and on a one-way call), and
:meth:`DownstreamSide.on_timer` sweeps the clients a few times per timeout (every quarter of the
shortest one, 50 ms to 1 s apart), so the request path pays one store per reply, not a timer.
"""

from __future__ import annotations

from typing import Final

from metamesh.codecs import (
    CodecError,
    FrameTooLargeError,
    Message,
)
from metamesh.proxy.client_cap import ListenerClients
from metamesh.proxy.core import (
    _HEARTBEAT,
    _ONEWAY,
    _REQUEST,
    CLOSE_DOWNSTREAM,
    INFO,
    LOG,
    WARNING,
)
from metamesh.proxy.exchange import MAX_ORIGINS
from metamesh.proxy.listener import Downstream
from metamesh.proxy.request_path import UNKNOWN, frame_hint
from metamesh.proxy.runs import Runs
from metamesh.proxy.telemetry import principal_workload
from metamesh.proxy.tracing import MARKER

#: Seconds between two log lines about the connection cap (the counters count every case).
CX_LIMIT_LOG_EVERY: Final = 10.0


class DownstreamSide(Runs):
    """Client connections: accept, decode loop, heartbeats, close and truncation."""

    #: Each listener's open clients and cap counters, by listener name (set by the manager).
    listener_clients: dict[str, ListenerClients]

    def downstream_connected(
        self, listener_name: str, peer: str = "", now: float = 0.0, principal: str = ""
    ) -> Downstream:
        self._next_conn_id += 1
        d = Downstream(self._next_conn_id, self.listeners[listener_name], peer, now, principal)
        inbound = self._set_origin(d, principal_workload(principal))
        d.hear = inbound and len(self.stats.origins) < MAX_ORIGINS
        self.downstreams.add(d)
        self.stats.downstream_connections_total += 1
        self.stats.active_downstream_connections += 1
        clients = self.listener_clients.get(listener_name)
        if clients is None:
            clients = self.listener_clients[listener_name] = ListenerClients()
        clients.add(d)
        cap = d.listener.config.max_connections
        if cap and clients.count > cap:
            self._make_room(d, clients, f"listener {listener_name}'s cap of {cap}", now, True)
        else:
            cap = self.limits.max_downstreams
            if cap and len(self.downstreams) > cap:
                self._make_room(d, clients, f"the cap of {cap}", now, False)
        return d

    def _make_room(
        self,
        new: Downstream,
        clients: ListenerClients,
        cap: str,
        now: float,
        per_listener: bool,
    ) -> None:
        """Over a connection cap: close the client idle longest (of ``new``'s listener, whose
        ``clients`` they are, when the cap is the listener's; else of any listener), else refuse
        ``new`` (see :mod:`.client_cap`)."""
        if per_listener:
            oldest = clients.longest_idle(new)
        else:
            oldest = None
            for pool in self.listener_clients.values():
                d = pool.longest_idle(new)
                if d is not None and (oldest is None or d.idle_since < oldest.idle_since):
                    oldest = d
        if oldest is not None:
            self.stats.downstream_cx_evicted += 1
            self.listener_clients[oldest.listener.config.name].evicted += 1
            victim, what = oldest, "closing the client idle longest"
        else:
            self.stats.downstream_cx_overflow += 1
            clients.refused += 1
            victim, what = new, "refusing a new client (none is idle)"
        self.actions.append((CLOSE_DOWNSTREAM, victim))
        self._forget_downstream(victim)
        if now - self.cx_limit_logged_at >= CX_LIMIT_LOG_EVERY:
            self.cx_limit_logged_at = now
            stats = self.stats
            self.actions.append(
                (
                    LOG,
                    WARNING,
                    f"at {cap} client connections: {what} "
                    f"({stats.downstream_cx_evicted} evicted, {stats.downstream_cx_overflow} "
                    f"refused so far; logged once per {CX_LIMIT_LOG_EVERY:.0f} s)",
                )
            )

    def downstream_data(self, d: Downstream, data: bytes, now: float) -> None:
        if d.closed:
            return
        d.bytes_in += len(data)
        buf = d.inbuf
        codec = d.codec
        if not buf:  # whole frames straight from the bytes read (Codec.decode_at)
            pos = 0
            if codec.takes_runs and self.tracer is None and not self.access_log and not d.hear:
                pos = self._forward_runs(d, data, now)  # runs of pipelined requests
                if d.closed:
                    return
            end = len(data)
            # tracing: where the read's last trace marker starts (-1: none), searched once for
            # a read of several frames (see RequestPath.trace_hint); -2: not searched, as for a
            # read of one frame, which the request path scans itself
            scan = self.tracer is not None and codec.carries_headers
            last = -2
            while pos < end:
                try:
                    msg = codec.decode_at(data, pos)
                except CodecError as bad:
                    self._refuse_downstream(d, bad)
                    return
                if msg is None:
                    break
                start = pos
                pos += len(msg.frame)
                if not scan:
                    self._downstream_message(d, msg, now)
                else:
                    if last == -2 and pos < end:  # not the read's only frame
                        last = data.rfind(MARKER, start) if start else data.rfind(MARKER)
                    self.trace_hint = UNKNOWN if last == -2 else frame_hint(start, pos, last)
                    try:
                        self._downstream_message(d, msg, now)
                    finally:
                        self.trace_hint = UNKNOWN
                if d.closed:
                    return
            if pos == end:
                return
            if pos:
                data = data[pos:]
            d.frame_started = now  # a partial frame starts being buffered
        buf += data
        while buf:
            try:
                msg = codec.decode(buf)
            except CodecError as bad:
                self._refuse_downstream(d, bad)
                return
            if msg is None:
                if len(buf) > codec.max_frame_size:
                    self.stats.downstream_frame_too_large += 1
                    self._close_downstream(d, f"{d}: closing, frame over {codec.max_frame_size}")
                return
            d.frame_started = now  # what follows in the buffer is a frame begun in this read
            self._downstream_message(d, msg, now)

    def _downstream_message(self, d: Downstream, msg: Message, now: float) -> None:
        mtype = msg.type
        if mtype is _REQUEST:
            d.owed += 1
            self._on_request(d, msg, now)
        elif mtype is _ONEWAY:
            d.idle_since = now  # owes no reply, but the client is not idle
            self._on_request(d, msg, now)
        elif mtype is _HEARTBEAT:
            self.stats.heartbeats += 1
            reply = d.codec.heartbeat_reply(msg)
            if reply:
                self._reply_in_order(d, None, reply)
        else:
            self.stats.downstream_unexpected_frames += 1

    def _refuse_downstream(self, d: Downstream, bad: CodecError) -> None:
        """Close a client whose bytes the codec refused."""
        if isinstance(bad, FrameTooLargeError):
            self.stats.downstream_frame_too_large += 1
            self._close_downstream(d, f"{d}: closing, frame too large: {bad}")
        else:
            self.stats.downstream_decode_errors += 1
            self._close_downstream(d, f"{d}: closing, bad frame: {bad}")

    def downstream_eof(self, d: Downstream, now: float) -> None:
        """The client ended its sending side: answer what is in flight, then close."""
        if d.closed or d.eof:
            return
        d.eof = True
        if d.inbuf:
            self._count_truncated(d)
            d.inbuf.clear()
        if d.owed:
            self.stats.downstream_half_closed += 1
        else:
            self._end_downstream(d)

    def on_timer(self, now: float) -> None:
        """Fire the deadlines that have passed, and close clients idle past their listener's
        ``idle_timeout`` (checked every :attr:`idle_sweep_every` seconds)."""
        super().on_timer(now)
        every = self.idle_sweep_every
        if every is not None and now >= self.idle_sweep_at:
            self.idle_sweep_at = now + every
            self._close_idle(now)

    def _close_idle(self, now: float) -> None:
        """Close clients idle past their listener's (or the default) idle timeout, and clients
        whose partial frame has been arriving for longer than the frame timeout."""
        default = self.limits.idle_timeout
        frame_timeout = self.limits.frame_timeout
        slow = 0
        for d in list(self.downstreams):
            if d.inbuf:
                if frame_timeout > 0 and now - d.frame_started >= frame_timeout:
                    slow += 1
                    self.stats.downstream_frame_timeouts += 1
                    self.actions.append((CLOSE_DOWNSTREAM, d))
                    self._forget_downstream(d)
                continue
            timeout = d.listener.config.idle_timeout
            if timeout is None:
                timeout = default
            if timeout > 0 and not d.owed and now - d.idle_since >= timeout:
                self.stats.downstream_idle_timeouts += 1
                self._end_downstream(d)
        if slow:
            self.actions.append(
                (LOG, INFO, f"closed {slow} client(s) whose frame took over {frame_timeout} s")
            )

    def downstream_closed(self, d: Downstream, now: float) -> None:
        """The connection is gone (reset, or closed after EOF); what it was owed is abandoned."""
        d.handle = None
        if d.closed:
            return
        if d.inbuf:
            self._count_truncated(d)
        self._forget_downstream(d)

    def downstream_unread(self, d: Downstream, queued: int, why: str) -> None:
        """The client does not read its replies (the runtime saw ``why``): count, log, close.

        The runtime aborts the socket itself: ``queued`` bytes of replies would never drain.
        """
        if d.closed:
            return
        self.stats.downstream_unread += 1
        self._close_downstream(
            d, f"{d}: closing, it does not read its replies ({queued} bytes queued, {why})"
        )

    def _count_truncated(self, d: Downstream) -> None:
        """The client stopped sending with part of a frame buffered: count and log it."""
        self.stats.downstream_truncated += 1
        self.actions.append((LOG, INFO, f"{d}: closed mid-frame ({len(d.inbuf)} bytes)"))

    def _close_downstream(self, d: Downstream, reason: str, level: int = WARNING) -> None:
        self.actions.append((LOG, level, reason))
        self.actions.append((CLOSE_DOWNSTREAM, d))
        self._forget_downstream(d)

    def _forget_downstream(self, d: Downstream) -> None:
        d.closed = True
        d.inbuf.clear()
        d.order.clear()
        self.downstreams.discard(d)
        self.stats.active_downstream_connections -= 1
        clients = self.listener_clients.get(d.listener.config.name)
        if clients is not None:
            clients.removed()
        tcp = d.tcp
        tcp.closed += 1
        tcp.received += d.bytes_in
        tcp.sent += d.bytes_out
        self.stats.mutations_dropped += d.codec.dropped_mutations
        for up in list(d.pipelines.values()):
            self._abandon_upstream(up)
        d.pipelines.clear()
