"""The connection manager: the one place the request lifecycle lives (sans-IO).

A :class:`ConnectionManager` is one worker's proxy core. The runtime feeds it events (a client
connected, bytes from a client or an upstream, an upstream connected, failed or closed, a timer
tick) together with ``now``; the core updates its state and leaves its output in two places:

* bytes to send, appended to the ``out`` bytearray of each :class:`Downstream` / ``Upstream``,
  which is listed once in :attr:`ConnectionManager.dirty`, so the runtime can write everything a
  peer gets in one loop turn with a single ``write`` (coalescing is what keeps syscalls per
  request low);
* control actions, plain tuples in :attr:`ConnectionManager.actions`: ``(CONNECT, upstream)``,
  ``(CLOSE_DOWNSTREAM, downstream)``, ``(CLOSE_UPSTREAM, upstream)``, ``(LOG, level, text)``
  and ``(ACCESS_LOG, record)``.

Request path: decode -> route (first match) -> cluster (fixed or weighted) -> circuit breakers
-> load balancer -> mutation (``codec.encode``) -> upstream. Protocols whose codec has request ids
are multiplexed: every downstream shares one upstream connection per endpoint, each request gets
a fresh upstream id (``codec.rewrite_request_id``) and the client's id is restored on the reply.
Protocols without ids get a dedicated upstream connection per client and endpoint, requests
pipeline in order, and replies are released to the client strictly in request order.

Failures stay as small as possible: a bad client frame closes that client only; an upstream
that fails, resets or sends garbage answers each affected request with a protocol-native error
reply (``codec.error_reply``) and nothing else. A config swap (:meth:`apply_snapshot`) replaces
route tables and cluster settings in one step; connections stay open and requests in flight keep
the route they matched.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any

from metamesh.codecs import (
    Codec,
    CodecError,
    ErrorKind,
    FrameTooLargeError,
    LocalError,
    Message,
    MessageType,
)
from metamesh.codecs.message import ResponseStatus
from metamesh.proxy.config import Listener, Snapshot
from metamesh.proxy.filters.base import FilterContext, LocalReply, Stop
from metamesh.proxy.filters.chain import ListenerFilters, RouteExtras
from metamesh.proxy.lb import hash_metadata
from metamesh.proxy.policy import (
    CONNECT_FAILURE,
    CONNECT_TIMEOUT,
    ERROR_RESPONSE,
    RESET,
    RESUME,
    RETRY,
    ROUTE_TIMEOUT,
    TIMEOUT,
    TRY_TIMEOUT,
    UNEJECT,
    DeadlineQueue,
    RequestExt,
    pick_excluding,
)
from metamesh.proxy.router import CompiledRoute, RouteTable
from metamesh.proxy.stats import ProxyStats, RequestStats
from metamesh.proxy.upstream import ActiveRequest, ClusterState, Upstream, UpstreamState

CONNECT, CLOSE_DOWNSTREAM, CLOSE_UPSTREAM, LOG, ACCESS_LOG = range(5)
INFO, WARNING = 20, 30

CodecFactoryResolver = Callable[[str], Callable[..., Codec]]

_REQUEST, _ONEWAY, _HEARTBEAT = MessageType.REQUEST, MessageType.ONEWAY, MessageType.HEARTBEAT
_RESPONSE, _ERROR = MessageType.RESPONSE, MessageType.ERROR
_OK, _STATUS_ERROR = ResponseStatus.OK, ResponseStatus.ERROR
_CONNECTING, _READY, _CLOSED = UpstreamState.CONNECTING, UpstreamState.READY, UpstreamState.CLOSED


class ListenerState:
    """A listener's live settings; ``table`` is replaced on a config swap."""

    __slots__ = (
        "codec_factory",
        "config",
        "extras",
        "filters",
        "multiplexed",
        "protocol",
        "table",
    )

    def __init__(self, config: Listener, table: RouteTable, factory: Callable[..., Codec]) -> None:
        self.config = config
        self.table = table
        #: Filter instances, and per-route filter chains and policies (None: nothing at all).
        self.filters: ListenerFilters | None = None
        self.extras: dict[CompiledRoute | None, RouteExtras] | None = None
        self.codec_factory = factory
        probe = self.new_codec()
        self.protocol = probe.name or config.codec
        self.multiplexed = probe.request_id_bits is not None

    def new_codec(self) -> Codec:
        size = self.config.max_frame_size
        return self.codec_factory(max_frame_size=size) if size else self.codec_factory()


