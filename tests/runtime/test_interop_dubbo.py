"""Real dubbo-py consumers -> ``metamesh`` proxy (DubboCodec) -> two real dubbo-py providers.

Requests are routed on an attachment (``group``) to two provider processes; each route adds an
attachment naming its version, which the provider echoes back (``getAttachment``), so the test
sees both the routing and the request mutation. A method without a route comes back as Dubbo
status 60 (service not found), heartbeats are answered by the proxy, and several consumers
share one upstream connection per provider.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from metamesh.proxy.config import Snapshot
from tests.codecs.dubbo import peers
from tests.codecs.dubbo.frames import IFACE
from tests.codecs.dubbo.peers import dubbopy_call, dubbopy_client
from tests.runtime import mesh_config as mc
from tests.runtime.proxy_thread import ProxyThread

pytestmark = [pytest.mark.interop, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def providers() -> Iterator[tuple[peers.Peer, peers.Peer]]:
    a, b = peers.start_dubbopy_provider(), peers.start_dubbopy_provider()
    yield a, b
    a.stop()
    b.stop()


def proxy_config(v1: int, v2: int) -> Snapshot:
    c1, c2 = "outbound|20880|v1|demo.test", "outbound|20880|v2|demo.test"
    canary = mc.route("canary", c2, {"x-routed-to": "v2"}, interface=IFACE, group="canary")
    stable_methods = "~sayHello|add|getAttachment"
    stable = mc.route("stable", c1, {"x-routed-to": "v1"}, interface=IFACE, method=stable_methods)
    return mc.snapshot(
        [mc.listener("dubbo", "dubbo", "demo")],
        [mc.cluster(c1, v1), mc.cluster(c2, v2)],
        {"demo": [canary, stable]},
    )


def test_routes_mutates_and_multiplexes_real_dubbo_clients(
    providers: tuple[peers.Peer, peers.Peer],
) -> None:
    v1, v2 = providers
    with ProxyThread(proxy_config(v1.port, v2.port)) as proxy:
        port = proxy.port("dubbo")
        errors: list[BaseException] = []

        def consumer(i: int) -> None:
            try:
                c = dubbopy_client(port)
                r = dubbopy_call(c, "sayHello", f"user{i}")
                assert (r.status, r.data) == (20, f"Hello user{i}")
                assert dubbopy_call(c, "add", i, 40).data == i + 40
                assert dubbopy_call(c, "getAttachment", "x-routed-to").data == "v1"
                canary = dubbopy_call(c, "getAttachment", "x-routed-to", group="canary")
                assert canary.data == "v2"
                c.send_heartbeat_request(1000 + i)
                missing = dubbopy_call(c, "noSuchMethod", 1)
                assert (missing.ok, missing.status) == (False, 60)
                assert dubbopy_call(c, "add", 1, 1).data == 2  # the connection is still usable
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=consumer, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        server = proxy.server
        assert server is not None
        stats = server.core.stats
        demo = {"destination_service": "demo.test", "request_protocol": "dubbo"}
        assert stats.totals(**demo, destination_version="v1") == [24, 0]
        assert stats.totals(**demo, destination_version="v2") == [6, 0]
        assert stats.heartbeats == 6
        conns = {name: cs.connections for name, cs in server.core.clusters.items()}
        assert conns == {"outbound|20880|v1|demo.test": 1, "outbound|20880|v2|demo.test": 1}
