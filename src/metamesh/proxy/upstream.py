"""Upstream side of the core: cluster runtime state, upstream connections, in-flight requests.

These are plain slotted objects that :class:`metamesh.proxy.connection.ConnectionManager`
drives; they hold state but make no decisions. Each cluster has a :class:`ClusterState` (its
config, its load balancer, circuit-breaker counters and its pool of multiplexed upstream
connections, one per endpoint, protocol and codec ``wire_variant``, so a Thrift framed client
and a THeader client never share one). An :class:`Upstream` is one connection: for protocols
with request ids its ``pending`` dict maps the proxy-assigned upstream id to the
:class:`ActiveRequest`; for protocols without ids ``fifo`` holds requests in send order.

The runtime attaches its transport adapter to ``handle`` and writes ``out`` when the core lists
the connection as dirty; the core never performs I/O.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Hashable
from typing import Any

from metamesh.codecs import Codec, Message
from metamesh.proxy.config import Cluster, Endpoint
from metamesh.proxy.lb import LoadBalancer, create_load_balancer
from metamesh.proxy.policy import OutlierDetector, RequestExt
from metamesh.proxy.router import CompiledRoute
from metamesh.proxy.stats import RequestStats
from metamesh.proxy.telemetry import Origin, Workload
from metamesh.proxy.tracing import Span

#: Key of a shared multiplexed connection: (protocol, codec wire variant, endpoint index).
PoolKey = tuple[str, Hashable, int]


class UpstreamState(enum.IntEnum):
    CONNECTING = 0
    READY = 1
    CLOSED = 2


class ClusterState:
    """Runtime state of one cluster; survives config swaps that keep the cluster's name."""

    __slots__ = (
        "active_requests",
        "config",
        "connections",
        "lb",
        "max_connections",
        "max_pending",
        "max_requests",
        "max_requests_per_connection",
        "mux",
        "outlier",
        "peers",
        "pending_requests",
        "replicas",
        "request_stats",
        "service",
        "slots",
        "subset",
        "table_refresh_at",
    )

    def __init__(self, config: Cluster, rng: random.Random) -> None:
        self.config = config
        self.lb: LoadBalancer = create_load_balancer(config.lb_policy, config.endpoints, rng)
        self.outlier: OutlierDetector | None = None
        self._cache_settings()
        #: A client connection's origin -> the request stats of each endpoint (by index; the
        #: last one, index -1, for requests answered before an endpoint was picked).
        self.request_stats: dict[Origin, list[RequestStats]] = {}
        #: What the proxies in front of endpoints said about themselves (metadata exchange),
        #: by endpoint index.
        self.peers: dict[int, Workload] = {}
        self.active_requests = 0
        self.pending_requests = 0  # waiting for an upstream connection to be established
        self.connections = 0
        #: (protocol, codec wire variant, endpoint index) -> shared multiplexed connection
        self.mux: dict[PoolKey, Upstream] = {}

    def reconfigure(self, config: Cluster, rng: random.Random) -> list[Upstream]:
        """Adopt a new config; returns pooled connections whose endpoint disappeared, or all of
        them when the TLS to the endpoints changed (they were opened with the old one)."""
        old_endpoints = self.config.endpoints
        tls_changed = _tls_of(self.config) != _tls_of(config)
        self.config = config
        old_outlier = self.outlier
        self.lb = create_load_balancer(config.lb_policy, config.endpoints, rng)
        self._cache_settings()
        if self.outlier is not None:
            self.outlier.adopt(old_outlier, self.lb)
        self.request_stats = {}
        self.peers = {}
        index = {(e.address, e.port): i for i, e in enumerate(config.endpoints)}
        kept: dict[PoolKey, Upstream] = {}
        retired: list[Upstream] = []
        for (protocol, variant, i), up in self.mux.items():
            e = old_endpoints[i] if i < len(old_endpoints) else up.endpoint
            j = index.get((e.address, e.port))
            if j is None or tls_changed or config.endpoints[j].transport_match != e.transport_match:
                retired.append(up)
            else:
                up.endpoint_index = j
                kept[(protocol, variant, j)] = up
                up.key = (protocol, variant, j)
        self.mux = kept
        return retired

    def _cache_settings(self) -> None:
        """Copy what the request path reads into flat attributes (one lookup each)."""
        config = self.config
        self.service = config.service
        self.subset = config.subset
        self.max_requests = config.circuit_breakers.max_requests
        self.max_pending = config.circuit_breakers.max_pending_requests
        self.max_connections = config.circuit_breakers.max_connections
        self.max_requests_per_connection = config.max_requests_per_connection or 0
        od = config.outlier_detection
        self.outlier = OutlierDetector(od, config.endpoints) if od is not None else None
        #: Redis Cluster mode (protocol option ``mode: CLUSTER``): slot -> endpoint index,
        #: learned from the MOVED redirections the cluster answers (see pool._redirected).
        self.slots: dict[int, int] | None = (
            {} if dict(config.protocol_options).get("mode") == "CLUSTER" else None
        )
        #: Cluster mode: slot -> the endpoint indexes of its replicas (from ``CLUSTER SLOTS``),
        #: for reads a RedisService ``readPolicy`` lets go to replicas.
        self.replicas: dict[int, tuple[int, ...]] = {}
        #: Cluster mode: when the key table is next asked for again (pool._ask_owners).
        self.table_refresh_at = 0.0


