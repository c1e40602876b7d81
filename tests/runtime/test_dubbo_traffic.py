"""Real Dubbo consumers and providers of two implementations through the real proxy.

Consumers: dubbo-py 0.2.2 (``DubboClient``, in this process) and Node ``sofa-rpc-node`` +
``dubbo-remoting`` (``tests/peers/node/dubbo_consumer.js``, a subprocess), plus
apache-dubbo-js for the default route. Providers: the sofa-rpc-node provider
(``tests/peers/node/dubbo_provider.js``: ``sayHello`` -> ``Hello <name>``) and a dubbo-py
provider with two interfaces (:mod:`tests.runtime.dubbopy_two_services`: ``Hello <name> from
dubbo-py``), so each answer names the provider the proxy chose. Every route adds the attachment
``x-routed-by``, which the providers hand back through ``getAttachment``: the request mutation
is checked where it lands.

Routes: by attachment (``lane: py``), by interface (``GreetingService``), by method (``echo``),
a default for the other DemoService methods on the Node provider, and a ``lane: doomed`` route
to a provider that the test kills. Errors (no route, no healthy upstream) must reach each real
consumer as a Dubbo error carrying the proxy's message, and the connection must keep working.
Finally 200 raw Dubbo clients, all using the same request ids, share one connection to the
dubbo-py provider and each gets its own answers.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.codecs.dubbo import frames, peers
from tests.codecs.dubbo.frames import IFACE
from tests.runtime import mesh_config as mc
from tests.runtime.proxy_thread import ProxyThread

pytestmark = [
    pytest.mark.interop,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.skipif(peers.node() is None, reason="node is not on PATH"),
]

GREETING = "org.apache.dubbo.demo.GreetingService"
TWO_SERVICES = Path(__file__).with_name("dubbopy_two_services.py")
NODE, PY, DOOMED = (f"outbound|20880|{v}|demo.test" for v in ("node", "py", "doomed"))


def start_two_services() -> peers.Peer:
    return peers.Peer([sys.executable, str(TWO_SERVICES), "0"], TWO_SERVICES.parent)


def tagged(name: str, cluster: str, tag: str, **match: str) -> dict[str, Any]:
    return mc.route(name, cluster, {"x-routed-by": tag}, **match)


@dataclass
class Mesh:
    proxy: ProxyThread
    port: int
    node_provider: peers.Peer
    py_provider: peers.Peer
    doomed: peers.Peer

    def stats(self) -> Any:
        server = self.proxy.server
        assert server is not None
        return self.proxy.call(lambda: server.core.stats)

    def connections(self, cluster: str) -> int:
        server = self.proxy.server
        assert server is not None
        return int(self.proxy.call(lambda: server.core.clusters[cluster].connections))


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    started: list[peers.Peer] = []
    try:
        node_provider = peers.start_node_provider()
        started.append(node_provider)
        py_provider = start_two_services()
        started.append(py_provider)
        doomed = peers.start_dubbopy_provider()
        started.append(doomed)
        snap = mc.snapshot(
            [mc.listener("dubbo", "aeraki.meta_protocol.codec.dubbo", "demo")],
            [
                mc.cluster(NODE, node_provider.port),
                mc.cluster(PY, py_provider.port),
                mc.cluster(DOOMED, doomed.port),
            ],
            {
                "demo": [
                    tagged("by-attachment", PY, "attachment", interface=IFACE, lane="py"),
                    tagged("doomed", DOOMED, "doomed", interface=IFACE, lane="doomed"),
                    tagged("by-interface", PY, "interface", interface=GREETING),
                    tagged("by-method", PY, "method", interface=IFACE, method="echo"),
                    tagged(
                        "default",
                        NODE,
                        "default",
                        interface=IFACE,
                        method="~sayHello|add|getAttachment",
                    ),
                ]
            },
        )
        with ProxyThread(snap) as proxy:
            yield Mesh(proxy, proxy.port("dubbo"), node_provider, py_provider, doomed)
    finally:
        for peer in started:
            peer.stop()


@pytest.fixture(scope="module")
def sofa(mesh: Mesh) -> Iterator[peers.Peer]:
    consumer = peers.start_node_consumer("sofa", mesh.port)
    yield consumer
    consumer.stop()


py_call = functools.partial(peers.dubbopy_call, service_version="0.0.0")


def ok(answer: Any) -> Any:
    assert (answer.ok, answer.status) == (True, 20), answer.error
    return answer.data


# -- routing and mutation ---------------------------------------------------------------------


def test_dubbopy_consumer_routes_by_attachment_interface_and_method(mesh: Mesh) -> None:
    c = peers.dubbopy_client(mesh.port)
    assert ok(py_call(c, "sayHello", "ann")) == "Hello ann"  # default -> Node provider
    assert ok(py_call(c, "getAttachment", "x-routed-by")) == "default"
    assert ok(py_call(c, "sayHello", "ann", lane="py")) == "Hello ann from dubbo-py"
    assert ok(py_call(c, "getAttachment", "x-routed-by", lane="py")) == "attachment"
    assert ok(py_call(c, "getAttachment", "lane", lane="py")) == "py"  # the client's own
    assert ok(py_call(c, "greet", "bob", iface=GREETING)) == "greetings, bob"
    assert ok(py_call(c, "getAttachment", "x-routed-by", iface=GREETING)) == "interface"
    assert ok(py_call(c, "echo", "hi")) == "dubbo-py echo: hi"
    assert ok(py_call(c, "add", 40, 2)) == 42  # Node provider, java long back as int


def test_sofa_consumer_routes_by_attachment_and_method_across_implementations(
    mesh: Mesh, sofa: peers.Peer
) -> None:
    assert sofa.call("sayHello", ("string", "ann")) == {"ok": True, "result": "Hello ann"}
    assert sofa.call("getAttachment", ("string", "x-routed-by")) == {
        "ok": True,
        "result": "default",
    }
    # sofa-rpc-node consumer -> proxy -> dubbo-py provider, chosen by the attachment.
    assert sofa.call("sayHello", ("string", "ann"), lane="py") == {
        "ok": True,
        "result": "Hello ann from dubbo-py",
    }
    assert sofa.call("getAttachment", ("string", "x-routed-by"), lane="py") == {
        "ok": True,
        "result": "attachment",
    }
    assert sofa.call("echo", ("string", "hi")) == {"ok": True, "result": "dubbo-py echo: hi"}
    assert sofa.call("add", ("int", 40), ("int", 2)) == {"ok": True, "result": 42}


def test_apache_dubbo_js_consumer_through_the_proxy(mesh: Mesh) -> None:
    consumer = peers.start_node_consumer("adj", mesh.port)
    try:
        assert consumer.call("sayHello", ("string", "js")) == {"ok": True, "result": "Hello js"}
        assert consumer.call("getAttachment", ("string", "x-routed-by")) == {
            "ok": True,
            "result": "default",
        }
        missing = consumer.call("noSuchMethod", ("string", "x"))
        assert missing["ok"] is False and f"no route for {IFACE}.noSuchMethod" in missing["error"]
        assert consumer.call("echo", ("string", "x")) == {"ok": True, "result": "dubbo-py echo: x"}
    finally:
        consumer.stop()


# -- errors -----------------------------------------------------------------------------------


def test_route_not_found_reaches_both_consumers_with_the_message(
    mesh: Mesh, sofa: peers.Peer
) -> None:
    c = peers.dubbopy_client(mesh.port)
    missing = py_call(c, "noSuchMethod", 1)
    assert (missing.ok, missing.status) == (False, 60)
    assert f"no route for {IFACE}.noSuchMethod" in missing.error
    assert ok(py_call(c, "add", 1, 1)) == 2  # same connection still works

    answer = sofa.call("noSuchMethod", ("string", "x"))
    assert answer["ok"] is False and f"no route for {IFACE}.noSuchMethod" in answer["error"]
    assert sofa.call("add", ("int", 2), ("int", 3)) == {"ok": True, "result": 5}


def test_provider_down_gives_no_healthy_upstream_with_the_message(
    mesh: Mesh, sofa: peers.Peer
) -> None:
    c = peers.dubbopy_client(mesh.port)
    assert ok(py_call(c, "sayHello", "x", lane="doomed")) == "Hello x"
    assert sofa.call("sayHello", ("string", "y"), lane="doomed") == {
        "ok": True,
        "result": "Hello y",
    }
    assert mesh.connections(DOOMED) == 1
    mesh.doomed.stop()
    deadline = time.monotonic() + 10
    while mesh.connections(DOOMED):  # the proxy notices the provider's connection closing
        assert time.monotonic() < deadline, "proxy kept the dead provider's connection"
        time.sleep(0.01)
    failures_before = mesh.stats().upstream_connect_failures

    down = py_call(c, "sayHello", "x", lane="doomed")
    assert (down.ok, down.status) == (False, 80)
    assert "upstream connect failed" in down.error
    answer = sofa.call("sayHello", ("string", "y"), lane="doomed")
    assert answer["ok"] is False and "upstream connect failed" in answer["error"]
    assert mesh.stats().upstream_connect_failures >= failures_before + 2
    # Other routes are unaffected, on the same client connections.
    assert ok(py_call(c, "sayHello", "x")) == "Hello x"
    assert sofa.call("sayHello", ("string", "y")) == {"ok": True, "result": "Hello y"}


# -- heartbeats -------------------------------------------------------------------------------


def test_heartbeats_from_both_consumers_are_answered_by_the_proxy(
    mesh: Mesh, sofa: peers.Peer
) -> None:
    before = mesh.stats().heartbeats
    answer = sofa.command(op="heartbeat")  # waits for the heartbeat ack from the proxy
    assert answer["ok"] is True, answer
    c = peers.dubbopy_client(mesh.port)
    c.send_heartbeat_request(4242)
    assert ok(py_call(c, "add", 20, 22)) == 42
    assert sofa.call("add", ("int", 1), ("int", 1)) == {"ok": True, "result": 2}
    assert mesh.stats().heartbeats >= before + 2


# -- 200 clients on one upstream connection ---------------------------------------------------


def test_200_dubbo_clients_share_one_provider_connection(mesh: Mesh) -> None:
    """Raw Dubbo clients (all using request ids 1..3) -> proxy -> the real dubbo-py provider."""
    n, calls = 200, 3

    async def client(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", mesh.port)
        for k in range(calls):  # pipelined, the same ids in every client
            args = (f"client {i} call {k}",)
            writer.write(frames.request(k + 1, args=args, attachments={"lane": "py"}))
        got: dict[int, bytes] = {}
        for _ in range(calls):
            head = await asyncio.wait_for(reader.readexactly(16), 30)
            magic, flags, status, rid, size = struct.unpack(">HBBQI", head)
            body = await reader.readexactly(size)
            assert (magic, flags & 0x80, status) == (0xDABB, 0, 20)
            got[rid] = body
        writer.close()
        for k in range(calls):
            # hessian2 carries a short ASCII string as its raw bytes, so the content shows
            assert f"Hello client {i} call {k} from dubbo-py".encode() in got[k + 1]

    async def everyone() -> None:
        await asyncio.gather(*(client(i) for i in range(n)))

    def answered_by_py() -> int:
        labels = {"destination_service": "demo.test", "destination_version": "py"}
        return mesh.stats().totals(**labels, request_protocol="dubbo")[0]

    before = answered_by_py()
    asyncio.run(everyone())
    assert answered_by_py() == before + n * calls
    assert mesh.connections(PY) == 1
