"""Traffic management through the real proxy between real Apache Thrift clients and servers.

Every test runs the asyncio proxy (``ProxyServer`` on its own loop thread) on 127.0.0.1 between
Apache's generated ``Calc`` clients and Apache servers whose ``echo`` answers ``<server>:<s>``,
so the client itself sees which server answered. Covered: weighted splits (checked against
binomial bounds of +-5 sigma, which a correct 20/80 split leaves about once in 1.7 million
runs), ring-hash stickiness on a THeader header, mirroring (copies arrive, the client gets the
primary's reply, a held, congested or dead mirror does not hold the primary up), THeader request and
response mutation seen by the real server and client, 200 concurrent clients on one upstream
connection, and the admin endpoints after real traffic.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import types
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tests.codecs.thrift.apache_peer import ApacheServer, connect
from tests.runtime import mesh_config as mc
from tests.runtime.proxy_thread import ProxyThread
from tests.runtime.thrift_servers import AnyClientServer, NamedCalc
from tests.support.prom import total

pytestmark = pytest.mark.interop


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` (bounded); a correct proxy gets there in milliseconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def closed_port() -> int:
    """A loopback port with nothing listening (connects are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def servers(
    stack: ExitStack, gen: types.ModuleType, *names: str, transport: str = "any"
) -> list[tuple[NamedCalc, ApacheServer]]:
    out = []
    for name in names:
        handler = NamedCalc(gen, name)
        processor = gen.Calc.Processor(handler)
        server: ApacheServer = (
            AnyClientServer(processor)
            if transport == "any"
            else ApacheServer(processor, transport, "binary")
        )
        out.append((handler, stack.enter_context(server)))
    return out


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


# -- weighted split ---------------------------------------------------------------------------


@pytest.mark.parametrize(("transport", "protocol"), [("framed", "binary"), ("header", "compact")])
def test_weighted_split_20_80_within_5_sigma(
    calc_gen: types.ModuleType, stack: ExitStack, transport: str, protocol: str
) -> None:
    (h1, s1), (h2, s2) = servers(stack, calc_gen, "v1", "v2")
    snap = mc.snapshot(
        [mc.listener("calc", "thrift", "calc")],
        [
            mc.cluster("outbound|9090|v1|calc.test", s1.port),
            mc.cluster("outbound|9090|v2|calc.test", s2.port),
        ],
        {
            "calc": [
                mc.route(
                    "split",
                    {"outbound|9090|v1|calc.test": 20, "outbound|9090|v2|calc.test": 80},
                    method="echo",
                )
            ]
        },
    )
    n, p = 1000, 0.2
    proxy = stack.enter_context(ProxyThread(snap))
    with connect(calc_gen.Calc, transport, protocol, proxy.port("calc")) as peer:
        c: Any = peer.client
        answers = Counter(c.echo(str(i)).split(":")[0] for i in range(n))
    sigma = math.sqrt(n * p * (1 - p))
    assert answers["v1"] + answers["v2"] == n
    assert abs(answers["v1"] - n * p) <= 5 * sigma, answers
    assert len(h1.echoes()) == answers["v1"] and len(h2.echoes()) == answers["v2"]


# -- hash policy ------------------------------------------------------------------------------


def test_ring_hash_on_a_theader_header_is_sticky(calc_gen: types.ModuleType) -> None:
    with ExitStack() as stack:
        backends = servers(stack, calc_gen, "a", "b", "c")
        by_hash = mc.route("by-user", "outbound|9090||calc.test", method="echo")
        by_hash["route"]["hash_policy"] = ["user"]
        snap = mc.snapshot(
            [mc.listener("calc", "thrift", "calc")],
            [
                mc.cluster(
                    "outbound|9090||calc.test",
                    *(s.port for _, s in backends),
                    lb_policy="RING_HASH",
                )
            ],
            {"calc": [by_hash]},
        )
        proxy = stack.enter_context(ProxyThread(snap))
        users = [f"user-{i}" for i in range(24)]
        seen: dict[str, set[str]] = {u: set() for u in users}
        for _connection in range(2):  # stickiness holds across client connections too
            with connect(calc_gen.Calc, "header", "binary", proxy.port("calc")) as peer:
                c: Any = peer.client
                for _round in range(3):
                    for u in users:
                        peer.protocol.set_header(b"user", u.encode())  # cleared per call
                        seen[u].add(c.echo(u).split(":")[0])
    assert all(len(servers_) == 1 for servers_ in seen.values()), seen
    # 24 users over three servers: all on one would mean the key is ignored (p ~ 1e-11).
    assert len(set().union(*seen.values())) >= 2


# -- mirroring --------------------------------------------------------------------------------


def mirror_snapshot(primary: int, mirror: int) -> Any:
    mirrored = mc.route("mirrored", "outbound|9090|primary|calc.test", method="~echo|add")
    mirrored["route"]["request_mirror_policies"] = [{"cluster": "outbound|9090|shadow|calc.test"}]
    return mc.snapshot(
        [mc.listener("calc", "thrift", "calc")],
        [
            mc.cluster("outbound|9090|primary|calc.test", primary),
            mc.cluster("outbound|9090|shadow|calc.test", mirror, connect_timeout="500ms"),
        ],
        {"calc": [mirrored]},
    )


def test_mirror_gets_copies_and_client_gets_primary_replies(
    calc_gen: types.ModuleType, stack: ExitStack
) -> None:
    (primary, p), (shadow, m) = servers(stack, calc_gen, "primary", "shadow")
    proxy = stack.enter_context(ProxyThread(mirror_snapshot(p.port, m.port)))
    with connect(calc_gen.Calc, "framed", "binary", proxy.port("calc")) as peer:
        c: Any = peer.client
        texts = [f"call {i}" for i in range(20)]
        assert [c.echo(t) for t in texts] == [f"primary:{t}" for t in texts]
        assert c.add(2, 3) == 5
    assert primary.echoes() == texts
    wait_until(lambda: len(shadow.calls) == 21, "the mirror copies")
    assert shadow.echoes() == texts and shadow.calls[-1] == ("add", (2, 3))


def test_held_mirror_does_not_delay_the_primary(
    calc_gen: types.ModuleType, stack: ExitStack
) -> None:
    (_primary, p), (shadow, m) = servers(stack, calc_gen, "primary", "shadow")
    shadow.release.clear()  # the mirror server takes the first copy and sits on it
    proxy = stack.enter_context(ProxyThread(mirror_snapshot(p.port, m.port)))
    texts = [f"call {i}" for i in range(30)]
    with connect(calc_gen.Calc, "framed", "binary", proxy.port("calc")) as peer:
        c: Any = peer.client
        assert [c.echo(t) for t in texts] == [f"primary:{t}" for t in texts]
        # Every primary reply arrived while the mirror had answered nothing.
        assert not shadow.release.is_set() and len(shadow.echoes()) <= 1
    shadow.release.set()
    wait_until(lambda: shadow.echoes() == texts, "the held mirror copies")


def test_mirror_that_stops_reading_drops_copies_instead_of_stalling_clients(
    calc_gen: types.ModuleType, stack: ExitStack
) -> None:
    (primary, p), (shadow, m) = servers(stack, calc_gen, "primary", "shadow")
    shadow.release.clear()  # held in its handler: the mirror stops reading its socket
    proxy = stack.enter_context(ProxyThread(mirror_snapshot(p.port, m.port)))
    payload = "y" * (256 * 1024)
    calls = 80  # 20 MiB of copies: far past what the kernel buffers for the held mirror
    with connect(calc_gen.Calc, "framed", "binary", proxy.port("calc")) as peer:
        c: Any = peer.client
        for i in range(calls):
            assert c.echo(f"{i} {payload}") == f"primary:{i} {payload}"
    server = proxy.server
    assert server is not None
    stats = proxy.call(lambda: server.core.stats)
    assert len(primary.echoes()) == calls
    assert stats.mirror_dropped > 0  # the mirror's connection did congest...
    assert stats.mirrored_requests + stats.mirror_dropped == calls  # ...and lost copies
    shadow.release.set()
    wait_until(lambda: len(shadow.echoes()) == stats.mirrored_requests, "the sent copies")


def test_dead_mirror_does_not_fail_the_primary(
    calc_gen: types.ModuleType, stack: ExitStack
) -> None:
    [(_primary, p)] = servers(stack, calc_gen, "primary")
    proxy = stack.enter_context(ProxyThread(mirror_snapshot(p.port, closed_port())))
    with connect(calc_gen.Calc, "framed", "binary", proxy.port("calc")) as peer:
        c: Any = peer.client
        for i in range(10):
            assert c.echo(f"call {i}") == f"primary:call {i}"
    server = proxy.server
    assert server is not None
    stats = proxy.call(lambda: server.core.stats)
    assert stats.upstream_connect_failures >= 1 and stats.mirrored_requests >= 1
    primary = {"destination_service": "calc.test", "destination_version": "primary"}
    assert stats.totals(**primary, request_protocol="thrift") == [10, 0]


# -- THeader mutation -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_theader_request_and_response_mutation(
    calc_gen: types.ModuleType, stack: ExitStack, protocol: str
) -> None:
    [(_handler, server)] = servers(stack, calc_gen, "s")
    r = mc.route("mutating", "outbound|9090||calc.test", {"x-mesh": "metamesh"}, method="echo")
    r["response_mutation"] = [{"key": "x-served-by", "value": "metamesh-proxy"}]
    snap = mc.snapshot(
        [mc.listener("calc", "thrift", "calc")],
        [mc.cluster("outbound|9090||calc.test", server.port)],
        {"calc": [r, mc.route("plain", "outbound|9090||calc.test", method="add")]},
    )
    proxy = stack.enter_context(ProxyThread(snap))
    with connect(calc_gen.Calc, "header", protocol, proxy.port("calc")) as peer:
        c: Any = peer.client
        peer.protocol.set_header(b"x-client", b"c1")
        assert c.echo("hi") == "s:hi"
        assert peer.protocol.get_headers() == {b"x-served-by": b"metamesh-proxy"}
        assert c.add(1, 2) == 3  # an unmutated route: bytes forwarded as they are
        assert b"x-served-by" not in peer.protocol.get_headers()
    wait_until(lambda: len(server.headers) == 2, "the server to record both calls")
    echo_headers, add_headers = server.headers
    assert echo_headers == {b"x-client": b"c1", b"x-mesh": b"metamesh"}
    assert add_headers == {}


