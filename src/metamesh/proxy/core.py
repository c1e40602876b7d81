"""Shared state of the sans-IO core, and how the core is layered.

The core is one object, :class:`metamesh.proxy.connection.ConnectionManager`, built from layers
that each own one part of the request lifecycle and may call the layers below them:

====================================  =========================================================
:mod:`~metamesh.proxy.downstream`     client connections: decode loop, heartbeats, close
:mod:`~metamesh.proxy.request_path`   plain request path (route -> cluster -> LB -> send) and
                                      every response
:mod:`~metamesh.proxy.attempts`       filter chains, retries, timeouts, outlier reporting
:mod:`~metamesh.proxy.mirror`         request copies to mirror clusters
:mod:`~metamesh.proxy.pool`           upstream pool/multiplexer, connect/close/reset handling
:mod:`~metamesh.proxy.replies`        local error replies, reply order, failing requests
this module                           shared state, accounting, access log records
====================================  =========================================================

Layers are classes stacked by inheritance (each subclasses the one below), so the hot path
calls plain methods on one object; the only calls that go up a layer are the hooks declared
here: retry after a failure and report an endpoint failure, implemented by
:class:`~metamesh.proxy.attempts.Attempts`, and forget a client, implemented by
:class:`~metamesh.proxy.downstream.DownstreamSide` (the replies layer closes a half-closed client
once its last reply is queued).

Output contract: frames to send (``bytes``, never a buffer that changes later) are appended to
the ``out`` list of each peer, which is listed once in :attr:`CoreState.dirty` (the runtime
writes each dirty peer once per loop turn, a lone frame as is, several joined);
control actions are plain tuples in :attr:`CoreState.actions`: ``(CONNECT, upstream)``,
``(CLOSE_DOWNSTREAM, downstream)``, ``(CLOSE_UPSTREAM, upstream)``, ``(LOG, level, text)``
and ``(ACCESS_LOG, record, metadata)``. The runtime writes the dirty peers before it executes the
actions, so a close never cuts off the replies queued before it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Final

from metamesh.codecs import Codec, CodecError, Message, MessageType
from metamesh.codecs.message import ResponseStatus, metadata_get
from metamesh.proxy import exchange
from metamesh.proxy.config import Snapshot
from metamesh.proxy.exchange import MAX_ORIGINS
from metamesh.proxy.filters.base import FilterContext
from metamesh.proxy.listener import ConnectionLimits, Downstream, ListenerState
from metamesh.proxy.policy import DeadlineQueue
from metamesh.proxy.router import CompiledRoute
from metamesh.proxy.stats import ProxyStats, RequestStats
from metamesh.proxy.telemetry import (
    UNKNOWN,
    UNKNOWN_WORKLOAD,
    Origin,
    Workload,
    endpoint_workload,
    principal_workload,
    request_labels,
)
from metamesh.proxy.tracing import Attributes, Span, SpanRecord, Tracer
from metamesh.proxy.upstream import ActiveRequest, ClusterState, Peer, Upstream, UpstreamState

# Actions (first item of each tuple in ``actions``) and log levels. ``Final``, like the names
# below, so that the native build reads a C constant or static instead of a module dict.
CONNECT: Final = 0
CLOSE_DOWNSTREAM: Final = 1
CLOSE_UPSTREAM: Final = 2
LOG: Final = 3
ACCESS_LOG: Final = 4
#: ``(SPAN,)``: finished trace spans wait in ``CoreState.spans`` for the runtime's exporter.
#: Said when the list goes from empty to one span and for every span once it holds
#: ``CoreState.span_batch``: the exporter arms its timer, or sends, and needs no call per span.
SPAN: Final = 5
#: Entries of ``CoreState.span_attributes`` before it is emptied.
MAX_SPAN_ATTRIBUTES: Final = 1024
INFO: Final = 20
WARNING: Final = 30

CodecFactoryResolver = Callable[[str], Callable[..., Codec]]

_REQUEST: Final = MessageType.REQUEST
_ONEWAY: Final = MessageType.ONEWAY
_HEARTBEAT: Final = MessageType.HEARTBEAT
_RESPONSE: Final = MessageType.RESPONSE
_ERROR: Final = MessageType.ERROR
_OK: Final = ResponseStatus.OK
_STATUS_ERROR: Final = ResponseStatus.ERROR
_CONNECTING: Final = UpstreamState.CONNECTING
_READY: Final = UpstreamState.READY
_CLOSED: Final = UpstreamState.CLOSED

PLACEHOLDER: Final = Message(MessageType.HEARTBEAT, None, b"", 0, 0, metadata={})
#: Stands in an upstream's pending/fifo for a timed-out request until its late reply arrives.
GONE: Final = ActiveRequest(None, PLACEHOLDER, None, None, 0.0, None, True)
#: Stands in an upstream's fifo for the proxy's own ownership query (Redis ``CLUSTER SLOTS``,
#: :meth:`metamesh.codecs.base.Codec.ownership_query`), whose reply updates the key table.
TABLE: Final = ActiveRequest(None, PLACEHOLDER, None, None, 0.0, None, True)
#: Seconds between two refreshes of a cluster's key table (Envoy's cluster_refresh_rate);
#: a redirection asks again at the next reply.
TABLE_REFRESH: Final = 5.0
#: Timed-out requests an upstream may owe us before we stop sending it new ones.
MAX_DEAD: Final = 1024


class CoreState:
    """The core's state, shared by every layer; see the module docstring."""

    def __init__(
        self,
        snapshot: Snapshot,
        resolve_codec: CodecFactoryResolver,
        rng: random.Random | None = None,
        *,
        access_log: bool = False,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.rng = rng or random.Random()
        self.limits = limits or ConnectionLimits()
        self.resolve_codec = resolve_codec
        self.access_log = access_log
        #: Starts trace spans when tracing is on (set by the runtime; see :mod:`.tracing`).
        self.tracer: Tracer | None = None
        self.stats = ProxyStats()
        self.actions: list[tuple[Any, ...]] = []
        self.dirty: list[Peer] = []
        self.listeners: dict[str, ListenerState] = {}
        self.clusters: dict[str, ClusterState] = {}
        self.snapshot = snapshot
        self.downstreams: set[Downstream] = set()
        self.upstreams: set[Upstream] = set()
        self._next_conn_id = 0
        #: Every timed event: request/per-try timeouts, retries, paused filters, ejections.
        self.deadlines = DeadlineQueue()
        self.filter_context = FilterContext(self.stats, self.rng, self._emit)
        #: How often :meth:`on_timer` looks for idle clients (``None``: no listener has an
        #: ``idle_timeout``), and when it next does.
        self.idle_sweep_every: float | None = None
        self.idle_sweep_at = 0.0
        #: A graceful shutdown is under way (:meth:`ConnectionManager.start_drain`): every
        #: client is closed at the first moment it is owed nothing.
        self.draining = False
        #: When a refused or evicted connection was last logged (one line per interval).
        self.cx_limit_logged_at = -1e9
        #: (listener, route, cluster, endpoint index, flags, error, service, method) -> a
        #: span's name and attributes (:meth:`_end_span`).
        self.span_attributes: dict[tuple[Any, ...], tuple[str, Attributes]] = {}
        #: Finished spans for the runtime's exporter, which takes them from this list (it is
        #: the exporter's own queue, ``SpanExporter.pending``) and sets ``span_batch`` to its
        #: batch size (see :data:`SPAN`).
        self.spans: list[SpanRecord] = []
        self.span_batch = 512

    # -- hooks implemented by the attempts layer -------------------------------------------

    def _retry(self, req: ActiveRequest, condition: str, now: float) -> bool:
        raise NotImplementedError

    def _endpoint_failed(self, cs: ClusterState, idx: int, now: float) -> None:
        raise NotImplementedError

    # -- hook implemented by the downstream layer ------------------------------------------

    def _forget_downstream(self, d: Downstream) -> None:
        raise NotImplementedError

    # -- shared helpers --------------------------------------------------------------------

    def _emit(self, action: tuple[Any, ...]) -> None:
        self.actions.append(action)

    def take_actions(self) -> list[tuple[Any, ...]]:
        actions = self.actions
        self.actions = []
        return actions

    def _set_origin(self, d: Downstream, peer: Workload) -> bool:
        """Label ``d``'s requests and connection: an inbound listener reports as the
        destination (``peer`` is the source; mutual TLS when it has a verified principal), an
        outbound one as the source (this proxy), as Istio's sidecars do. True if inbound."""
        stats = self.stats
        config = d.listener.config
        service = config.service
        if config.name.startswith("inbound") or config.stat_prefix.startswith("inbound|"):
            security = "mutual_tls" if d.principal else "none"
            origin = stats.origin("destination", peer, d.listener.protocol, security, service)
            tcp_dest = stats.local
        else:
            origin = stats.origin("source", stats.local, d.listener.protocol, UNKNOWN, service)
            tcp_dest = UNKNOWN_WORKLOAD  # a client connection's requests go to many endpoints
        d.origin = origin
        d.tcp = stats.tcp_stats(request_labels(origin, tcp_dest, service or UNKNOWN))
        return origin.inbound

    def _hear(self, d: Downstream, msg: Message) -> None:
        """The first request of a client of an inbound listener: the peer's workload, if it
        told it (:mod:`metamesh.proxy.exchange`), becomes the source of its labels."""
        d.hear = False
        # metadata_get: lazily loaded metadata (Dubbo attachments) in the native build too
        told = exchange.decode(metadata_get(msg.metadata, exchange.HEADER))
        if told is not None and len(self.stats.origins) < MAX_ORIGINS:
            self._set_origin(d, exchange.source_of(principal_workload(d.principal), told))

    def _tell(self, codec: Codec, msg: Message, up: Upstream) -> Message:
        """``msg``, the first request on ``up``, with this proxy's workload in the header of
        the metadata exchange when the framing can carry it (else ``msg`` as it was, and the
        codec's dropped mutation is not counted: the exchange is best effort)."""
        up.tell = False
        local = self.stats.local
        if local is UNKNOWN_WORKLOAD:
            return msg
        dropped = codec.dropped_mutations
        told = self._mutated(codec, msg, {exchange.HEADER: exchange.encode(local)})
        codec.dropped_mutations = dropped
        return told

    def _end_span(
        self,
        span: Span,
        d: Downstream,
        request: Message,
        route: CompiledRoute | None,
        up: Upstream | None,
        flags: str,
        error: bool,
        now: float,
    ) -> None:
        """Hand a finished span to the runtime: always when sampled, else (kept for errors)
        only when the request failed."""
        if not span.sampled and not error:
            return
        md = request.metadata
        listener = d.listener
        service = (
            metadata_get(md, "interface") or metadata_get(md, "service") or listener.config.service
        )
        method = metadata_get(md, "method") or ""
        # the endpoint as its cluster (identity) and index: Endpoint hashes by its fields
        cs = up.cluster if up is not None else None
        idx = up.endpoint_index if up is not None else -1
        key = (listener, route, cs, idx, flags, error, service, method)
        cache = self.span_attributes
        found = cache.get(key)
        if found is None:
            found = self._span_attributes(listener, route, up, flags, error, service, method)
            cache[key] = found
        record = SpanRecord(
            span.trace_id,
            span.span_id,
            span.parent_id,
            span.server,
            found[0],
            span.start,
            now,
            error,
            found[1],
        )
        spans = self.spans
        spans.append(record)
        n = len(spans)
        if n == 1 or n >= self.span_batch:
            self.actions.append((SPAN,))

    def _span_attributes(
        self,
        listener: ListenerState,
        route: CompiledRoute | None,
        up: Upstream | None,
        flags: str,
        error: bool,
        service: str,
        method: str,
    ) -> tuple[str, Attributes]:
        """The name and attributes of the spans of one listener, route, endpoint, outcome and
        method (kept in :attr:`span_attributes`, which is emptied when it holds
        :data:`MAX_SPAN_ATTRIBUTES`: a config change leaves its old keys behind)."""
        if len(self.span_attributes) >= MAX_SPAN_ATTRIBUTES:
            self.span_attributes.clear()
        pairs: list[tuple[str, str | int]] = [
            ("rpc.system", listener.protocol),
            ("rpc.service", service),
            ("rpc.method", method),
            ("metamesh.listener", listener.config.name),
            ("metamesh.response_code", 1 if error else 0),
            ("metamesh.response_flags", flags),
        ]
        if route is not None:
            pairs.append(("metamesh.route", route.name))
        if up is not None:
            pairs.append(("metamesh.cluster", up.cluster.config.name))
            pairs.append(("server.address", up.endpoint.address))
            pairs.append(("server.port", up.endpoint.port))
        name = f"{service}/{method}" if method else service or "request"
        return name, tuple(pairs)

    def _request_stats(self, d: Downstream, cs: ClusterState | None, idx: int) -> RequestStats:
        """Istio request statistics of a request from ``d`` to endpoint ``idx`` of ``cs``
        (-1: none picked; ``cs`` None: no cluster either), created on first use. The request
        path reads ``cs.request_stats[d.origin][idx]`` itself and calls this on a miss."""
        origin = d.origin
        if cs is None:
            service = origin.service or UNKNOWN
            dest = self.stats.local if origin.inbound else Workload()
            return self.stats.request_stats(request_labels(origin, dest, service))
        row = cs.request_stats.get(origin)
        if row is None:
            row = cs.request_stats[origin] = self._stats_row(origin, cs)
        return row[idx]

    def _stats_row(self, origin: Origin, cs: ClusterState) -> list[RequestStats]:
        """One :class:`RequestStats` per endpoint of ``cs`` (and one for none) for ``origin``:
        the destination is this proxy on an inbound listener, else the endpoint as its labels
        and its proxy (metadata exchange) tell, its version defaulting to the subset's name."""
        stats = self.stats
        subset = Workload(version=cs.subset or UNKNOWN)
        if origin.inbound:
            dests = [stats.local] * (len(cs.config.endpoints) + 1)
        else:
            dests = [
                endpoint_workload(e.labels).with_peer(cs.peers.get(i, subset)).with_peer(subset)
                for i, e in enumerate(cs.config.endpoints)
            ]
            dests.append(subset)
        return [stats.request_stats(request_labels(origin, dst, cs.service)) for dst in dests]

    def _untrack(self, req: ActiveRequest) -> None:
        cs = req.cluster
        if cs is not None:
            cs.active_requests -= 1
        lb = req.lb
        if lb is not None and req.endpoint_index < len(lb.active):
            lb.active[req.endpoint_index] -= 1
        self.stats.active_requests -= 1

    def _mutated(self, codec: Codec, msg: Message, mutation: dict[str, str]) -> Message:
        """``msg`` with ``mutation`` applied, re-decoded so ids can still be rewritten."""
        frame = codec.encode(msg, mutation)
        if frame is msg.frame:
            return msg
        # the fast path first: a whole frame, no buffer copies (codecs without it say None)
        again = codec.decode_at(frame, 0) or codec.decode(bytearray(frame))
        if again is None:  # pragma: no cover - a codec bug, never expected
            raise CodecError("codec could not decode its own mutated frame")
        return again

    def _access_log(
        self,
        d: Downstream,
        request: Message,
        route: CompiledRoute | None,
        up: Upstream | None,
        response: Message | None,
        status: str,
        start: float,
        now: float,
    ) -> None:
        md = request.metadata
        endpoint = f"{up.endpoint.address}:{up.endpoint.port}" if up is not None else None
        self.actions.append(
            (
                ACCESS_LOG,
                {
                    "protocol": d.listener.protocol,
                    "listener": d.listener.config.name,
                    "downstream": d.peer,
                    "interface": md.get("interface", ""),
                    "method": md.get("method", ""),
                    "route": route.name if route is not None else None,
                    "cluster": up.cluster.config.name if up is not None else None,
                    "endpoint": endpoint,
                    "response_code": status,
                    "duration_ms": round((now - start) * 1000.0, 3),
                    "request_id": request.request_id,
                    "oneway": request.type is _ONEWAY,
                },
                md,  # for %META(key)% (runtime/access_log.py)
            )
        )
