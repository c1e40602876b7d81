"""The connection manager: the one entry point the runtime talks to (sans-IO).

A :class:`ConnectionManager` is one worker's proxy core. The runtime feeds it events (a client
connected, bytes from a client or an upstream, an upstream connected, failed or closed, a timer
tick) together with ``now``; the core updates its state and leaves its output in ``dirty``
peers' ``out`` buffers and in ``actions`` (see :mod:`metamesh.proxy.core`, which also shows how
the request lifecycle is cut into layers, each in its own module).

Failures stay as small as possible: a bad client frame closes that client only; an upstream
that fails, resets or sends garbage answers each affected request with a protocol-native error
reply (``codec.error_reply``) and nothing else. A config swap (:meth:`apply_snapshot`) replaces
route tables and cluster settings in one step; connections stay open and requests in flight keep
the route they matched.
"""

from __future__ import annotations

import random

from metamesh.codecs import ErrorKind
from metamesh.proxy.config import Snapshot
from metamesh.proxy.core import (
    ACCESS_LOG,
    CLOSE_DOWNSTREAM,
    CLOSE_UPSTREAM,
    CONNECT,
    INFO,
    LOG,
    WARNING,
    CodecFactoryResolver,
)
from metamesh.proxy.downstream import DownstreamSide
from metamesh.proxy.filters.chain import ListenerFilters
from metamesh.proxy.listener import ConnectionLimits, Downstream, ListenerState
from metamesh.proxy.router import RouteTable
from metamesh.proxy.upstream import ClusterState

__all__ = [
    "ACCESS_LOG",
    "CLOSE_DOWNSTREAM",
    "CLOSE_UPSTREAM",
    "CONNECT",
    "INFO",
    "LOG",
    "WARNING",
    "CodecFactoryResolver",
    "ConnectionLimits",
    "ConnectionManager",
    "Downstream",
    "ListenerState",
]


class ConnectionManager(DownstreamSide):
    """One worker's proxy core. See :mod:`metamesh.proxy.core` for the event/action contract."""

    def __init__(
        self,
        snapshot: Snapshot,
        resolve_codec: CodecFactoryResolver,
        rng: random.Random | None = None,
        *,
        access_log: bool = False,
        limits: ConnectionLimits | None = None,
    ) -> None:
        super().__init__(snapshot, resolve_codec, rng, access_log=access_log, limits=limits)
        self.listener_clients = {}
        self.apply_snapshot(snapshot)

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
        for name, clients in list(self.listener_clients.items()):
            if name not in listeners and not clients.count:
                del self.listener_clients[name]  # a removed listener's last client is gone
        self.clusters = clusters
        self.snapshot = snapshot
        default = self.limits.idle_timeout
        idle = [
            default if x.idle_timeout is None else x.idle_timeout
            for x in snapshot.listeners.values()
        ]
        timeouts = [t for t in (*idle, self.limits.frame_timeout) if t > 0]
        # A sweep per quarter of the shortest timeout (at most 1 s apart, at least 50 ms).
        self.idle_sweep_every = min(1.0, max(0.05, min(timeouts) / 4)) if timeouts else None

    def start_drain(self) -> None:
        """Begin a graceful shutdown (the runtime has stopped accepting clients).

        Each client gets its protocol's going-away notice if it has one (Dubbo's read-only
        event, so consumers stop sending here), and is closed at the first moment it is owed
        nothing and is not in the middle of sending a frame: at once if it already is, else
        right after its last owed reply is queued. Requests that still arrive are served.
        """
        self.draining = True
        for d in list(self.downstreams):
            notice = d.codec.goaway_notice()
            if notice:
                d.out.append(notice)
                if not d.dirty:
                    d.dirty = True
                    self.dirty.append(d)
            if not d.owed:
                self._end_downstream(d)

    @property
    def drained(self) -> bool:
        """Every client is closed (nothing more to wait for)."""
        return not self.downstreams

    def end_drain(self, now: float) -> None:
        """The drain deadline: answer what is still owed upstream with a protocol-native error
        (``upstream_reset``, "proxy shutting down"), then close every connection."""
        for up in list(self.upstreams):
            if up.in_flight:
                self.stats.drain_aborted_requests += up.in_flight
                self._drop_upstream(up, ErrorKind.UPSTREAM_RESET, "proxy shutting down", now)
        self.close_all()

    def close_all(self) -> None:
        """Close every connection (end of a drain)."""
        for d in list(self.downstreams):
            self._close_downstream(d, f"{d}: closing for shutdown", INFO)
        for up in list(self.upstreams):
            self._close_upstream(up)