# -- 200 clients on one upstream connection ---------------------------------------------------


def test_200_thrift_clients_share_one_upstream_connection(
    calc_gen: types.ModuleType, stack: ExitStack
) -> None:
    [(handler, server)] = servers(stack, calc_gen, "s")
    snap = mc.snapshot(
        [mc.listener("calc", "thrift", "calc")],
        [mc.cluster("outbound|9090||calc.test", server.port)],
        {"calc": [mc.route("all", "outbound|9090||calc.test", method="~.*")]},
    )
    proxy = stack.enter_context(ProxyThread(snap))
    port = proxy.port("calc")
    n = 200
    everyone_connected = threading.Barrier(n)
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            # Apache clients send one fixed seqid; all 200 use 7, so only the proxy's id
            # rewriting tells the replies apart.
            with connect(calc_gen.Calc, "framed", "binary", port, seqid=7) as peer:
                c: Any = peer.client
                everyone_connected.wait(30)
                for k in range(3):
                    assert c.echo(f"client {i} call {k}") == f"s:client {i} call {k}"
                assert peer.seqids_read == [7, 7, 7]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(handler.echoes()) == 3 * n
    assert len(server.client_types) == 1  # one upstream connection carried all 200 clients
    core = proxy.server.core if proxy.server else None
    assert core is not None
    assert proxy.call(lambda: core.stats.downstream_connections_total) == n


