"""Connection limits: a started frame must finish in time, and a cap on client connections
that makes room by closing the client idle longest (or refuses when none is idle)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from metamesh.control.to_proxy import XdsConversionError, to_listener
from metamesh.proxy.config import Route, RouteAction, Snapshot
from metamesh.proxy.config_yaml import ConfigError, parse_snapshot
from metamesh.proxy.connection import ConnectionLimits
from tests.control.test_to_proxy import _listener as xds_listener
from tests.proxy.harness import call, cluster, reply, snapshot
from tests.proxy.test_config import MINIMAL
from tests.proxy.test_idle_timeout import limited

UP = "outbound|9000||kv.test"
SNAP = snapshot([Route("all", (), RouteAction(cluster=UP))], [cluster(UP, 9000)], "kvrpc")


def tick(h: object, now: float) -> None:
    h.now = now  # type: ignore[attr-defined]
    h.core.on_timer(now)  # type: ignore[attr-defined]
    h.flush()  # type: ignore[attr-defined]


def test_a_frame_that_never_completes_is_closed_after_the_frame_timeout() -> None:
    h = limited(SNAP, ConnectionLimits(frame_timeout=5.0))
    slow, busy = h.client(), h.client()
    frame = call(1, b"a slow-loris request")
    h.send(slow, frame[:6])
    h.now = 3.0
    h.send(slow, frame[6:10])  # trickling bytes do not restart the clock
    tick(h, 4.9)
    assert h.closed == []
    h.send(busy, call(2, b"whole"))  # a client sending whole frames is never affected
    tick(h, 5.95)  # the sweep runs every quarter of the timeout, at most 1 s apart
    assert h.closed == [slow]
    assert h.core.stats.downstream_frame_timeouts == 1
    assert any("frame took over 5.0 s" in line for line in h.logs)


def test_the_clock_starts_with_each_frame_not_the_connection() -> None:
    h = limited(SNAP, ConnectionLimits(frame_timeout=5.0))
    d = h.client()
    h.send(d, call(1, b"x"))
    (up,) = h.connects
    h.connect(up)
    [(_, _, rid, _, _)] = h.take(up)
    h.respond(up, reply(rid, b"ok"))
    h.now = 100.0
    second = call(2, b"later")
    h.send(d, call(3, b"y") + second[:5])  # a whole frame, then a new one starts at 100
    tick(h, 104.0)
    assert d not in h.closed
    tick(h, 105.5)
    assert h.closed == [d]


def test_at_the_cap_the_client_idle_longest_makes_room() -> None:
    h = limited(SNAP, ConnectionLimits(max_downstreams=2))
    old = h.core.downstream_connected("l", "a", 1.0)
    busy = h.core.downstream_connected("l", "b", 2.0)
    h.send(busy, call(1, b"in flight"))
    new = h.core.downstream_connected("l", "c", 3.0)
    h.flush()
    assert h.closed == [old]  # idle longest; the busy one is never evicted
    assert h.core.stats.downstream_cx_evicted == 1
    assert new in h.core.downstreams and busy in h.core.downstreams
    assert any("at the cap of 2 client connections" in line for line in h.logs)


def test_at_the_cap_with_no_idle_client_the_new_one_is_refused_and_logs_are_bounded() -> None:
    h = limited(SNAP, ConnectionLimits(max_downstreams=1))
    busy = h.core.downstream_connected("l", "a", 0.0)
    h.send(busy, call(1, b"in flight"))
    refused = [h.core.downstream_connected("l", f"n{i}", 1.0 + i * 0.01) for i in range(100)]
    h.flush()
    assert h.closed == refused
    assert h.core.stats.downstream_cx_overflow == 100
    assert len([x for x in h.logs if "at the cap" in x]) == 1  # one line per 10 s, not 100


# -- a listener's own cap (max_connections) ------------------------------------------------------


def two_listeners(cap_a: int | None, cap_b: int | None = None) -> Snapshot:
    """Listeners "a" and "b" on the same routes, with their own ``max_connections``."""
    base = SNAP.listeners["l"]
    return Snapshot.build(
        [
            replace(base, name="a", max_connections=cap_a),
            replace(base, name="b", max_connections=cap_b),
        ],
        list(SNAP.clusters.values()),
        list(SNAP.route_configs.values()),
    )


def test_a_listener_at_its_cap_closes_its_own_client_idle_longest() -> None:
    h = limited(two_listeners(2), ConnectionLimits())
    other = h.core.downstream_connected("b", "idle on b since 0", 0.0)  # idle longest of all
    old = h.core.downstream_connected("a", "x", 1.0)
    busy = h.core.downstream_connected("a", "y", 2.0)
    h.send(busy, call(1, b"in flight"))
    new = h.core.downstream_connected("a", "z", 3.0)
    h.flush()
    assert h.closed == [old]  # of listener a, not b's idler client
    assert {other, busy, new} <= h.core.downstreams
    clients = h.core.listener_clients
    assert (clients["a"].count, clients["a"].evicted, clients["b"].count) == (2, 1, 1)
    assert h.core.stats.downstream_cx_evicted == 1
    assert any("at listener a's cap of 2 client connections" in line for line in h.logs)


def test_a_listener_at_its_cap_with_no_idle_client_refuses_and_the_other_is_free() -> None:
    h = limited(two_listeners(1), ConnectionLimits())
    busy = h.core.downstream_connected("a", "x", 0.0)
    h.send(busy, call(1, b"in flight"))
    refused = h.core.downstream_connected("a", "y", 1.0)
    free = [h.core.downstream_connected("b", f"n{i}", 1.0) for i in range(5)]  # no cap on b
    h.flush()
    assert h.closed == [refused]
    assert h.core.listener_clients["a"].refused == 1
    assert set(free) <= h.core.downstreams


def test_the_process_cap_still_applies_across_listeners() -> None:
    h = limited(two_listeners(10, 10), ConnectionLimits(max_downstreams=2))
    first = h.core.downstream_connected("b", "x", 0.0)
    h.core.downstream_connected("a", "y", 1.0)
    h.core.downstream_connected("a", "z", 2.0)
    h.flush()
    assert h.closed == [first]  # idle longest of any listener
    assert h.core.listener_clients["b"].evicted == 1


def test_the_idle_order_follows_activity_after_connecting() -> None:
    """A client that was served after connecting is not the idlest any more (the lazy heap
    sees its newer ``idle_since``); a closed client is never picked."""
    h = limited(two_listeners(3), ConnectionLimits())
    first, second, third = (h.core.downstream_connected("a", p, t) for p, t in (("1", 0.0),
                            ("2", 1.0), ("3", 2.0)))  # fmt: skip
    h.now = 5.0
    h.send(first, call(1, b"work"))
    (up,) = h.connects
    h.connect(up)
    [(_, _, rid, _, _)] = h.take(up)
    h.respond(up, reply(rid, b"ok"))  # first: idle since 5
    h.core.downstream_connected("a", "4", 7.0)
    h.flush()
    assert h.closed == [second]  # idle since 1; first was served at 5
    h.core.downstream_closed(third, 7.5)  # its heap entry (idle since 2) stays, stale
    h.core.downstream_connected("a", "5", 8.0)
    h.core.downstream_connected("a", "6", 9.0)
    h.flush()
    assert h.closed == [second, first]  # not the closed third


def test_heap_entries_of_closed_clients_are_purged() -> None:
    """Connection churn without ever reaching the cap keeps the heap near the open count."""
    h = limited(two_listeners(1000), ConnectionLimits())
    keep = h.core.downstream_connected("a", "keep", 0.0)
    for i in range(5000):
        d = h.core.downstream_connected("a", str(i), float(i))
        h.core.downstream_closed(d, float(i))
    clients = h.core.listener_clients["a"]
    assert clients.count == 1 and keep in h.core.downstreams
    assert len(clients.heap) <= 2 * clients.count + 17


def test_at_the_cap_a_new_client_costs_no_scan_of_every_connection() -> None:
    """10,000 idle clients on a listener at its cap, then 1,000 more: each new one evicts the
    idlest after looking at a handful of heap entries (counted by wrapping the heap's list,
    not timed), where a scan looked at all 10,000."""
    n = 10_000
    h = limited(two_listeners(n), ConnectionLimits())
    for i in range(n):
        h.core.downstream_connected("a", str(i), float(i))
    clients = h.core.listener_clients["a"]
    looked = CountingList(clients.heap)
    clients.heap = looked
    for i in range(1000):
        h.core.downstream_connected("a", f"new{i}", float(n + i))
    h.flush()
    assert clients.count == n and clients.evicted == 1000
    assert looked.reads <= 1000 * 5  # O(1) reads of the heap head per new client


class CountingList(list):  # type: ignore[type-arg]
    """A list that counts reads of its first item (``heap[0]``: one per entry looked at)."""

    reads = 0

    def __getitem__(self, i: Any) -> Any:
        if i == 0:
            self.reads += 1
        return super().__getitem__(i)


def test_max_connections_from_the_static_yaml_and_from_xds() -> None:
    text = MINIMAL.replace(
        "route_config_name: rc", "route_config_name: rc\n      max_connections: 500", 1
    )
    assert parse_snapshot(MINIMAL).listeners["l1"].max_connections is None
    assert parse_snapshot(text).listeners["l1"].max_connections == 500
    with pytest.raises(ConfigError, match=r"meta_protocol_proxy\.max_connections"):
        parse_snapshot(text.replace("500", "-1"), source="proxy.yaml")
    base: dict[str, object] = {"codec": {"name": "thrift"}, "rds": {"routeConfigName": "r"}}
    assert to_listener(xds_listener(base)).max_connections is None
    assert to_listener(xds_listener({**base, "maxConnections": 300})).max_connections == 300
    with pytest.raises(XdsConversionError, match="maxConnections must be a whole number"):
        to_listener(xds_listener({**base, "maxConnections": 2.5}))