class Downstream:
    """One client connection."""

    __slots__ = (
        "closed",
        "codec",
        "dirty",
        "handle",
        "id",
        "inbuf",
        "listener",
        "order",
        "out",
        "peer",
        "pipelines",
    )

    def __init__(self, conn_id: int, listener: ListenerState, peer: str) -> None:
        self.id = conn_id
        self.listener = listener
        self.codec = listener.new_codec()
        self.peer = peer
        self.inbuf = bytearray()
        self.out = bytearray()
        self.dirty = False
        self.closed = False
        self.handle: Any = None
        #: Non-multiplexed protocols: replies wait here until every earlier one is sent.
        self.order: deque[ActiveRequest] = deque()
        #: Non-multiplexed protocols: dedicated upstreams by (cluster name, endpoint index).
        self.pipelines: dict[tuple[str, int], Upstream] = {}

    def __repr__(self) -> str:
        return f"Downstream#{self.id}({self.listener.config.name} from {self.peer})"


class ConnectionManager:
    """One worker's proxy core. See the module docstring for the event/action contract."""

    def __init__(
        self,
        snapshot: Snapshot,
        resolve_codec: CodecFactoryResolver,
        rng: random.Random | None = None,
        *,
        access_log: bool = False,
    ) -> None:
        self.rng = rng or random.Random()
        self.resolve_codec = resolve_codec
        self.access_log = access_log
        self.stats = ProxyStats()
        self.actions: list[tuple[Any, ...]] = []
        self.dirty: list[Downstream | Upstream] = []
        self.listeners: dict[str, ListenerState] = {}
        self.clusters: dict[str, ClusterState] = {}
        self.snapshot = snapshot
        self.downstreams: set[Downstream] = set()
        self.upstreams: set[Upstream] = set()
        self._next_conn_id = 0
        #: Every timed event: request/per-try timeouts, retries, paused filters, ejections.
        self.deadlines = DeadlineQueue()
        self.filter_context = FilterContext(self.stats, self.rng, self._emit)
        self.apply_snapshot(snapshot)

    # -- configuration -------------------------------------------------------------------

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Swap in a new config: routes and clusters change, no connection is closed."""
        clusters: dict[str, ClusterState] = {}
        for name, cluster in snapshot.clusters.items():
            state = self.clusters.get(name)
            if state is None:
                state = ClusterState(cluster, self.rng)
            elif state.config != cluster:
                for up in state.reconfigure(cluster, self.rng):
                    self._retire(up)
            clusters[name] = state
        for name, state in self.clusters.items():
            if name not in clusters:
                for up in list(state.mux.values()):
                    self._retire(up)
                state.mux.clear()
        listeners: dict[str, ListenerState] = {}
        for name, listener in snapshot.listeners.items():
            table = RouteTable(snapshot.route_configs[listener.route_config_name])
            current = self.listeners.get(name)
            previous = current.filters if current is not None else None
            filters = ListenerFilters(listener, self.filter_context, previous)
            if current is not None and current.config.codec == listener.codec:
                current.config = listener
                state_ = current
            else:
                factory = self.resolve_codec(listener.codec)
                state_ = ListenerState(listener, table, factory)
            # Table and extras are swapped together: extras are keyed by the table's routes.
            state_.table, state_.extras = table, filters.compile(table)
            state_.filters = filters
            listeners[name] = state_
        self.listeners = listeners
        self.clusters = clusters
        self.snapshot = snapshot

    def _retire(self, up: Upstream) -> None:
        """Take ``up`` out of its pool; it closes once its requests are answered."""
        if up.key is not None and up.cluster.mux.get(up.key) is up:
            del up.cluster.mux[up.key]
        up.retired = True
        if up.in_flight == 0 and up.state is not UpstreamState.CLOSED:
            self._close_upstream(up)

    # -- downstream events ---------------------------------------------------------------

    def downstream_connected(self, listener_name: str, peer: str = "") -> Downstream:
        self._next_conn_id += 1
        d = Downstream(self._next_conn_id, self.listeners[listener_name], peer)
        self.downstreams.add(d)
        self.stats.downstream_connections_total += 1
        self.stats.active_downstream_connections += 1
        return d

    def downstream_data(self, d: Downstream, data: bytes, now: float) -> None:
        if d.closed:
            return
        buf = d.inbuf
        buf += data
        codec = d.codec
        while buf:
            try:
                msg = codec.decode(buf)
            except FrameTooLargeError as e:
                self.stats.downstream_frame_too_large += 1
                self._close_downstream(d, f"{d}: closing, frame too large: {e}")
                return
            except CodecError as e:
                self.stats.downstream_decode_errors += 1
                self._close_downstream(d, f"{d}: closing, bad frame: {e}")
                return
            if msg is None:
                if len(buf) > codec.max_frame_size:
                    self.stats.downstream_frame_too_large += 1
                    self._close_downstream(d, f"{d}: closing, frame over {codec.max_frame_size}")
                return
            mtype = msg.type
            if mtype is _REQUEST or mtype is _ONEWAY:
                self._on_request(d, msg, now)
            elif mtype is _HEARTBEAT:
                self.stats.heartbeats += 1
                reply = codec.heartbeat_reply(msg)
                if reply:
                    self._reply_in_order(d, None, reply)
            else:
                self.stats.downstream_unexpected_frames += 1

    def downstream_closed(self, d: Downstream, now: float) -> None:
        """The client went away (EOF or reset); its requests in flight are abandoned."""
        d.handle = None
        if d.closed:
            return
        if d.inbuf:
            self.stats.downstream_truncated += 1
            self.actions.append((LOG, INFO, f"{d}: closed mid-frame ({len(d.inbuf)} bytes)"))
        self._forget_downstream(d)

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
        self.stats.mutations_dropped += d.codec.dropped_mutations
        for up in list(d.pipelines.values()):
            self._abandon_upstream(up)
        d.pipelines.clear()

    # -- request path --------------------------------------------------------------------

    def _on_request(self, d: Downstream, msg: Message, now: float) -> None:
        listener = d.listener
        route = listener.table.match(msg)
        extras = listener.extras
        if extras is not None:
            ex = extras.get(route)
            if ex is not None:
                self._start(d, msg, route, ex, now)
                return
        if route is None:
            self._local_reply(d, msg, ErrorKind.ROUTE_NOT_FOUND, "no matched route", now)
            return
        cluster_name = route.cluster or route.pick_cluster(self.rng)
        cs = self.clusters.get(cluster_name)
        if cs is None:
            text = f"unknown cluster {cluster_name}"
            self._local_reply(d, msg, ErrorKind.CLUSTER_NOT_FOUND, text, now, route)
            return
        protocol = listener.protocol
        stats = cs.request_stats.get(protocol)
        if stats is None:
            stats = cs.request_stats[protocol] = self.stats.request_stats(
                cs.service, cs.subset, protocol
            )
        if cs.active_requests >= cs.max_requests:
            kind = ErrorKind.OVER_LIMIT
            self._local_reply(d, msg, kind, "max_requests reached", now, route, stats)
            return
        hash_key = None
        if route.hash_keys:
            md = msg.metadata
            hash_key = hash_metadata([md.get(k, "") for k in route.hash_keys])
        idx = cs.lb.pick(hash_key)
        if idx is None:
            kind = ErrorKind.NO_HEALTHY_UPSTREAM
            self._local_reply(d, msg, kind, "no healthy upstream", now, route, stats)
            return
        # Pool key: clients speaking different wire variants (Thrift framed vs THeader, ...)
        # must not share an upstream connection, whose server would see mixed framings.
        up = cs.mux.get((protocol, d.codec.wire_variant, idx)) if listener.multiplexed else None
        if up is None:
            up = self._upstream_for(d, cs, idx, now)
            if up is None:
                kind = ErrorKind.OVER_LIMIT
                self._local_reply(d, msg, kind, "max_connections reached", now, route, stats)
                return
        if up.state is _CONNECTING and cs.pending_requests >= cs.max_pending:
            kind = ErrorKind.OVER_LIMIT
            self._local_reply(d, msg, kind, "max_pending_requests reached", now, route, stats)
            return
        if route.request_mutation is not None:
            msg = self._mutated(d.codec, msg, route.request_mutation)
        self._send(up, ActiveRequest(d, msg, route, cs, now, stats), d.codec, idx)
        if route.mirrors:
            self._mirror(d, msg, route, now)

    def _send(self, up: Upstream, req: ActiveRequest, codec: Codec, idx: int) -> None:
        """Write ``req`` to ``up`` and account for it (mirror copies included)."""
        msg = req.request
        oneway = msg.type is _ONEWAY
        if oneway:
            frame = msg.frame
            if not req.mirror:
                self.stats.oneway_requests += 1
                if req.stats is not None:
                    req.stats.observe(0, 0.0)
        else:
            if up.id_limit:
                rid = up.allocate_id()
                frame = codec.rewrite_request_id(msg, rid)
                up.pending[rid] = req
            else:
                frame = msg.frame
                up.fifo.append(req)
                if not req.mirror:
                    ext = req.ext
                    if ext is None:
                        req.downstream.order.append(req)
                    elif not ext.ordered:
                        ext.ordered = True
                        req.downstream.order.append(req)
            cs = up.cluster
            cs.active_requests += 1
            lb = cs.lb
            lb.active[idx] += 1
            req.lb = lb
            req.endpoint_index = idx
            req.upstream = up
            self.stats.active_requests += 1
        up.out += frame
        state = up.state
        if state is _READY:
            if not up.dirty:
                up.dirty = True
                self.dirty.append(up)
        elif state is _CONNECTING and not oneway:
            up.queued += 1
            up.cluster.pending_requests += 1

    def _untrack(self, req: ActiveRequest) -> None:
        cs = req.cluster
        if cs is not None:
            cs.active_requests -= 1
        lb = req.lb
        if lb is not None and req.endpoint_index < len(lb.active):
            lb.active[req.endpoint_index] -= 1
        self.stats.active_requests -= 1

    def _mirror(self, d: Downstream, msg: Message, route: CompiledRoute, now: float) -> None:
        for name in route.mirror_clusters(self.rng):
            cs = self.clusters.get(name)
            if cs is None or cs.active_requests >= cs.max_requests:
                continue
            idx = cs.lb.pick(None)
            if idx is None:
                continue
            up = self._upstream_for(d, cs, idx, now, mirror=True)
            if up is None:
                continue
            if up.congested:  # a mirror that cannot keep up loses copies; clients never wait
                self.stats.mirror_dropped += 1
                continue
            self.stats.mirrored_requests += 1
            self._send(up, ActiveRequest(None, msg, route, cs, now, None, True), d.codec, idx)

    def _mutated(self, codec: Codec, msg: Message, mutation: dict[str, str]) -> Message:
        """``msg`` with ``mutation`` applied, re-decoded so ids can still be rewritten."""
        frame = codec.encode(msg, mutation)
        if frame is msg.frame:
            return msg
        again = codec.decode(bytearray(frame))
        if again is None:  # pragma: no cover - a codec bug, never expected
            raise CodecError("codec could not decode its own mutated frame")
        return again

    def _upstream_for(
        self, d: Downstream, cs: ClusterState, idx: int, now: float, mirror: bool = False
    ) -> Upstream | None:
        listener = d.listener
        if listener.multiplexed:
            # Mirror copies get connections of their own, so a slow mirror's backpressure
            # (see runtime.protocols) never touches primary traffic to the same cluster.
            pool = (listener.protocol + "\x00mirror") if mirror else listener.protocol
            key = (pool, d.codec.wire_variant, idx)
            up = cs.mux.get(key)
            if up is not None:
                return up
        else:
            pkey = ((cs.config.name + "\x00mirror") if mirror else cs.config.name, idx)
            up = d.pipelines.get(pkey)
            if up is not None:
                return up
        if cs.connections >= cs.max_connections:
            return None
        self._next_conn_id += 1
        up = Upstream(
            self._next_conn_id,
            cs,
            idx,
            listener.new_codec(),
            listener.protocol,
            None if listener.multiplexed else d,
            now + cs.config.connect_timeout,
        )
        up.mirror = mirror
        if listener.multiplexed:
            up.key = key
            cs.mux[key] = up
        else:
            d.pipelines[pkey] = up
        cs.connections += 1
        self.upstreams.add(up)
        self.stats.active_upstream_connections += 1
        self.actions.append((CONNECT, up))
        self.deadlines.push(up.connect_deadline, CONNECT_TIMEOUT, up)
        return up

    # -- filter chain and route policies (timeouts, retries) -----------------------------

    def _emit(self, action: tuple[Any, ...]) -> None:
        self.actions.append(action)

    def _start(
        self, d: Downstream, msg: Message, route: CompiledRoute | None, ex: RouteExtras, now: float
    ) -> None:
        """A request on a route with filters or policies: run the chain, then route."""
        req = ActiveRequest(d, msg, route, None, now, None)
        ext = req.ext = RequestExt(ex.policy, ex.chain)
        if ex.chain:
            self._run_chain(req, ext, 0, now)
        else:
            self._dispatch(req, ext, now)

    def _run_chain(self, req: ActiveRequest, ext: RequestExt, start: int, now: float) -> None:
        chain = ext.chain
        for k in range(start, len(chain)):
            result = chain[k].on_request(req, now)
            if result is None:
                continue
            if type(result) is Stop:
                ext.filter_index = k + 1
                ext.then = result.then
                ext.wait_token += 1
                d = req.downstream
                if not d.listener.multiplexed and not ext.ordered:
                    ext.ordered = True  # hold this request's place in the reply order
                    d.order.append(req)
                if result.resume_at is not None:
                    self.deadlines.push(result.resume_at, RESUME, req, ext.wait_token)
                return
            assert isinstance(result, LocalReply)
            self._policy_reply(req, ext, result.kind, result.message, now)
            return
        self._dispatch(req, ext, now)

    def resume_request(
        self, req: ActiveRequest, token: int, allowed: bool | None, now: float
    ) -> None:
        """An asynchronous filter answer (global rate limit) for a stopped request.

        ``allowed`` True continues the chain, False answers ``OVER_LIMIT``, None (the check
        failed) applies the filter's failure mode. Answers that come after the filter's own
        timeout (or for a request already answered) are ignored.
        """
        ext = req.ext
        if ext is None or ext.done or token != ext.wait_token:
            return
        ext.wait_token += 1
        if allowed is None:
            self.stats.ratelimit_errors += 1
            self._after_stop(req, ext, ext.then, now)
        elif allowed:
            self.stats.ratelimit_ok += 1
            self._after_stop(req, ext, None, now)
        else:
            self.stats.ratelimit_over_limit += 1
            over = LocalReply(ErrorKind.OVER_LIMIT, "global rate limit exceeded")
            self._after_stop(req, ext, over, now)

    def _after_stop(
        self, req: ActiveRequest, ext: RequestExt, then: LocalReply | None, now: float
    ) -> None:
        if req.downstream.closed:
            ext.done = True
        elif then is not None:
            self._policy_reply(req, ext, then.kind, then.message, now)
        else:
            self._run_chain(req, ext, ext.filter_index, now)

    def _dispatch(self, req: ActiveRequest, ext: RequestExt, now: float) -> None:
        """The router for requests with filters or policies (first attempt and retries)."""
        d = req.downstream
        if d.closed:
            ext.done = True
            return
        route = req.route
        if route is None:
            self._policy_reply(req, ext, ErrorKind.ROUTE_NOT_FOUND, "no matched route", now)
            return
        listener = d.listener
        protocol = listener.protocol
        cs = req.cluster
        first = cs is None
        if cs is None:
            cluster_name = route.cluster or route.pick_cluster(self.rng)
            cs = self.clusters.get(cluster_name)
            if cs is None:
                text = f"unknown cluster {cluster_name}"
                self._policy_reply(req, ext, ErrorKind.CLUSTER_NOT_FOUND, text, now)
                return
            req.cluster = cs
            stats = cs.request_stats.get(protocol)
            if stats is None:
                stats = cs.request_stats[protocol] = self.stats.request_stats(
                    cs.service, cs.subset, protocol
                )
            req.stats = stats
            policy = ext.policy
            if policy is not None and policy.timeout is not None and req.request.type is _REQUEST:
                ext.deadline = now + policy.timeout
                self.deadlines.push(ext.deadline, ROUTE_TIMEOUT, req)
            if route.request_mutation is not None:
                req.request = self._mutated(d.codec, req.request, route.request_mutation)
        msg = req.request
        if cs.active_requests >= cs.max_requests:
            self._policy_reply(req, ext, ErrorKind.OVER_LIMIT, "max_requests reached", now)
            return
        hash_key = None
        if route.hash_keys:
            md = msg.metadata
            hash_key = hash_metadata([md.get(k, "") for k in route.hash_keys])
        idx = pick_excluding(cs.lb, hash_key, ext.excluded)
        if idx is None:
            kind = ErrorKind.NO_HEALTHY_UPSTREAM
            self._policy_reply(req, ext, kind, "no healthy upstream", now)
            return
        up = self._upstream_for(d, cs, idx, now)
        if up is None:
            self._policy_reply(req, ext, ErrorKind.OVER_LIMIT, "max_connections reached", now)
            return
        if up.state is _CONNECTING and cs.pending_requests >= cs.max_pending:
            kind = ErrorKind.OVER_LIMIT
            self._policy_reply(req, ext, kind, "max_pending_requests reached", now)
            return
        ext.sent = up.state is _READY
        self._send(up, req, d.codec, idx)
        if msg.type is _ONEWAY:
            ext.done = True
            if ext.ordered:  # a stopped one-way request held a place in the reply order
                self._reply_in_order(d, req, b"")
        else:
            policy = ext.policy
            if policy is not None and policy.per_try_timeout is not None:
                when = now + policy.per_try_timeout
                self.deadlines.push(when, TRY_TIMEOUT, req, ext.attempt)
        if first and route.mirrors:
            self._mirror(d, msg, route, now)

    def _retry(self, req: ActiveRequest, condition: str, now: float) -> bool:
        """Try ``req`` again after a failed attempt, if its policy allows; True if so."""
        ext = req.ext
        if ext is None or ext.done:
            return False
        policy = ext.policy
        if policy is None or req.downstream.closed or not policy.may_retry(ext, condition):
            return False
        if ext.deadline is not None and now >= ext.deadline:
            return False
        if req.endpoint_index >= 0:
            ext.excluded.add(req.endpoint_index)
        req.upstream = None
        ext.attempt += 1
        self.stats.retries += 1
        delay = policy.backoff(ext.attempt, self.rng)
        if delay > 0:
            self.deadlines.push(now + delay, RETRY, req, ext.attempt)
        else:
            self._dispatch(req, ext, now)
        return True

    def _abort_attempt(self, req: ActiveRequest) -> None:
        """Take a timed-out attempt off its upstream; its id stays reserved until the late
        reply comes (which is then dropped), so the id is never reused too early."""
        up = req.upstream
        if up is None:
            return
        req.upstream = None
        if up.state is _CONNECTING and req.ext is not None:
            req.ext.sent = True  # its bytes are queued and will still go out on connect
        if up.state is not _CLOSED:
            pending = up.pending
            for rid, r in pending.items():
                if r is req:
                    pending[rid] = _GONE
                    up.dead += 1
                    break
            else:
                fifo = up.fifo
                for i, r in enumerate(fifo):
                    if r is req:
                        fifo[i] = _GONE
                        up.dead += 1
                        break
            if up.dead > _MAX_DEAD:  # an upstream that stopped answering: stop using it
                self._retire(up)
        self._untrack(req)

    def _endpoint_failed(self, cs: ClusterState, idx: int, now: float) -> None:
        """Outlier detection: count a failure of endpoint ``idx``; maybe eject it."""
        od = cs.outlier
        if od is None or idx < 0:
            return
        until = od.failure(idx, cs.lb, now)
        if until is not None:
            self.stats.outlier_ejections += 1
            e = cs.config.endpoints[idx]
            text = f"{cs.config.name}: ejected {e.address}:{e.port} until {until:.3f}"
            self.actions.append((LOG, WARNING, text))
            self.deadlines.push(until, UNEJECT, cs)

    def _policy_reply(
        self, req: ActiveRequest, ext: RequestExt, kind: ErrorKind, text: str, now: float
    ) -> None:
        """Answer a request that is not in flight upstream with a local error."""
        ext.done = True
        d = req.downstream
        msg = req.request
        self.stats.local_replies[kind] += 1
        stats = req.stats
        if stats is None:
            stats = self.stats.request_stats("unknown", "", d.listener.protocol)
        stats.observe(1, (now - req.start) * 1000.0)
        if self.access_log:
            self._access_log(d, msg, req.route, None, None, kind.value, req.start, now)
        if d.closed:
            return
        data = b"" if msg.type is _ONEWAY else d.codec.error_reply(msg, LocalError(kind, text))
        if ext.ordered:
            self._reply_in_order(d, req, data)
        elif data:
            self._reply_in_order(d, None, data)

    def _on_deadline(self, kind: int, obj: Any, token: int, now: float) -> None:
        if kind == CONNECT_TIMEOUT:
            up: Upstream = obj
            if up.state is _CONNECTING and now >= up.connect_deadline:
                self.upstream_connect_failed(up, "connect timeout", now)
                self.actions.append((CLOSE_UPSTREAM, up))
            return
        if kind == UNEJECT:
            state: ClusterState = obj
            if state.outlier is not None:
                state.outlier.expire(state.lb, now)
            return
        req: ActiveRequest = obj
        ext = req.ext
        if ext is None or ext.done:
            return
        if kind == RESUME:
            if token == ext.wait_token:
                ext.wait_token += 1
                self._after_stop(req, ext, ext.then, now)
        elif kind == RETRY:
            if token == ext.attempt:
                self._dispatch(req, ext, now)
        elif kind == TRY_TIMEOUT:
            if token == ext.attempt and req.upstream is not None:
                self.stats.timeouts += 1
                cs = req.cluster
                if cs is not None:
                    self._endpoint_failed(cs, req.endpoint_index, now)
                self._abort_attempt(req)
                if not self._retry(req, TIMEOUT, now):
                    self._timed_out(req, ext, "per-try timeout", now)
        elif kind == ROUTE_TIMEOUT:
            self.stats.timeouts += 1
            if req.upstream is not None:
                cs = req.cluster
                if cs is not None:
                    self._endpoint_failed(cs, req.endpoint_index, now)
                self._abort_attempt(req)
            self._timed_out(req, ext, "route timeout", now)

    def _timed_out(self, req: ActiveRequest, ext: RequestExt, text: str, now: float) -> None:
        ext.done = True
        d = req.downstream
        self.stats.local_replies[ErrorKind.TIMEOUT] += 1
        if req.stats is not None:
            req.stats.observe(1, (now - req.start) * 1000.0)
        if self.access_log:
            self._access_log(d, req.request, req.route, None, None, "timeout", req.start, now)
        if not d.closed:
            data = d.codec.error_reply(req.request, LocalError(ErrorKind.TIMEOUT, text))
            self._reply_in_order(d, req if ext.ordered else None, data)

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` next has something to do (the runtime arms one timer)."""
        return self.deadlines.next_deadline()

    # -- replies -------------------------------------------------------------------------

    def _local_reply(
        self,
        d: Downstream,
        msg: Message,
        kind: ErrorKind,
        text: str,
        now: float,
        route: CompiledRoute | None = None,
        stats: RequestStats | None = None,
    ) -> None:
        self.stats.local_replies[kind] += 1
        if stats is None:
            stats = self.stats.request_stats("unknown", "", d.listener.protocol)
        stats.observe(1, 0.0)
        if self.access_log:
            self._access_log(d, msg, route, None, None, kind.value, now, now)
        if msg.type is _ONEWAY:
            return
        self._reply_in_order(d, None, d.codec.error_reply(msg, LocalError(kind, text)))

    def _reply_in_order(self, d: Downstream, req: ActiveRequest | None, data: bytes) -> None:
        """Queue ``data`` for the client; pipelined protocols keep request order."""
        if d.closed:
            return
        if not d.listener.multiplexed:
            order = d.order
            if req is None:
                if order:  # an immediate reply must wait behind earlier requests
                    placeholder = ActiveRequest(d, _PLACEHOLDER, None, None, 0.0, None)
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
        d.out += data
        if not d.dirty:
            d.dirty = True
            self.dirty.append(d)

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
        self.stats.local_replies[kind] += 1
        if req.stats is not None:
            req.stats.observe(1, (now - req.start) * 1000.0)
        if self.access_log:
            self._access_log(
                d, req.request, req.route, req.upstream, None, kind.value, req.start, now
            )
        if not d.closed:
            self._reply_in_order(d, req, d.codec.error_reply(req.request, LocalError(kind, text)))

    # -- upstream events -----------------------------------------------------------------

    def upstream_connected(self, up: Upstream, now: float) -> None:
        if up.state is not _CONNECTING:
            return
        up.state = UpstreamState.READY
        self.stats.upstream_connects += 1
        up.cluster.pending_requests -= up.queued
        up.queued = 0
        for req in (*up.pending.values(), *up.fifo) if up.out else ():
            if req.ext is not None:
                req.ext.sent = True
        if up.out and not up.dirty:
            up.dirty = True
            self.dirty.append(up)

    def upstream_connect_failed(self, up: Upstream, reason: str, now: float) -> None:
        if up.state is not _CONNECTING:
            return
        self.stats.upstream_connect_failures += 1
        e = up.endpoint
        self.actions.append(
            (LOG, WARNING, f"{up}: connect to {e.address}:{e.port} failed: {reason}")
        )
        self._endpoint_failed(up.cluster, up.endpoint_index, now)
        self._drop_upstream(
            up,
            ErrorKind.NO_HEALTHY_UPSTREAM,
            f"upstream connect failed: {reason}",
            now,
            CONNECT_FAILURE,
        )

    def upstream_data(self, up: Upstream, data: bytes, now: float) -> None:
        if up.state is _CLOSED:
            return
        buf = up.inbuf
        buf += data
        codec = up.codec
        while buf:
            try:
                msg = codec.decode(buf)
            except CodecError as e:
                self.stats.upstream_decode_errors += 1
                self.actions.append((LOG, WARNING, f"{up}: bad frame from upstream: {e}"))
                self._endpoint_failed(up.cluster, up.endpoint_index, now)
                text = f"bad upstream response: {e}"
                self._drop_upstream(up, ErrorKind.BAD_RESPONSE, text, now, RESET)
                self.actions.append((CLOSE_UPSTREAM, up))
                return
            if msg is None:
                break
            mtype = msg.type
            if mtype is _RESPONSE or mtype is _ERROR:
                self._on_response(up, msg, now)
            elif mtype is _HEARTBEAT:
                # Never forwarded to clients; a server's ping is answered so that servers
                # which drop silent connections (Dubbo) keep our shared connection.
                pong = codec.heartbeat_reply(msg)
                if pong:
                    up.out += pong
                    if not up.dirty:
                        up.dirty = True
                        self.dirty.append(up)
        if up.retired and up.in_flight == 0:
            self._close_upstream(up)

    def _on_response(self, up: Upstream, msg: Message, now: float) -> None:
        multiplexed = up.id_limit
        if multiplexed:
            req = up.pending.pop(msg.request_id, None)  # type: ignore[arg-type]
        else:
            req = up.fifo.popleft() if up.fifo else None
        if req is None:
            self.stats.upstream_unmatched_responses += 1
            return
        if req is _GONE:  # the request timed out; its id was kept reserved until now
            up.dead -= 1
            self.stats.late_responses += 1
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
        ext = req.ext
        if ext is not None or cs.outlier is not None:
            failed = msg.type is _ERROR or msg.status is _STATUS_ERROR
            od = cs.outlier
            if od is not None:
                if failed:
                    self._endpoint_failed(cs, req.endpoint_index, now)
                elif req.endpoint_index < len(od.consecutive):
                    od.success(req.endpoint_index)
            if ext is not None:
                if ext.done:
                    return
                if failed and self._retry(req, ERROR_RESPONSE, now):
                    return
                ext.done = True
        code = 0 if (msg.status is _OK and msg.type is _RESPONSE) else 1
        req.stats.observe(code, (now - req.start) * 1000.0)  # type: ignore[union-attr]
        d = req.downstream
        if self.access_log:
            self._access_log(d, req.request, req.route, up, msg, str(code), req.start, now)
        if d.closed:
            return
        route = req.route
        if route is not None and route.response_mutation is not None:
            msg = self._mutated(up.codec, msg, route.response_mutation)
        if multiplexed:
            d.out += up.codec.rewrite_request_id(msg, req.request.request_id)  # type: ignore[arg-type]
            if not d.dirty:
                d.dirty = True
                self.dirty.append(d)
        else:
            self._reply_in_order(d, req, msg.frame)

    def upstream_closed(self, up: Upstream, now: float) -> None:
        """The upstream connection closed (peer EOF, reset, or after CLOSE_UPSTREAM)."""
        up.handle = None
        if up.state is _CLOSED:
            return
        if up.in_flight:
            self.stats.upstream_resets += 1
            self.actions.append((LOG, WARNING, f"{up}: reset with {up.in_flight} in flight"))
            self._endpoint_failed(up.cluster, up.endpoint_index, now)
        text = "upstream connection reset"
        self._drop_upstream(up, ErrorKind.UPSTREAM_RESET, text, now, RESET)

    def _drop_upstream(
        self, up: Upstream, kind: ErrorKind, text: str, now: float, condition: str = ""
    ) -> None:
        """Mark ``up`` closed, remove it from pools and fail what it had in flight."""
        if up.state is _CONNECTING:
            up.cluster.pending_requests -= up.queued
            up.queued = 0
        up.state = UpstreamState.CLOSED
        self._unpool(up)
        failed = [r for r in (*up.pending.values(), *up.fifo) if r is not _GONE]
        up.pending.clear()
        up.fifo.clear()
        up.out.clear()
        up.dead = 0
        for req in failed:
            self._fail_request(req, kind, text, now, condition)

    def _unpool(self, up: Upstream) -> None:
        if up not in self.upstreams:
            return
        self.upstreams.discard(up)
        cs = up.cluster
        cs.connections -= 1
        self.stats.active_upstream_connections -= 1
        self.stats.mutations_dropped += up.codec.dropped_mutations
        if up.key is not None and cs.mux.get(up.key) is up:
            del cs.mux[up.key]
        owner = up.owner
        if owner is not None:
            for k, v in list(owner.pipelines.items()):
                if v is up:
                    del owner.pipelines[k]

    def _close_upstream(self, up: Upstream) -> None:
        """Close an idle upstream we no longer need."""
        up.state = UpstreamState.CLOSED
        self._unpool(up)
        self.actions.append((CLOSE_UPSTREAM, up))

    def _abandon_upstream(self, up: Upstream) -> None:
        """Close a dedicated upstream whose client left; its requests are dropped silently."""
        for req in (*up.pending.values(), *up.fifo):
            if req is not _GONE:
                self._untrack(req)
        up.pending.clear()
        up.dead = 0
        up.fifo.clear()
        if up.state is _CONNECTING:
            up.cluster.pending_requests -= up.queued
            up.queued = 0
        self._close_upstream(up)

    # -- time and shutdown ---------------------------------------------------------------

    def on_timer(self, now: float) -> None:
        """Fire every deadline that has passed: connect timeouts, request and per-try
        timeouts, delayed retries, paused filters, ends of outlier ejections."""
        for kind, obj, token in self.deadlines.pop_due(now):
            self._on_deadline(kind, obj, token, now)

    def close_all(self) -> None:
        """Close every connection (end of a drain)."""
        for d in list(self.downstreams):
            self._close_downstream(d, f"{d}: closing for shutdown", INFO)
        for up in list(self.upstreams):
            self._close_upstream(up)

    def take_actions(self) -> list[tuple[Any, ...]]:
        actions = self.actions
        self.actions = []
        return actions

    # -- access log ----------------------------------------------------------------------

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
            )
        )


_PLACEHOLDER = Message(MessageType.HEARTBEAT, None, b"", 0, 0, metadata={})
#: Stands in an upstream's pending/fifo for a timed-out request until its late reply arrives.
_GONE = ActiveRequest(None, _PLACEHOLDER, None, None, 0.0, None, True)
#: Timed-out requests an upstream may owe us before we stop sending it new ones.
_MAX_DEAD = 1024
