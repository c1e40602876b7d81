"""Runs of pipelined Redis requests (sans-IO, :mod:`metamesh.proxy.runs`).

Every scenario is played twice: once as clients drive it (pipelines become runs), once with the
access log on, which keeps every request on the plain path. What clients and upstreams receive
and every statistic must be the same both ways; the runs side also checks that runs were used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from metamesh.codecs.redis.resp import encode_command
from metamesh.proxy.config import (
    Cluster,
    Endpoint,
    Listener,
    MatchKind,
    MetadataMatcher,
    Route,
    RouteAction,
    RouteConfiguration,
    Snapshot,
)
from metamesh.proxy.filters.command_stats import COMMAND_STATS
from metamesh.proxy.runs import Run
from tests.proxy.harness import Harness


def cmd(*args: str) -> bytes:
    return encode_command([a.encode() for a in args])


def mesh(timeout: float | None = 2.0, command_stats: bool = False) -> Snapshot:
    """A ``key:`` prefix route and a catch-all to cluster ``r`` (as the benchmark's
    RedisService), ``other:`` to cluster ``o``, each with the route timeout (opTimeout)."""
    router = "aeraki.meta_protocol.filters.router"
    filters = (COMMAND_STATS, router) if command_stats else (router,)
    listener = Listener("l", "127.0.0.1", 0, "redis", "rc", stat_prefix="r", filters=filters)
    clusters = [
        Cluster("r", (Endpoint("127.0.0.1", 7001),)),
        Cluster("o", (Endpoint("127.0.0.1", 7002),)),
    ]
    routes = (
        Route(
            "key",
            (MetadataMatcher("key", MatchKind.PREFIX, "key:"),),
            RouteAction(cluster="r", timeout=timeout),
        ),
        Route(
            "other",
            (MetadataMatcher("key", MatchKind.PREFIX, "other:"),),
            RouteAction(cluster="o", timeout=timeout),
        ),
        Route("all", (), RouteAction(cluster="r", timeout=timeout)),
    )
    return Snapshot.build([listener], clusters, [RouteConfiguration("rc", routes)])


def pipeline(n: int, prefix: str = "key:") -> bytes:
    return b"".join(
        cmd("SET", f"{prefix}{i}", f"v{i}") if i % 2 else cmd("GET", f"{prefix}{i}")
        for i in range(n)
    )


def replies(n: int) -> bytes:
    return b"".join(
        b"+OK\r\n" if i % 2 else b"$%d\r\nv%d\r\n" % (len(b"v%d" % i), i) for i in range(n)
    )


def observed(h: Harness) -> dict[str, Any]:
    """What a run must not change: bytes each peer got, and the statistics."""
    stats = h.core.stats
    requests = {}
    for labels, rs in stats.requests.items():
        flagged = {f: (c.count, c.request_bytes, c.response_bytes) for f, c in rs.flagged.items()}
        requests[labels] = (
            rs.count,
            rs.buckets,
            rs.request_bytes,
            rs.request_buckets,
            rs.response_bytes,
            rs.response_buckets,
            flagged,
        )
    return {
        "sent": {repr(peer): bytes(data) for peer, data in h.sent.items()},
        "requests": requests,
        "counters": (
            stats.active_requests,
            stats.timeouts,
            stats.late_responses,
            stats.upstream_unmatched_responses,
            dict(stats.local_replies),
        ),
        "clusters": {n: cs.active_requests for n, cs in h.core.clusters.items()},
        "commands": {
            labels: (c.requests, c.count, c.buckets) for labels, c in stats.commands.items()
        },
        "closed": [repr(x) for x in h.closed],
    }


def both(
    scenario: Callable[[Harness], None], timeout: float | None = 2.0, command_stats: bool = False
) -> Harness:
    """Play ``scenario`` with runs and on the plain path; the same must come out."""
    with_runs = Harness(mesh(timeout, command_stats))
    scenario(with_runs)
    assert with_runs.core.runs_on is not None, "no run was formed"
    plain = Harness(mesh(timeout, command_stats), access_log=True)
    scenario(plain)
    assert observed(with_runs) == observed(plain)
    return with_runs


def ready(h: Harness, c: Any) -> Any:
    """Open the shared connection to ``r`` with one request (runs need a connected one)."""
    h.send(c, cmd("GET", "key:warm"))
    up = h.connects[0]
    h.connect(up)
    h.respond(up, b"$-1\r\n")
    return up


def runs_in(up: Any) -> int:
    return sum(1 for r in up.fifo if type(r) is Run)


def test_a_pipeline_goes_up_as_one_run_and_back_in_one_write() -> None:
    def scenario(h: Harness) -> None:
        c = h.client()
        up = ready(h, c)
        h.core.downstream_data(c, pipeline(16), h.now)
        if not h.core.access_log:
            assert len(up.out) == 1 and runs_in(up) == 1 and len(up.fifo) == 1
            assert h.core.stats.active_requests == 16
        h.flush()
        h.now += 0.003
        h.core.upstream_data(up, replies(16), h.now)
        if not h.core.access_log:
            assert len(c.out) == 1 and not up.fifo
        h.flush()

    h = both(scenario)
    (c,) = [p for p in h.sent if hasattr(p, "order")]
    assert bytes(h.sent[c]) == b"$-1\r\n" + replies(16)


def test_replies_in_pieces_and_error_replies_are_accounted_one_by_one() -> None:
    data = replies(8) + b"-ERR wrong\r\n" + b"$100\r\n" + b"x" * 100 + b"\r\n" + replies(6)

    def chunked(h: Harness) -> None:
        c = h.client()
        up = ready(h, c)
        h.send(c, pipeline(16))
        at = 0
        for cut in (3, 4, 30, 31, 60, 140, len(data)):
            h.now += 0.001
            h.respond(up, data[at:cut])
            at = cut

    both(chunked)


def test_a_run_waits_behind_an_earlier_request_and_heartbeats_keep_their_place() -> None:
    def scenario(h: Harness) -> None:
        c = h.client()
        up = ready(h, c)
        h.send(c, cmd("GET", "other:1"))  # to another cluster: answered last
        (up_o,) = h.connects[1:]
        h.connect(up_o)
        h.send(c, pipeline(4) + cmd("PING") + pipeline(5) + cmd("MULTI") + pipeline(3))
        h.respond(up, replies(4) + replies(5))
        h.respond(up, replies(3))
        h.respond(up_o, b"$1\r\no\r\n")

    both(scenario)


def test_two_clients_share_the_connection_with_interleaved_runs() -> None:
    def scenario(h: Harness) -> None:
        c1, c2 = h.client(), h.client()
        up = ready(h, c1)
        h.send(c1, pipeline(6))
        h.send(c2, pipeline(3, "x"))
        h.send(c1, pipeline(2))
        h.respond(up, replies(7))
        h.respond(up, replies(4))

    both(scenario)


def test_a_timeout_mid_run_answers_the_rest_and_drops_their_late_replies() -> None:
    def scenario(h: Harness) -> None:
        c = h.client()
        up = ready(h, c)
        h.send(c, pipeline(10))
        h.now += 0.5
        h.respond(up, replies(4))  # 4 answered in time
        h.now += 2.0
        h.core.on_timer(h.now)  # the other 6 time out
        h.flush()
        h.respond(up, replies(10)[len(replies(4)) :])  # their late replies: dropped
        h.send(c, pipeline(2))  # the connection is still in step
        h.respond(up, replies(2))

    h = both(scenario)
    assert h.core.stats.timeouts == 6 and h.core.stats.late_responses == 6
    assert h.core.stats.active_requests == 0


def test_an_upstream_closing_mid_run_answers_each_unanswered_request() -> None:
    def scenario(h: Harness) -> None:
        c = h.client()
        up = ready(h, c)
        h.send(c, pipeline(16))
        h.respond(up, replies(5) + b"$3\r\nab")  # 5 replies and part of a sixth
        h.core.upstream_closed(up, h.now)
        h.flush()

    h = both(scenario)
    (c,) = [p for p in h.sent if hasattr(p, "order")]
    out = bytes(h.sent[c])
    assert out.endswith(b"-ERR upstream failure: upstream connection reset\r\n" * 11)
    assert h.core.stats.active_requests == 0


def test_a_client_leaving_mid_run_keeps_the_shared_connection_in_step() -> None:
    def scenario(h: Harness) -> None:
        c1, c2 = h.client(), h.client()
        up = ready(h, c1)
        h.send(c1, pipeline(8))
        h.send(c2, pipeline(3))
        h.respond(up, replies(2))
        h.core.downstream_closed(c1, h.now)
        h.flush()
        h.respond(up, replies(8)[len(replies(2)) :] + replies(3))
        h.send(c2, pipeline(2))
        h.respond(up, replies(2))

    h = both(scenario)
    assert h.core.stats.active_requests == 0
    assert not h.core.runs_on


def test_a_live_route_change_applies_to_the_next_pipeline() -> None:
    def scenario(h: Harness) -> None:
        c = h.client()
        up = ready(h, c)
        h.send(c, pipeline(4))
        h.core.apply_snapshot(mesh(timeout=0.5))  # in flight: answered as sent
        h.flush()
        h.respond(up, replies(4))
        h.send(c, pipeline(4))
        h.now += 1.0
        h.core.on_timer(h.now)  # the new route timeout applies to the new run
        h.flush()

    h = both(scenario)
    assert h.core.stats.timeouts == 4


def test_without_a_route_timeout_and_half_closed_client_is_closed_after_its_run() -> None:
    def scenario(h: Harness) -> None:
        c = h.client()
        up = ready(h, c)
        h.send(c, pipeline(5))
        h.core.downstream_eof(c, h.now)
        h.flush()
        assert c not in h.closed
        h.respond(up, replies(5))

    h = both(scenario, timeout=None)
    assert len(h.closed) == 1


def test_command_stats_count_every_command_of_a_run_and_its_reply() -> None:
    data = replies(5) + b"-WRONGTYPE x\r\n" + replies(4)

    def scenario(h: Harness) -> None:
        c = h.client()
        up = ready(h, c)
        h.send(c, pipeline(10) + cmd("HGET", "key:0", "f") + pipeline(6))
        h.now += 0.004
        h.respond(up, data[:17])
        h.now += 0.2
        h.respond(up, data[17:] + replies(2))
        h.now += 3.0
        h.core.on_timer(h.now)  # the last 5 time out: counted as requests, no reply time
        h.flush()

    h = both(scenario, command_stats=True)
    rows = {labels[2]: c for labels, c in h.core.stats.commands.items()}
    assert rows["get"].requests == 9 and rows["set"].requests == 8 and rows["hget"].requests == 1
    assert sum(r.count[0] + r.count[1] for r in rows.values()) == 13  # 5 timed out
    assert rows["set"].count[1] == 1 and rows["hget"].count == [1, 0]


def test_a_run_answered_last_releases_the_replies_waiting_behind_it() -> None:
    def scenario(h: Harness) -> None:
        c = h.client()
        up = ready(h, c)
        h.send(c, cmd("GET", "other:0"))  # opens the connection to `o`
        (up_o,) = h.connects[1:]
        h.connect(up_o)
        h.respond(up_o, b"$-1\r\n")
        h.send(c, pipeline(6) + cmd("GET", "other:1") + cmd("PING") + cmd("GET", "other:2"))
        h.respond(up_o, b"$1\r\na\r\n$1\r\nb\r\n")  # the later replies first
        h.respond(up, replies(3))
        h.respond(up, replies(6)[len(replies(3)) :])  # the run ends: all of it goes out

    both(scenario)
