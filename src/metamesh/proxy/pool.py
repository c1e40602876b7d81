"""The upstream connection pool and multiplexer (sans-IO).

Protocols with request ids share one upstream connection per pool key (protocol, the codec's
``wire_variant`` and endpoint index, see :data:`metamesh.proxy.upstream.PoolKey`): a Thrift
framed client and a THeader client never share one, whose server would see mixed framings.
Each request keeps its client's id upstream while no request in flight on that connection
holds it (then neither direction rewrites the frame), else gets a fresh one
(``Upstream.allocate_id``), and is kept in the connection's ``pending`` map until its
reply; protocols without ids get a connection per client and endpoint and a ``fifo`` of
requests in send order, or, when their codec says requests do not depend on the connection
(``Codec.shares_upstream``: Redis), share pooled connections keyed as above, each with its
``fifo`` (replies come back in send order on each connection; each client is still answered
in its own request order by :mod:`metamesh.proxy.replies`). A codec's
``upstream_preamble`` (Redis AUTH/SELECT) is queued first on every new connection.

This layer also owns the connection lifecycle events: connected (queued bytes go out),
connect failure, close/reset (everything in flight fails, possibly into a retry), and
retirement: a connection taken out of its pool (endpoint removed, too many dead ids, its
``max_requests_per_connection`` used up) takes no new requests and closes when its last
request is answered.
"""

from __future__ import annotations

from typing import Final

from metamesh.codecs import (
    Codec,
    ErrorKind,
    Message,
)
from metamesh.codecs.message import Ownership, Redirect, metadata_get
from metamesh.proxy.core import (
    _CLOSED,
    _CONNECTING,
    _ONEWAY,
    _READY,
    _STATUS_ERROR,
    CLOSE_UPSTREAM,
    CONNECT,
    GONE,
    LOG,
    TABLE,
    TABLE_REFRESH,
    WARNING,
)
from metamesh.proxy.lb import hash_metadata
from metamesh.proxy.listener import Downstream
from metamesh.proxy.policy import (
    CONNECT_FAILURE,
    CONNECT_TIMEOUT,
    RESET,
    pick_excluding,
)
from metamesh.proxy.replies import Replies
from metamesh.proxy.router import CompiledRoute
from metamesh.proxy.upstream import ActiveRequest, ClusterState, Upstream, UpstreamState

#: Why :meth:`UpstreamPool._pick_upstream` found no upstream: the local reply's kind and text.
Refusal = tuple[ErrorKind, str]
MAX_REQUESTS: Final[Refusal] = (ErrorKind.OVER_LIMIT, "max_requests reached")
NO_HEALTHY: Final[Refusal] = (ErrorKind.NO_HEALTHY_UPSTREAM, "no healthy upstream")
MAX_CONNECTIONS: Final[Refusal] = (ErrorKind.OVER_LIMIT, "max_connections reached")
MAX_PENDING: Final[Refusal] = (ErrorKind.OVER_LIMIT, "max_pending_requests reached")
#: How many MOVED/ASK redirections one request may follow (a slot migrating back and forth).
MAX_REDIRECTS: Final = 5


