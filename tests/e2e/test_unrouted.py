"""A call no route matches, end to end: ``metamesh up`` serving a Thrift and a Dubbo service
whose MetaRouters route one method each. A real Apache Thrift client (plain and multiplexed)
gets a ``TApplicationException`` and a dubbo-py consumer an error status whose text names what
it called (``no route for SERVICE.METHOD``); the proxy counts those calls against each
listener's service (``destination_service``), and the connections stay usable."""

from __future__ import annotations

import socket
import sys
import threading
import types
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.Thrift import TApplicationException

from tests.codecs.dubbo import peers
from tests.codecs.thrift.apache_peer import ApacheServer
from tests.e2e import mesh
from tests.e2e.mesh import DeployedMesh, ThriftClient, free_address, thrift_mesh, write
from tests.runtime.thrift_servers import NamedCalc
from tests.support.prom import samples

pytestmark = [pytest.mark.interop, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
IFACE = "org.apache.dubbo.demo.DemoService"
DUBBO_HOST = IFACE.lower()
DUBBO_META = "{name: demo, namespace: dubbo}"
PROVIDER = Path(__file__).with_name("dubbopy_versioned.py")


def only_method(method: str, host: str, meta: str) -> str:
    routes = f"""  - name: only-{method}
    match: {{attributes: {{method: {{exact: {method}}}}}}}
    route: [{mesh.to("v1", host=host)}]"""
    return mesh.router(routes, host=host, meta=meta)


def unrouted_total(admin: str, service: str, protocol: str) -> float:
    with urllib.request.urlopen(f"http://{admin}/stats/prometheus", timeout=5) as reply:
        text = reply.read().decode()
    assert 'destination_service="unknown"' not in text
    unrouted = {"destination_service": service, "destination_version": "unknown"}
    labels = {"reporter": "source", "request_protocol": protocol, "response_code": "1"}
    found = samples(text, "istio_requests_total", **unrouted, **labels, response_flags="NR")
    assert len(found) == 1, text
    return found[0][1]


def test_unrouted_calls_name_the_service_and_method_and_count_against_it(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    config = tmp_path / "mesh"
    config.mkdir()
    thrift_at, dubbo_at = free_address(), free_address()
    provider = peers.Peer([sys.executable, str(PROVIDER), "0", "v1"], PROVIDER.parent)
    try:
        with ApacheServer(
            calc_gen.Calc.Processor(NamedCalc(calc_gen, "v1")), "framed", "binary"
        ) as v1:
            thrift_mesh(config, *thrift_at, v1.port, v1.port)
            write(config / "thrift-router.yaml", only_method("add", mesh.HOST, mesh.THRIFT_META))
            services = mesh.service_with_subsets(
                DUBBO_META,
                DUBBO_HOST,
                dubbo_at,
                "tcp-metaprotocol-dubbo-e2e",
                {"v1": provider.port},
            )
            write(config / "dubbo.yaml", services)
            write(config / "dubbo-router.yaml", only_method("sayHello", DUBBO_HOST, DUBBO_META))
            with DeployedMesh(tmp_path, "up", config) as up:
                up.wait_for(f"{dubbo_at[0]}:{dubbo_at[1]}  dubbo  only-sayHello -> v1")
                up.wait_for(f"{thrift_at[0]}:{thrift_at[1]}  thrift  only-add -> v1")
                admin = up.admin()
                check_thrift(calc_gen, thrift_at)
                check_dubbo(dubbo_at)
                assert unrouted_total(admin, mesh.HOST, "thrift") == 2.0
                assert unrouted_total(admin, DUBBO_HOST, "dubbo") == 1.0
                assert up.stop() == 0
    finally:
        provider.stop()


def check_thrift(calc_gen: types.ModuleType, address: tuple[str, int]) -> None:
    client = ThriftClient(calc_gen, *address)
    try:
        with pytest.raises(TApplicationException) as plain:
            client.client.ping()
        assert plain.value.type == TApplicationException.UNKNOWN_METHOD
        assert plain.value.message == f"no route for {mesh.HOST}.ping"
        # the same connection, multiplexed: the service named on the wire is the one named
        proto = TMultiplexedProtocol(TBinaryProtocolAccelerated(client.transport), "Calc")
        multiplexed: Any = calc_gen.Calc.Client(proto)
        with pytest.raises(TApplicationException) as named:
            multiplexed.echo("x")
        assert named.value.message == "no route for Calc.echo"
        assert client.client.add(2, 3) == 5  # still usable
    finally:
        client.close()


def check_dubbo(address: tuple[str, int]) -> None:
    from dubbo.client import DubboClient

    before = set(threading.enumerate())
    consumer: Any = DubboClient(address[0], address[1], dubbo_version="2.0.2")
    receiver = next(t for t in set(threading.enumerate()) - before if "_recv_loop" in t.name)
    try:
        missing = peers.dubbopy_call(consumer, "echo", "x", service_version="0.0.0")
        assert (missing.ok, missing.status) == (False, 60)  # SERVICE_NOT_FOUND
        assert f"no route for {IFACE}.echo" in missing.error
        hello = peers.dubbopy_call(consumer, "sayHello", "ann", service_version="0.0.0")
        assert (hello.status, hello.data) == (20, "v1:Hello ann")  # still usable
    finally:
        consumer._sock.shutdown(socket.SHUT_RDWR)  # dubbo-py has no close(): its receiver
        receiver.join(5)  # sees EOF and ends before the socket is closed under it
        consumer._sock.close()
