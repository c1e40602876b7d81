"""Listener-side state of the core: a listener's live settings and one client connection.

Plain slotted objects, like :mod:`metamesh.proxy.upstream` on the other side: they hold state
and make no decisions. A :class:`ListenerState` survives config swaps (its route ``table`` and
compiled per-route ``extras`` are replaced together); a :class:`Downstream` is one accepted
client, with its own codec instance, input buffer and coalesced output buffer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from metamesh.codecs import Codec
from metamesh.proxy.config import Listener
from metamesh.proxy.filters.chain import ListenerFilters, RouteExtras
from metamesh.proxy.router import CompiledRoute, RouteTable
from metamesh.proxy.stats import TcpStats
from metamesh.proxy.telemetry import UNKNOWN, UNKNOWN_WORKLOAD, Origin
from metamesh.proxy.upstream import ActiveRequest, Peer, Upstream


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Process-wide limits on client connections (``metamesh proxy``/``up`` options).

    ``idle_timeout``: the default for listeners that set none (a listener's own, from xDS or
    the static YAML, wins; 0 = never), seconds with nothing owed before a client is closed.
    ``frame_timeout``: a frame that has started arriving must be complete within this many
    seconds (slow-loris clients), 0 = never. ``max_downstreams``: client connections held at
    once across listeners, 0 = no cap; at the cap a new client takes the place of the client
    idle longest, or is refused when none is idle.

    A client that does not read its replies is paused first (the runtime's write-buffer
    backpressure) and closed when it stays behind: ``unread_timeout`` seconds above the
    high-water mark without draining to the low-water mark, or, while it is behind, queued
    replies past ``max_unread_bytes`` (a reply to a client that is keeping up is never cut,
    whatever its size). 0 turns either off.
    """

    idle_timeout: float = 3600.0
    frame_timeout: float = 30.0
    max_downstreams: int = 0
    unread_timeout: float = 60.0
    max_unread_bytes: int = 64 * 1024 * 1024


class ListenerState:
    """A listener's live settings; ``table`` is replaced on a config swap."""

    __slots__ = (
        "codec_factory",
        "config",
        "extras",
        "filters",
        "multiplexed",
        "protocol",
        "shared",
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
        #: Replies are matched by request id (else by order, and each client is answered in
        #: its request order).
        self.multiplexed = probe.request_id_bits is not None
        #: Clients share pooled upstream connections (multiplexed, or in order on each
        #: connection for codecs that allow it: ``Codec.shares_upstream``).
        self.shared = self.multiplexed or probe.shares_upstream

    def new_codec(self) -> Codec:
        size = self.config.max_frame_size
        options = self.config.codec_options
        if options:
            opts = dict(options)
            if size:
                return self.codec_factory(max_frame_size=size, options=opts)
            return self.codec_factory(options=opts)
        return self.codec_factory(max_frame_size=size) if size else self.codec_factory()


class Downstream(Peer):
    """One client connection."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "closed",
        "codec",
        "eof",
        "frame_started",
        "hear",
        "id",
        "idle_since",
        "inbuf",
        "listener",
        "order",
        "origin",
        "owed",
        "peer",
        "pipelines",
        "principal",
        "tcp",
    )

    def __init__(
        self,
        conn_id: int,
        listener: ListenerState,
        peer: str,
        now: float = 0.0,
        principal: str = "",
    ) -> None:
        super().__init__()
        self.id = conn_id
        self.listener = listener
        self.codec = listener.new_codec()
        self.peer = peer
        #: The verified peer identity (``td/ns/<ns>/sa/<sa>``) on a mutual TLS listener.
        self.principal = principal
        self.inbuf = bytearray()
        self.closed = False
        #: The client ended its sending side (FIN): no more requests will come.
        self.eof = False
        #: Two-way requests from this client not answered yet (closing waits for them after EOF).
        self.owed = 0
        #: Since when nothing has been owed to the client (for the listener's idle_timeout).
        self.idle_since = now
        #: When the partial frame in ``inbuf`` started arriving (for the frame timeout).
        self.frame_started = now
        #: Non-multiplexed protocols: replies wait here until every earlier one is sent.
        self.order: deque[ActiveRequest] = deque()
        #: Unshared protocols: dedicated upstreams by (cluster name, endpoint index).
        self.pipelines: dict[tuple[str, int], Upstream] = {}
        #: Who sends on this connection, for the Istio labels of its requests (replaced by
        #: the core's interned origin when it accepts the connection, see
        #: :mod:`metamesh.proxy.telemetry`), and its istio_tcp_* counters.
        self.origin = Origin("source", UNKNOWN_WORKLOAD, listener.protocol, UNKNOWN, "")
        self.tcp = TcpStats()
        #: Bytes read from / queued for this client (added to ``tcp`` when it closes).
        self.bytes_in = 0
        self.bytes_out = 0
        #: The next request is looked at for the peer's metadata (:mod:`.exchange`).
        self.hear = False

    def __repr__(self) -> str:
        return f"Downstream#{self.id}({self.listener.config.name} from {self.peer})"
