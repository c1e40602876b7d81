"""Replies the proxy makes itself, and the order replies reach a client (sans-IO).

The bottom layer of the core (see :mod:`metamesh.proxy.core` for how the layers stack). Every
way a request can end without an upstream answer goes through here: a local error before the
request left (no route, no cluster, a circuit breaker, a filter's local reply), a failure
while it was in flight (reset, connect failure, bad response: maybe retried first) and a
timeout. Each one counts ``local_replies`` by kind, records the request in the Istio
statistics and the access log, and writes ``codec.error_reply`` for the client.

Protocols without request ids are pipelined, so replies must reach the client in request
order: :meth:`Replies._reply_in_order` parks a reply on its request until every earlier one
is answered (an immediate local reply takes a placeholder place in that queue).
"""

from __future__ import annotations

from metamesh.codecs import (
    ErrorKind,
    LocalError,
    Message,
)
from metamesh.proxy.core import (
    _ONEWAY,
    _REQUEST,
    CLOSE_DOWNSTREAM,
    PLACEHOLDER,
    CoreState,
)
from metamesh.proxy.listener import Downstream
from metamesh.proxy.policy import (
    RequestExt,
)
from metamesh.proxy.router import CompiledRoute
from metamesh.proxy.stats import RequestStats
from metamesh.proxy.telemetry import RESPONSE_FLAGS
from metamesh.proxy.tracing import Span
from metamesh.proxy.upstream import ActiveRequest, Upstream


class Replies(CoreState):
    """Local error replies, reply ordering, and failing requests that were in flight."""

    def _local_error(
        self,
        d: Downstream,
        msg: Message,
        kind: ErrorKind,
        text: str,
        route: CompiledRoute | None,
        up: Upstream | None,
        stats: RequestStats | None,
        start: float,
        now: float,
        span: Span | None = None,
    ) -> bytes | None:
        """The bookkeeping every local reply shares: count it by kind, record it in the Istio
        statistics (a request that never reached a cluster under its listener's service, or
        ``unknown`` when the listener names none) and the access log. Returns the protocol's
        error reply for the client (``b""`` for a one-way request), or None when the client is
        already gone."""
        self.stats.local_replies[kind] += 1
        if stats is None:
            stats = self._request_stats(d, None, -1)
        if self.access_log:
            self._access_log(d, msg, route, up, None, kind.value, start, now)
        reply: bytes | None = None
        if d.closed:
            pass
        elif msg.type is _ONEWAY:
            reply = b""
        else:
            if msg.type is _REQUEST:
                d.owed -= 1  # the caller queues the reply (and closes a half-closed client)
                if not d.owed:
                    d.idle_since = now
            reply = d.codec.error_reply(msg, LocalError(kind, text))
        flags = RESPONSE_FLAGS[kind]
        sent = len(reply) if reply else 0
        stats.flag(flags).observe(1, (now - start) * 1000.0, len(msg.frame), sent)
        tracer = self.tracer
        if span is None and tracer is not None and tracer.errors:
            span = tracer.late(start, d.origin.inbound)  # see Tracer.late
        if span is not None:
            self._end_span(span, d, msg, route, up, flags, True, now)
        return reply

    def _local_reply(
        self,
        d: Downstream,
        msg: Message,
        kind: ErrorKind,
        text: str,
        now: float,
        route: CompiledRoute | None = None,
        stats: RequestStats | None = None,
        span: Span | None = None,
    ) -> None:
        """Answer a plain request that never got an ``ActiveRequest`` with a local error."""
        data = self._local_error(d, msg, kind, text, route, None, stats, now, now, span)
        if data:
            self._reply_in_order(d, None, data)

    def _reply_in_order(self, d: Downstream, req: ActiveRequest | None, data: bytes) -> None:
        """Queue ``data`` for the client; pipelined protocols keep request order."""
        if d.closed:
            return
        if not d.listener.multiplexed:
            order = d.order
            if req is None:
                if order:  # an immediate reply must wait behind earlier requests
                    placeholder = ActiveRequest(d, PLACEHOLDER, None, None, 0.0, None)
                    placeholder.reply = data
                    order.append(placeholder)
                    return
            else:
                req.reply = data
                if order[0] is not req:
                    return
                order.popleft()
                while order and order[0].reply is not None:
                    data += order.popleft().reply  # type: ignore[operator]
        d.out.append(data)
        d.bytes_out += len(data)
        if not d.dirty:
            d.dirty = True
            self.dirty.append(d)
        if not d.owed and (d.eof or self.draining):
            self._end_downstream(d)

    def _end_downstream(self, d: Downstream) -> None:
        """Close a half-closed (or, while draining, any) client that is owed nothing more
        (after its replies go out: the runtime writes dirty peers before it executes actions).
        A draining client in the middle of sending a frame is kept until that request is
        answered (or the drain deadline)."""
        if self.draining and not d.eof:  # closed by the drain
            if d.inbuf:
                return
            self.stats.downstream_drained += 1
        self.actions.append((CLOSE_DOWNSTREAM, d))
        self._forget_downstream(d)

    def _fail_request(
        self, req: ActiveRequest, kind: ErrorKind, text: str, now: float, condition: str = ""
    ) -> None:
        self._untrack(req)
        if req.mirror:
            return
        ext = req.ext
        if ext is not None:
            if condition and self._retry(req, condition, now):
                return
            ext.done = True
        d = req.downstream
        data = self._local_error(
            d, req.request, kind, text, req.route, req.upstream, req.stats, req.start, now, req.span
        )
        if data is not None:
            self._reply_in_order(d, req, data)

    def _policy_reply(
        self, req: ActiveRequest, ext: RequestExt, kind: ErrorKind, text: str, now: float
    ) -> None:
        """Answer a request that is not in flight upstream with a local error."""
        ext.done = True
        d = req.downstream
        data = self._local_error(
            d, req.request, kind, text, req.route, None, req.stats, req.start, now, req.span
        )
        if data is None:
            return
        if ext.ordered:
            self._reply_in_order(d, req, data)
        elif data:
            self._reply_in_order(d, None, data)

    def _timed_out(self, req: ActiveRequest, ext: RequestExt, text: str, now: float) -> None:
        ext.done = True
        d = req.downstream
        kind = ErrorKind.TIMEOUT
        data = self._local_error(
            d, req.request, kind, text, req.route, None, req.stats, req.start, now, req.span
        )
        if data is not None:
            self._reply_in_order(d, req if ext.ordered else None, data)
