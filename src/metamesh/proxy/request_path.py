"""The plain request path and the response path: the per-request hot loop (sans-IO).

Request: route (first match on metadata) -> cluster (fixed or weighted) -> circuit breakers ->
load balancer -> pooled upstream -> mutation -> send. Routes with filters or policies leave
for :mod:`metamesh.proxy.attempts` right after the route match, so plain requests allocate one
:class:`~metamesh.proxy.upstream.ActiveRequest` and nothing else.

Response: matched by upstream id (multiplexed) or by order (pipelined), accounted (circuit
breaker and load balancer counters, outlier detection, Istio statistics), maybe retried, and
written back with the client's own request id (restored if it was rewritten).

This code runs once per proxied request, so it binds locals and inlines small steps on purpose.
"""

from __future__ import annotations

from typing import Final, cast

from metamesh.codecs import (
    CodecError,
    ErrorKind,
    Message,
)
from metamesh.codecs.message import Ownership, ReplyPart
from metamesh.proxy.attempts import Attempts
from metamesh.proxy.core import (
    _CLOSED,
    _ERROR,
    _HEARTBEAT,
    _OK,
    _RESPONSE,
    _STATUS_ERROR,
    CLOSE_UPSTREAM,
    GONE,
    LOG,
    TABLE,
    WARNING,
)
from metamesh.proxy.listener import Downstream
from metamesh.proxy.policy import (
    ERROR_RESPONSE,
    RESET,
)
from metamesh.proxy.pool import NO_HEALTHY, Refusal
from metamesh.proxy.router import no_route_text
from metamesh.proxy.telemetry import NO_FLAGS
from metamesh.proxy.tracing import HAS_MARKER, MARKER_SIZE
from metamesh.proxy.upstream import ActiveRequest, Upstream, UpstreamState

#: :attr:`RequestPath.trace_hint` values: what the client side knows of the request frame being
#: handled from its read's one scan.
UNKNOWN: Final = 0  # scan the frame
CLEAN: Final = 1  # no trace marker in it
MARKED: Final = 2  # the marker is in it


def frame_hint(start: int, end: int, last: int) -> int:
    """The hint for the frame at ``start:end`` of a read whose last trace marker starts at
    ``last`` (-1: none): clean after it, marked if it holds it whole, else unknown (an earlier
    frame, or the marker straddles two frames: as in a scan of either, it is in neither)."""
    if last < start:
        return CLEAN
    return MARKED if last + MARKER_SIZE <= end else UNKNOWN