# -- admin after real traffic -----------------------------------------------------------------


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_admin_reports_real_thrift_traffic(calc_gen: types.ModuleType, stack: ExitStack) -> None:
    (_h1, s1), (_h2, s2) = servers(stack, calc_gen, "v1", "v2")
    calc = mc.listener(
        "calc", "aeraki.meta_protocol.codec.thrift", "calc", stat_prefix="outbound|9090||calc.test"
    )
    snap = mc.snapshot(
        [calc],
        [
            mc.cluster("outbound|9090|v1|calc.test", s1.port),
            mc.cluster("outbound|9090|v2|calc.test", s2.port),
        ],
        {
            "calc": [
                mc.route("add-v1", "outbound|9090|v1|calc.test", method="add"),
                mc.route("echo-v2", "outbound|9090|v2|calc.test", method="echo"),
            ]
        },
    )
    proxy = stack.enter_context(ProxyThread(snap, admin_port=0))
    assert proxy.server is not None
    admin = proxy.server.bound_admin_port
    assert admin is not None
    assert http_get(admin, "/ready") == (200, "LIVE\n")
    with connect(calc_gen.Calc, "framed", "binary", proxy.port("calc")) as peer:
        c: Any = peer.client
        for i in range(7):
            assert c.add(i, 1) == i + 1
        for i in range(3):
            assert c.echo(str(i)) == f"v2:{i}"
        with pytest.raises(Exception, match=r"^no route for calc\.test\.ping$"):
            c.ping()
        status, metrics = http_get(admin, "/stats/prometheus")
    assert status == 200

    def requests_total(service: str, version: str, code: int, flags: str = "-") -> float:
        return total(
            metrics,
            "istio_requests_total",
            destination_service=service,
            destination_version=version,
            reporter="source",
            request_protocol="thrift",
            response_code=str(code),
            response_flags=flags,
        )

    assert requests_total("calc.test", "v1", 0) == 7
    assert requests_total("calc.test", "v2", 0) == 3
    # the unrouted ping counts against the listener's service, with no version
    assert requests_total("calc.test", "unknown", 1, "NR") == 1
    assert 'destination_service="unknown"' not in metrics
    assert 'metamesh_local_replies_total{reason="route_not_found"} 1.0' in metrics
    assert "metamesh_upstream_connects_total 2.0" in metrics
    assert "metamesh_downstream_connections_total 1.0" in metrics
    calc = {"destination_service": "calc.test"}
    assert total(metrics, "istio_request_duration_milliseconds_count", **calc) == 11

    status, text = http_get(admin, "/clusters")
    assert status == 200
    for name, server in (("v1", s1), ("v2", s2)):
        prefix = f"outbound|9090|{name}|calc.test::127.0.0.1:{server.port}"
        assert f"{prefix}::health_flags::healthy" in text
        assert f"{prefix}::cx_active::1" in text
        assert f"{prefix}::rq_active::0" in text
    status, body = http_get(admin, "/config_dump")
    dump = json.loads(body)
    assert status == 200 and dump["version"] == "runtime-test"
    assert {c["name"] for c in dump["clusters"]} == {
        "outbound|9090|v1|calc.test",
        "outbound|9090|v2|calc.test",
    }
    assert http_get(admin, "/nope")[0] == 404