class UpstreamPool(Replies):
    """Upstream connections: pooling, sending, connect/close/reset handling."""

    def _pick_upstream(
        self,
        d: Downstream,
        msg: Message,
        route: CompiledRoute,
        cs: ClusterState,
        excluded: set[int] | None,
        now: float,
    ) -> Upstream | Refusal:
        """Circuit breakers -> load balancer (skipping ``excluded`` endpoints, which already
        failed this request) -> pooled upstream for ``msg`` on cluster ``cs``, or the
        :data:`Refusal` to answer with. Both request paths route through here (the plain
        one skips the call when there is no hash key and nothing to exclude: ``_on_request``)."""
        if cs.active_requests >= cs.max_requests:
            return MAX_REQUESTS
        idx = self._slot_owner(cs, msg, excluded) if cs.slots is not None else None
        if idx is None:
            hash_key = None
            if route.hash_keys:
                md = msg.metadata
                hash_key = hash_metadata([metadata_get(md, k) or "" for k in route.hash_keys])
            idx = pick_excluding(cs.lb, hash_key, excluded) if excluded else cs.lb.pick(hash_key)
        if idx is None:
            return NO_HEALTHY
        return self._pooled_upstream(d, cs, idx, now)

    def _slot_owner(self, cs: ClusterState, msg: Message, excluded: set[int] | None) -> int | None:
        """Cluster mode: the endpoint known to own the request's ``slot`` (from ``CLUSTER
        SLOTS`` and MOVED replies), if it is healthy and not excluded; None leaves the pick to
        the balancer. A read whose ``read_policy`` allows replicas (Envoy's read policies) may
        go to one of the slot's replicas instead: ``REPLICA`` / ``PREFER_REPLICA`` a random
        usable replica (else the primary), ``ANY`` a random usable node of the slot,
        ``PREFER_MASTER`` the primary, else a replica."""
        md = msg.metadata
        slot = metadata_get(md, "slot")
        slots = cs.slots
        if not slot or slots is None:
            return None
        key = int(slot)
        idx = slots.get(key)
        healthy = cs.lb.healthy
        usable = idx is not None and healthy[idx] and not (excluded and idx in excluded)
        policy = metadata_get(md, "read_policy")
        if policy:
            replicas = [
                r
                for r in cs.replicas.get(key, ())
                if healthy[r] and not (excluded and r in excluded)
            ]
            if replicas and (policy != "PREFER_MASTER" or not usable):
                if policy == "ANY" and usable:
                    assert idx is not None
                    replicas.append(idx)
                return replicas[self.rng.randrange(len(replicas))]
        return idx if usable else None

    def _adopt_owners(self, up: Upstream, owners: Ownership, now: float) -> None:
        """A cluster node's slot table (``CLUSTER SLOTS``, asked on every new connection in
        cluster mode): slots whose owner is one of the cluster's endpoints go to it."""
        cs = up.cluster
        slots = cs.slots
        if slots is None:
            return
        cs.table_refresh_at = now + TABLE_REFRESH
        index = {(e.address, e.port): i for i, e in enumerate(cs.config.endpoints)}
        for first, last, address, port in owners.ranges:
            idx = index.get((address, port))
            if idx is not None:
                for slot in range(max(first, 0), min(last, 16383) + 1):
                    slots[slot] = idx
        by_range: dict[tuple[int, int], list[int]] = {}
        for first, last, address, port in owners.replicas:
            idx = index.get((address, port))
            if idx is not None:
                by_range.setdefault((first, last), []).append(idx)
        replicas: dict[int, tuple[int, ...]] = {}
        for (first, last), idxs in by_range.items():
            copies = tuple(idxs)
            for slot in range(max(first, 0), min(last, 16383) + 1):
                replicas[slot] = copies
        cs.replicas = replicas  # the latest table whole: a failover moves replicas too

    def _cluster_reply(self, up: Upstream, req: ActiveRequest, msg: Message, now: float) -> bool:
        """A reply from a cluster in Redis Cluster mode: a redirection is followed (True: the
        request went again, see :meth:`_redirected`); any other reply confirms that its
        endpoint owns the request's slot, so the next request for that slot goes there
        (unless the request was redirected: a MOVED already said so, an ASK did not, and
        unless it came from a replica). The cluster's table is asked for again when due."""
        cs = up.cluster
        if now >= cs.table_refresh_at:
            self._ask_owners(up, now)
        if msg.status is _STATUS_ERROR and type(msg.codec_state) is Redirect:
            return self._redirected(up, req, msg, now)
        slots = cs.slots
        slot = metadata_get(req.request.metadata, "slot")
        if slot and slots is not None and req.endpoint_index >= 0 and not req.redirects:
            key = int(slot)
            if req.endpoint_index not in cs.replicas.get(key, ()):  # (a replica read: a copy)
                slots[key] = req.endpoint_index  # (after an ASK it is only importing it)
        return False

    def _ask_owners(self, up: Upstream, now: float) -> None:
        """Ask ``up``'s node for the cluster's key table again (Redis ``CLUSTER SLOTS``), on
        this connection, behind what it already carries: replicas that joined or were
        promoted, slots that moved. Once per :data:`TABLE_REFRESH` per cluster."""
        cs = up.cluster
        cs.table_refresh_at = now + TABLE_REFRESH  # whether or not the answer comes
        query = up.codec.ownership_query()
        if not query or up.id_limit or up.state is not _READY:
            return
        up.out.append(query)
        up.fifo.append(TABLE)
        up.dead += 1
        if not up.dirty:
            up.dirty = True
            self.dirty.append(up)

    def _redirected(self, up: Upstream, req: ActiveRequest, msg: Message, now: float) -> bool:
        """A cluster's ``MOVED``/``ASK`` reply (a :class:`Redirect` from the codec): send the
        request again to the endpoint named, remembering a MOVED slot's new owner; True when
        it went. The reply reaches the client instead when the endpoint is not one of the
        cluster's, no upstream can take it, or the request was redirected too often."""
        target = msg.codec_state
        cs = up.cluster
        slots = cs.slots
        if type(target) is not Redirect or slots is None or req.redirects >= MAX_REDIRECTS:
            return False
        endpoints = cs.config.endpoints
        idx = next(
            (
                i
                for i, e in enumerate(endpoints)
                if (e.address, e.port) == (target.address, target.port)
            ),
            None,
        )
        if idx is None:
            return False
        if not target.once:
            slots[target.key] = idx
            cs.table_refresh_at = now  # the table changed: ask for it with the next reply
        d: Downstream = req.downstream
        nxt = self._pooled_upstream(d, cs, idx, now)
        if isinstance(nxt, tuple):
            return False
        req.redirects += 1
        self.stats.redirects += 1
        if target.preamble:  # ASKING: its reply holds a place in the FIFO and is dropped
            nxt.out.append(target.preamble)
            nxt.fifo.append(GONE)
            nxt.dead += 1
        self._send(nxt, req, d.codec, idx)
        if req.ext is None and not d.listener.multiplexed:
            d.order.pop()  # _send queued it again; it holds its first place in the reply order
        return True

    def _pooled_upstream(
        self, d: Downstream, cs: ClusterState, idx: int, now: float
    ) -> Upstream | Refusal:
        """The pooled upstream for ``d``'s requests to endpoint ``idx`` of ``cs`` (a new one
        if needed), or the :data:`Refusal` to answer with."""
        listener = d.listener
        # Pool key: clients speaking different wire variants (Thrift framed vs THeader, ...)
        # must not share an upstream connection, whose server would see mixed framings.
        up = cs.mux.get((listener.protocol, d.codec.wire_variant, idx)) if listener.shared else None
        if up is None:
            up = self._upstream_for(d, cs, idx, now)
            if up is None:
                return MAX_CONNECTIONS
        if up.state is _CONNECTING and cs.pending_requests >= cs.max_pending:
            return MAX_PENDING
        return up

    def _upstream_for(
        self, d: Downstream, cs: ClusterState, idx: int, now: float, mirror: bool = False
    ) -> Upstream | None:
        listener = d.listener
        if listener.shared:
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
        codec = listener.new_codec()
        codec.expect_variant(d.codec.wire_variant)
        up = Upstream(
            self._next_conn_id,
            cs,
            idx,
            codec,
            listener.protocol,
            None if listener.shared else d,
            now + cs.config.connect_timeout,
        )
        up.mirror = mirror
        preamble = codec.upstream_preamble(cs.config.protocol_options_map)
        if preamble:
            up.out.append(preamble)
        if listener.shared:
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
            limit = up.id_limit
            if limit:
                # The client's own id travels unchanged while no other request in flight on
                # this connection holds it (ids from one client, or a JVM-wide counter, are
                # distinct): no rewrite here, none on the way back. Otherwise a fresh one.
                rid = msg.request_id
                pending = up.pending
                if rid is not None and 0 <= rid < limit and rid not in pending:
                    frame = msg.frame
                else:
                    rid = up.allocate_id()
                    frame = codec.rewrite_request_id(msg, rid)
                pending[rid] = req
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
        up.out.append(frame)
        state = up.state
        if state is _READY:
            if not up.dirty:
                up.dirty = True
                self.dirty.append(up)
        elif state is _CONNECTING and not oneway:
            up.queued += 1
            up.cluster.pending_requests += 1
        left = up.requests_left
        if left:  # max_requests_per_connection: the last one retires the connection
            up.requests_left = left - 1
            if left == 1:
                self._retire(up)

    def _retire(self, up: Upstream) -> None:
        """Take ``up`` out of its pool: it takes no new requests and closes once drained
        (a connection still connecting first sends what it has queued)."""
        self._leave_pool(up)
        up.retired = True
        state = up.state
        if up.in_flight == 0 and state is not _CLOSED and not (state is _CONNECTING and up.out):
            self._close_upstream(up)

    def _leave_pool(self, up: Upstream) -> None:
        """New requests no longer find ``up`` (shared pool or its client's pipelines)."""
        cs = up.cluster
        if up.key is not None and cs.mux.get(up.key) is up:
            del cs.mux[up.key]
        owner = up.owner
        if owner is not None:
            for k, v in list(owner.pipelines.items()):
                if v is up:
                    del owner.pipelines[k]

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
        if up.retired and up.in_flight == 0:  # queued bytes are flushed before the close
            self._close_upstream(up)

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
        slots = up.cluster.slots
        if slots:  # cluster mode: the others will say who owns this node's slots now
            gone = up.endpoint_index
            for slot in [k for k, i in slots.items() if i == gone]:
                del slots[slot]
        failed = [r for r in (*up.pending.values(), *up.fifo) if r is not GONE]
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
        self._leave_pool(up)

    def _close_upstream(self, up: Upstream) -> None:
        """Close an idle upstream we no longer need."""
        up.state = UpstreamState.CLOSED
        self._unpool(up)
        self.actions.append((CLOSE_UPSTREAM, up))

    def _abandon_upstream(self, up: Upstream) -> None:
        """Close a dedicated upstream whose client left; its requests are dropped silently."""
        for req in (*up.pending.values(), *up.fifo):
            if req is not GONE:
                self._untrack(req)
        up.pending.clear()
        up.dead = 0
        up.fifo.clear()
        if up.state is _CONNECTING:
            up.cluster.pending_requests -= up.queued
            up.queued = 0
        self._close_upstream(up)