class RequestPath(Attempts):
    """The plain request path and every response."""

    #: Set by the client side around each request frame of a read taken whole (``Codec.
    #: decode_at``) while tracing: the read is searched once for the trace marker, from its
    #: end (``bytes.rfind``), and every frame after the last marker is known clean, so a burst
    #: of pipelined requests without context costs one search, not one per request (a 200 B
    #: Dubbo request: ~150 ns per frame scanned, ~1/4 of that per frame of a 32-frame read).
    #: Frames before the last marker are scanned on their own, as buffered frames are.
    trace_hint: int = UNKNOWN

    def _on_request(self, d: Downstream, msg: Message, now: float) -> None:
        if d.hear:
            self._hear(d, msg)
        span = None
        tracer = self.tracer
        if tracer is not None:  # see Tracer: only requests that may be traced call begin
            # a framing without headers is never scanned; see HAS_MARKER for the search, and
            # trace_hint for the frames a scan of their whole read found clean or marked
            hint = self.trace_hint
            if d.codec.carries_headers and (
                hint == MARKED or (hint == UNKNOWN and HAS_MARKER(msg.frame) is not None)
            ):
                span = tracer.begin(msg.metadata, d.origin.inbound, now)
            else:
                tracer.skip -= 1
                if tracer.skip < 0 and tracer.draw():
                    span = tracer.fresh(d.origin.inbound, now)
            if span is not None and span.sampled:  # the forwarded request names our span
                msg = self._mutated(d.codec, msg, span.headers())
        listener = d.listener
        route = listener.table.match(msg)
        extras = listener.extras
        if extras is not None:
            ex = extras.get(route)
            if ex is not None:
                self._start(d, msg, route, ex, now, span)
                return
        if route is None:
            text = no_route_text(msg, listener.config.service)
            self._local_reply(d, msg, ErrorKind.ROUTE_NOT_FOUND, text, now, span=span)
            return
        cluster_name = route.cluster or route.pick_cluster(self.rng)
        cs = self.clusters.get(cluster_name)
        if cs is None:
            text = f"unknown cluster {cluster_name}"
            self._local_reply(d, msg, ErrorKind.CLUSTER_NOT_FOUND, text, now, route, span=span)
            return
        codec = d.codec
        if cs.active_requests < cs.max_requests and not route.hash_keys:
            # The common case of UpstreamPool._pick_upstream (breakers pass, no hash key, no
            # endpoint to exclude), without the call.
            idx = cs.lb.pick(None)
            up: Upstream | Refusal = (
                NO_HEALTHY if idx is None else self._pooled_upstream(d, cs, idx, now)
            )
        else:
            up = self._pick_upstream(d, msg, route, cs, None, now)
        if isinstance(up, tuple):
            stats = self._request_stats(d, cs, -1)
            self._local_reply(d, msg, up[0], up[1], now, route, stats, span)
            return
        idx = up.endpoint_index
        row = cs.request_stats.get(d.origin)
        stats = row[idx] if row is not None else self._request_stats(d, cs, idx)
        if route.request_mutation is not None:
            msg = self._mutated(codec, msg, route.request_mutation)
        if up.tell:
            msg = self._tell(codec, msg, up)
        req = ActiveRequest(d, msg, route, cs, now, stats)
        req.span = span
        self._send(up, req, codec, idx)
        if route.mirrors:
            self._mirror(d, msg, route, now)

    def upstream_data(self, up: Upstream, data: bytes, now: float) -> None:
        if up.state is _CLOSED:
            return
        buf = up.inbuf
        codec = up.codec
        if not buf:  # whole frames straight from the bytes read (Codec.decode_at)
            pos = 0
            end = len(data)
            while pos < end:
                try:
                    msg = codec.decode_at(data, pos)
                except CodecError as e:
                    self._bad_upstream_frame(up, e, now)
                    return
                if msg is None:
                    break
                pos += len(msg.frame)
                self._upstream_message(up, msg, now)
                if cast(UpstreamState, up.state) is _CLOSED:  # closed while handling it
                    return
            if pos:
                data = data[pos:]
        if data:
            buf += data
            while buf:
                try:
                    msg = codec.decode(buf)
                except CodecError as e:
                    self._bad_upstream_frame(up, e, now)
                    return
                if msg is None:
                    break
                self._upstream_message(up, msg, now)
        if up.retired and up.in_flight == 0:
            self._close_upstream(up)

    def _upstream_message(self, up: Upstream, msg: Message, now: float) -> None:
        mtype = msg.type
        if mtype is _RESPONSE or mtype is _ERROR:
            self._on_response(up, msg, now)
        elif mtype is _HEARTBEAT:
            if type(msg.codec_state) is Ownership:  # a cluster's slot table (Redis)
                self._adopt_owners(up, msg.codec_state, now)
                return
            # Never forwarded to clients; a server's ping is answered so that servers
            # which drop silent connections (Dubbo) keep our shared connection.
            pong = up.codec.heartbeat_reply(msg)
            if pong:
                up.out.append(pong)
                if not up.dirty:
                    up.dirty = True
                    self.dirty.append(up)

    def _bad_upstream_frame(self, up: Upstream, e: CodecError, now: float) -> None:
        self.stats.upstream_decode_errors += 1
        self.actions.append((LOG, WARNING, f"{up}: bad frame from upstream: {e}"))
        self._endpoint_failed(up.cluster, up.endpoint_index, now)
        text = f"bad upstream response: {e}"
        self._drop_upstream(up, ErrorKind.BAD_RESPONSE, text, now, RESET)
        self.actions.append((CLOSE_UPSTREAM, up))

    def _on_response(self, up: Upstream, msg: Message, now: float) -> None:
        multiplexed = up.id_limit
        if multiplexed:
            # get + del rather than pop(k, None): both are native operations in the native
            # build, where pop is a method call looked up by name
            pending = up.pending
            rid = msg.request_id
            req = pending.get(rid)  # type: ignore[arg-type]
            if req is not None:
                del pending[rid]  # type: ignore[arg-type]
        else:
            req = up.fifo.popleft() if up.fifo else None
        if req is None:
            self.stats.upstream_unmatched_responses += 1
            return
        if req is GONE:  # the request timed out; its id was kept reserved until now
            up.dead -= 1
            self.stats.late_responses += 1
            return
        if req is TABLE:  # the proxy's own key table query (Redis CLUSTER SLOTS)
            up.dead -= 1
            owners = up.codec.ownership(msg)
            if owners is not None:
                self._adopt_owners(up, owners, now)
            return
        # Inline _untrack: this runs once per proxied request.
        cs = up.cluster
        cs.active_requests -= 1
        lb = req.lb
        if lb is not None and req.endpoint_index < len(lb.active):
            lb.active[req.endpoint_index] -= 1
        self.stats.active_requests -= 1
        if req.mirror:
            return
        if cs.slots is not None and self._cluster_reply(up, req, msg, now):  # MOVED/ASK
            return
        if (req.ext is not None or cs.outlier is not None) and self._settled(up, req, msg, now):
            return
        code = 0 if (msg.status is _OK and msg.type is _RESPONSE) else 1
        stats = req.stats
        assert stats is not None
        size = len(msg.frame)
        stats.observe(code, (now - req.start) * 1000.0, len(req.request.frame), size)
        d: Downstream = req.downstream  # typed here, so the native build reads it as a struct
        span = req.span
        if span is None and code and self.tracer is not None and self.tracer.errors:
            span = self.tracer.late(req.start, d.origin.inbound)
        if span is not None:
            self._end_span(span, d, req.request, req.route, up, NO_FLAGS, code == 1, now)
        if self.access_log:
            self._access_log(d, req.request, req.route, up, msg, str(code), req.start, now)
        if d.closed:
            return
        d.owed -= 1
        if not d.owed:
            d.idle_since = now
        route = req.route
        if route is not None and route.response_mutation is not None:
            msg = self._mutated(up.codec, msg, route.response_mutation)
        if multiplexed:
            rid = req.request.request_id
            if msg.request_id == rid:  # the client's id went upstream unchanged (see _send)
                d.out.append(msg.frame)
            else:
                d.out.append(up.codec.rewrite_request_id(msg, rid))  # type: ignore[arg-type]
            d.bytes_out += size
            if not d.dirty:
                d.dirty = True
                self.dirty.append(d)
            if not d.owed and (d.eof or self.draining):  # a half-closed client's last answer
                self._end_downstream(d)
        else:
            frame = msg.frame
            part = req.request.codec_state
            if isinstance(part, ReplyPart):  # one part of a client request the codec split
                frame = d.codec.merge_reply(part, frame)
            self._reply_in_order(d, req, frame)

    def _settled(self, up: Upstream, req: ActiveRequest, msg: Message, now: float) -> bool:
        """A reply on a cluster with outlier detection or for a request with policies:
        report the endpoint's success or failure; True when nothing more is to be done
        (the request was already answered, or a failure is being retried)."""
        cs = up.cluster
        failed = msg.type is _ERROR or msg.status is _STATUS_ERROR
        od = cs.outlier
        if od is not None:
            if failed:
                self._endpoint_failed(cs, req.endpoint_index, now)
            elif req.endpoint_index < len(od.consecutive):
                od.success(req.endpoint_index)
        ext = req.ext
        if ext is not None:
            if ext.done:
                return True
            if failed and self._retry(req, ERROR_RESPONSE, now):
                return True
            ext.done = True
            for f in ext.chain:  # encoder filters see the reply that answers the request
                if f.encoder:
                    f.on_response(req, msg, now)
        return False
