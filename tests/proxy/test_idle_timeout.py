"""The listener's ``idle_timeout`` (Aeraki's MetaProtocolProxy field): a client connection with
no request in flight for that long is closed, counted, and nothing it is owed is cut off.

Through the in-memory harness with time as an argument: the clock starts when the client
connects and restarts each time the last reply it is owed is queued (or a one-way call
arrives); a request in flight holds the clock however long it takes; listeners without the
field never time out.
"""

from __future__ import annotations

import dataclasses

from metamesh.proxy.config import Route, RouteAction, Snapshot
from metamesh.proxy.connection import ConnectionLimits, ConnectionManager
from tests.proxy.harness import Harness, call, cluster, reply, resolver, snapshot


def limited(snap: Snapshot, limits: ConnectionLimits) -> Harness:
    """The harness with a core built with ``limits`` (the proxy's command-line limits)."""
    h = Harness(snap)
    h.core = ConnectionManager(snap, resolver, limits=limits)
    return h


UP = "outbound|9000||kv.test"


def _snapshot(idle_timeout: float | None) -> Snapshot:
    snap = snapshot([Route("all", (), RouteAction(cluster=UP))], [cluster(UP, 9000)])
    (listener,) = snap.listeners.values()
    return Snapshot.build(
        [dataclasses.replace(listener, idle_timeout=idle_timeout)],
        list(snap.clusters.values()),
        list(snap.route_configs.values()),
    )


def _tick(h: Harness, now: float) -> None:
    h.now = now
    h.core.on_timer(now)
    h.flush()


def test_a_client_with_nothing_in_flight_is_closed_after_the_idle_timeout() -> None:
    h = Harness(_snapshot(10.0))
    d = h.core.downstream_connected("l", "test", 0.0)
    h.send(d, call(1, b"a"))
    (up,) = h.connects
    h.connect(up)
    [(_, _, rid, _, _)] = h.take(up)
    _tick(h, 30.0)  # a request in flight holds the clock, however long it takes
    assert d not in h.closed
    h.now = 31.0
    h.respond(up, reply(rid, b"re-a"))  # nothing owed from 31 s on
    assert h.take(d) == [(2, 0, 1, {}, b"re-a")]
    _tick(h, 40.9)  # a sweep (they run every min(1 s, timeout / 4)): 9.9 s idle, not yet
    assert d not in h.closed
    _tick(h, 41.9)  # the next sweep: 10.9 s idle
    assert h.closed == [d]
    assert h.core.stats.downstream_idle_timeouts == 1
    assert h.core.stats.active_downstream_connections == 0
    assert up not in h.closed  # the shared upstream connection stays


def test_one_way_calls_and_new_requests_restart_the_clock() -> None:
    h = Harness(_snapshot(10.0))
    d = h.core.downstream_connected("l", "test", 0.0)
    h.now = 8.0
    h.send(d, call(1, b"fire", oneway=True))
    (up,) = h.connects
    h.connect(up)
    _tick(h, 17.9)  # idle 9.9 s since the one-way call (17.9 s since the connect)
    assert d not in h.closed
    _tick(h, 18.9)  # the next sweep
    assert h.closed == [d]


def test_a_listener_with_idle_timeout_zero_never_closes_idle_clients() -> None:
    h = limited(_snapshot(0.0), ConnectionLimits(frame_timeout=0))
    d = h.core.downstream_connected("l", "test", 0.0)
    assert h.core.idle_sweep_every is None
    _tick(h, 1e6)
    assert d not in h.closed and h.core.stats.downstream_idle_timeouts == 0


def test_a_listener_without_idle_timeout_gets_the_proxy_default() -> None:
    h = limited(_snapshot(None), ConnectionLimits(idle_timeout=60.0))
    d = h.core.downstream_connected("l", "test", 0.0)
    _tick(h, 59.5)
    assert d not in h.closed
    _tick(h, 60.5)
    assert h.closed == [d] and h.core.stats.downstream_idle_timeouts == 1
    # and the default default is an hour, as Envoy's TCP idle timeout
    assert ConnectionLimits().idle_timeout == 3600.0


def test_the_sweep_runs_a_few_times_per_timeout_not_at_every_tick() -> None:
    h = Harness(_snapshot(0.4))
    assert h.core.idle_sweep_every == 0.1
    h.core.apply_snapshot(_snapshot(3600.0))  # a config swap changes it
    assert h.core.idle_sweep_every == 1.0
    d = h.core.downstream_connected("l", "test", 0.0)
    _tick(h, 3600.0)
    assert h.closed == [d]
    e = h.core.downstream_connected("l", "test", 3600.6)
    _tick(h, 7200.5)  # a sweep (the last was 1 s+ ago): e is not due yet
    assert e not in h.closed
    _tick(h, 7201.0)  # e is due, but sweeps are 1 s apart: the next is at 7201.5
    assert e not in h.closed
    _tick(h, 7201.5)
    assert e in h.closed
