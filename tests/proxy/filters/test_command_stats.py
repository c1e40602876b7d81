"""metamesh.filters.command_stats with the Redis codec (sans-IO): requests per command, and
upstream replies by response code with their duration; local replies count as requests."""

from metamesh.codecs.redis.resp import encode_command
from metamesh.proxy.config import (
    Cluster,
    Endpoint,
    FaultAbort,
    FaultInjection,
    Listener,
    MatchKind,
    MetadataMatcher,
    Route,
    RouteAction,
    RouteConfiguration,
    Snapshot,
)
from metamesh.proxy.filters.command_stats import COMMAND_STATS
from tests.proxy.harness import Harness


def cmd(*args: str) -> bytes:
    return encode_command([a.encode() for a in args])


def mesh(max_commands: int | None = None) -> Snapshot:
    listener = Listener(
        "l",
        "127.0.0.1",
        0,
        "redis",
        "rc",
        stat_prefix="outbound|6379||redis.test",
        filters=(COMMAND_STATS, "aeraki.meta_protocol.filters.router"),
    )
    fault = FaultInjection(abort=FaultAbort(message="Error"))
    routes = (
        Route(
            "f",
            (MetadataMatcher("command", MatchKind.EXACT, "hgetall"),),
            RouteAction("c"),
            fault=fault,
        ),
        Route("all", (), RouteAction(cluster="c")),
    )
    cluster = Cluster("c", (Endpoint("127.0.0.1", 7001),))
    return Snapshot.build([listener], [cluster], [RouteConfiguration("rc", routes)])


def test_requests_replies_and_latency_per_command() -> None:
    h = Harness(mesh())
    c = h.client()
    h.send(c, cmd("SET", "k", "v") + cmd("GET", "k") + cmd("GET", "x") + cmd("HGETALL", "h"))
    (up,) = h.connects
    h.connect(up)
    h.now = 0.25
    h.respond(up, b"+OK\r\n$1\r\nv\r\n-ERR wrongtype\r\n")
    assert bytes(h.sent.pop(c)).endswith(b"-ERR Fault Injected: Error\r\n")
    table = h.core.stats.commands
    get = table[("redis.test", "redis", "get")]
    assert get.requests == 2 and get.count == [1, 1]
    assert get.sum_ms == [250.0, 250.0]
    assert table[("redis.test", "redis", "set")].count == [1, 0]
    faulted = table[("redis.test", "redis", "hgetall")]
    assert faulted.requests == 1 and faulted.count == [0, 0]  # answered locally: no reply time


def test_command_names_from_clients_are_bounded() -> None:
    h = Harness(mesh())
    c = h.client()
    for i in range(300):
        h.send(c, cmd(f"NOSUCH{i}"))
    table = h.core.stats.commands
    assert len(table) == 257  # 256 names, then everything else under "other"
    assert table[("redis.test", "redis", "other")].requests == 300 - 256
