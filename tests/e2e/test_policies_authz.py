"""Authorization end to end: policies in manifests -> ``metamesh up`` -> rbac in the proxy.

Thrift: a MetaAuthorizationPolicy ALLOWs only clients from 127.0.0.2 and 127.0.0.3 (the
service's endpoints carry ``app: guarded``, which its selector names), a second one DENYs
method ``add`` from 127.0.0.3. Apache clients bind their socket to a chosen 127.0.0.x source
address before connecting, so the proxy sees that peer address. Dubbo: Aeraki's
DubboAuthorizationPolicy ALLOWs ``sayHello`` and ``add`` on the demo interface; a dubbo-py
consumer calls a dubbo-py provider through the proxy. Denials are protocol-native errors
carrying the proxy's reason; ``metamesh_rbac_{allowed,denied}_total`` count them.
"""

from __future__ import annotations

import re
import socket
import types
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.Thrift import TApplicationException
from thrift.transport import TSocket
from thrift.transport.TTransport import TFramedTransport

from tests.codecs.dubbo import peers
from tests.codecs.thrift.apache_peer import ApacheServer
from tests.e2e.mesh import Metamesh, free_address, write
from tests.runtime.thrift_servers import NamedCalc

pytestmark = [pytest.mark.interop, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
IFACE = "org.apache.dubbo.demo.DemoService"
THRIFT_HOST = "guarded.authz.svc.cluster.local"


class BoundThriftClient:
    """An Apache framed/binary Calc client whose TCP source address is ``source``."""

    def __init__(self, gen: types.ModuleType, source: str, address: str, port: int) -> None:
        sock = socket.socket()
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect((address, port))
        self.socket = TSocket.TSocket()
        self.socket.handle = sock  # already connected: the transport is never open()ed
        self.transport = TFramedTransport(self.socket)
        self.client: Any = gen.Calc.Client(TBinaryProtocolAccelerated(self.transport))

    def close(self) -> None:
        self.transport.close()


@dataclass
class Mesh:
    up: Metamesh
    gen: types.ModuleType
    thrift: tuple[str, int]
    dubbo: tuple[str, int]

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://{self.up.admin()}/stats/prometheus") as r:
            text = r.read().decode()
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def thrift_client(self, source: str) -> BoundThriftClient:
        return BoundThriftClient(self.gen, source, *self.thrift)


def manifests(thrift: tuple[str, int], thrift_server: int, dubbo: tuple[str, int], dp: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: guarded, namespace: authz}}
spec:
  hosts: [{THRIFT_HOST}]
  addresses: [{thrift[0]}]
  ports: [{{number: {thrift[1]}, name: tcp-metaprotocol-thrift-guarded}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp-metaprotocol-thrift-guarded: {thrift_server}}},
     labels: {{app: guarded}}}}
---
apiVersion: metamesh.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {{name: known-clients, namespace: authz}}
spec:
  selector: {{matchLabels: {{app: guarded}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{ipBlocks: [127.0.0.2, 127.0.0.3/32]}}}}]
---
apiVersion: metamesh.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {{name: no-add-from-3, namespace: authz}}
spec:
  action: DENY
  rules:
  - from: [{{source: {{ipBlocks: [127.0.0.3]}}}}]
    to: [{{operation: {{attributes: {{method: {{exact: add}}}}}}}}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: demo, namespace: dubbo}}
spec:
  hosts: [{IFACE.lower()}]
  addresses: [{dubbo[0]}]
  ports: [{{number: {dubbo[1]}, name: tcp-metaprotocol-dubbo-demo}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp-metaprotocol-dubbo-demo: {dp}}}}}
---
apiVersion: dubbo.aeraki.io/v1alpha1
kind: DubboAuthorizationPolicy
metadata: {{name: demo-reads, namespace: dubbo}}
spec:
  action: ALLOW
  rules:
  - to: [{{operation: {{interfaces: [org.apache.dubbo.demo.*], methods: [sayHello, add]}}}}]
"""


@pytest.fixture(scope="module")
def mesh(calc_gen: types.ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("authz")
    config = tmp / "mesh"
    config.mkdir()
    with ExitStack() as stack:
        server = stack.enter_context(
            ApacheServer(
                calc_gen.Calc.Processor(NamedCalc(calc_gen, "guarded")), "framed", "binary"
            )
        )
        provider = peers.start_dubbopy_provider()
        stack.callback(provider.stop)
        thrift, dubbo = free_address(), free_address()
        write(config / "mesh.yaml", manifests(thrift, server.port, dubbo, provider.port))
        up = stack.enter_context(
            Metamesh(tmp, "up", "up", str(config), "--admin-port", "0", "--log-level", "ERROR")
        )
        up.wait_for(f"{thrift[0]}:{thrift[1]}")
        up.wait_for(f"{dubbo[0]}:{dubbo[1]}")
        yield Mesh(up, calc_gen, thrift, dubbo)


def denied(call: Any) -> str:
    with pytest.raises(TApplicationException) as info:
        call()
    assert info.value.type == TApplicationException.INTERNAL_ERROR
    return str(info.value.message)


def test_thrift_allow_and_deny_by_source_address_and_method(mesh: Mesh) -> None:
    allowed_before = mesh.metric("metamesh_rbac_allowed_total")
    denied_before = mesh.metric("metamesh_rbac_denied_total")
    two, three, four = (mesh.thrift_client(f"127.0.0.{i}") for i in (2, 3, 4))
    try:
        # 127.0.0.2: allowed, every method
        assert two.client.echo("hi") == "guarded:hi"
        assert two.client.add(2, 3) == 5
        # 127.0.0.3: allowed, except add (DENY by method and source)
        assert three.client.echo("hi") == "guarded:hi"
        assert denied(lambda: three.client.add(1, 1)) == "denied by policy authz/no-add-from-3"
        assert three.client.echo("still") == "guarded:still"  # the connection stays usable
        # 127.0.0.4: no ALLOW policy matches
        assert denied(lambda: four.client.echo("hi")) == "no ALLOW policy matched"
        assert denied(lambda: four.client.add(1, 2)) == "no ALLOW policy matched"
    finally:
        for c in (two, three, four):
            c.close()
    assert mesh.metric("metamesh_rbac_allowed_total") - allowed_before == 4
    assert mesh.metric("metamesh_rbac_denied_total") - denied_before == 3


def test_dubbo_authorization_policy_allows_listed_methods_only(mesh: Mesh) -> None:
    from dubbo.client import DubboClient

    client = DubboClient(mesh.dubbo[0], mesh.dubbo[1], dubbo_version="2.0.2")

    def call(method: str, *args: Any) -> Any:
        return client.send_request_and_return_response(
            service_name=IFACE, method_name=method, args=list(args), service_version="0.0.0"
        )

    denied_before = mesh.metric("metamesh_rbac_denied_total")
    hello = call("sayHello", "mesh")
    assert (hello.ok, hello.status) == (True, 20), hello.error
    assert "mesh" in str(hello.data)
    echo = call("echo", "x")
    assert not echo.ok and echo.status != 20
    assert "no ALLOW policy matched" in str(echo.error)
    assert mesh.metric("metamesh_rbac_denied_total") - denied_before == 1
    client._sock.shutdown(socket.SHUT_RDWR)  # dubbo-py has no close()