class Peer:
    """What the runtime's end-of-turn flush needs from either side of a connection: frames to
    write (``out``), whether it is listed in the core's ``dirty`` list, and the runtime's
    ``handle`` (its transport adapter). One base class so the native build reads these as
    struct fields whichever side the peer is."""

    __slots__ = ("dirty", "handle", "out")

    def __init__(self) -> None:
        self.out: list[bytes] = []  # frames to write, once per loop turn
        self.dirty = False
        self.handle: Any = None


class Upstream(Peer):
    """One upstream connection (multiplexed, or dedicated to one downstream when ``owner``)."""

    __slots__ = (
        "cluster",
        "codec",
        "congested",
        "connect_deadline",
        "dead",
        "endpoint",
        "endpoint_index",
        "fifo",
        "id",
        "id_limit",
        "inbuf",
        "key",
        "mirror",
        "next_id",
        "owner",
        "pending",
        "protocol",
        "queued",
        "requests_left",
        "retired",
        "state",
        "tell",
    )

    def __init__(
        self,
        conn_id: int,
        cluster: ClusterState,
        endpoint_index: int,
        codec: Codec,
        protocol: str,
        owner: Any,
        connect_deadline: float,
    ) -> None:
        super().__init__()
        self.id = conn_id
        self.cluster = cluster
        self.endpoint_index = endpoint_index
        self.endpoint: Endpoint = cluster.config.endpoints[endpoint_index]
        self.codec = codec
        self.protocol = protocol
        self.owner = owner  # the Downstream for dedicated (pipelined) connections, else None
        self.inbuf = bytearray()
        self.state = UpstreamState.CONNECTING
        self.connect_deadline = connect_deadline
        self.pending: dict[int, ActiveRequest] = {}
        self.fifo: deque[ActiveRequest] = deque()
        bits = codec.request_id_bits
        # Positive ids only, so signed 32-bit seqids (Thrift) never go negative.
        self.id_limit = (1 << (bits - 1)) if bits else 0
        self.next_id = 1
        self.queued = 0  # requests counted in cluster.pending_requests while connecting
        self.dead = 0  # timed-out requests whose slot is kept until their late reply
        self.retired = False
        #: Requests this connection may still carry (max_requests_per_connection); 0: no limit.
        self.requests_left = cluster.max_requests_per_connection
        #: Carries only mirror copies (never shares a connection with primary traffic).
        self.mirror = False
        #: Set by the runtime while the write buffer is over its high-water mark.
        self.congested = False
        self.key: PoolKey | None = None
        #: The first request sent here carries this proxy's workload (:mod:`.exchange`); not
        #: to the local app behind an inbound listener.
        self.tell = not cluster.config.name.startswith("inbound|")

    @property
    def in_flight(self) -> int:
        return len(self.pending) + len(self.fifo) - self.dead

    def allocate_id(self) -> int:
        """A fresh upstream request id not currently in flight on this connection."""
        rid = self.next_id
        pending = self.pending
        limit = self.id_limit
        while rid in pending:
            rid = rid + 1 if rid + 1 < limit else 1
        self.next_id = rid + 1 if rid + 1 < limit else 1
        return rid

    def __repr__(self) -> str:
        e = self.endpoint
        return f"Upstream#{self.id}({self.cluster.config.name} {e.address}:{e.port})"


class ActiveRequest:
    """A request forwarded upstream and not yet answered (or a reply waiting its turn)."""

    __slots__ = (
        "cluster",
        "downstream",
        "endpoint_index",
        "ext",
        "lb",
        "mirror",
        "redirects",
        "reply",
        "request",
        "route",
        "span",
        "start",
        "stats",
        "upstream",
    )

    def __init__(
        self,
        downstream: Any,
        request: Message,
        route: CompiledRoute | None,
        cluster: ClusterState | None,
        start: float,
        stats: RequestStats | None,
        mirror: bool = False,
    ) -> None:
        self.downstream = downstream
        self.request = request
        self.route = route
        self.cluster = cluster
        self.lb: LoadBalancer | None = None
        self.endpoint_index = -1
        self.upstream: Upstream | None = None
        self.start = start
        self.stats = stats
        self.mirror = mirror
        self.reply: bytes | None = None  # set when answered; used to keep pipelined order
        self.redirects = 0  # MOVED/ASK redirections followed (cluster mode)
        self.ext: RequestExt | None = None  # timeouts/retries/filter state, when the route has any
        self.span: Span | None = None  # its trace span, when traced (see :mod:`.tracing`)


def _tls_of(config: Cluster) -> tuple[object, ...]:
    """What an upstream connection's TLS was opened with."""
    return (
        config.tls_mode,
        config.tls_sni,
        config.tls_subject_alt_names,
        config.tls_files,
        config.tls_endpoint_match,
    )
