"""Authorization on an Envoy node, with the real binary: network RBAC from the policies.

One Apache Thrift service (no mesh workloads, so the policies run on the outbound listener,
as for a metamesh proxy) behind a real Envoy fed by metamesh's ADS server. An ALLOW policy for
another source address refuses our client (127.0.0.1): Envoy closes the connection at its
first call and counts ``rbac.denied``; the policy edited to allow 127.0.0.1 reaches Envoy over
LDS and a new connection is served. Then a DENY rule with an operation (``method: add``), which
a connection-level filter cannot see, fails closed: every call from its sources is refused,
as docs/envoy.md's table says.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path

import pytest
from thrift.transport.TTransport import TTransportException

from metamesh.control.model import MeshModel
from tests.codecs.thrift.apache_peer import ApacheServer
from tests.control.cases import model_of
from tests.control.envoy.envoy_node import EnvoyNode
from tests.e2e.mesh import ThriftClient, free_address, wait_until
from tests.runtime.thrift_servers import NamedCalc
from tests.xds.test_envoy import ServerThread

pytestmark = pytest.mark.interop
HOST = "calc.demo.svc.cluster.local"


def mesh(address: tuple[str, int], backend: int, policy: str) -> MeshModel:
    return model_of(f"""\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: calc, namespace: demo}}
spec:
  hosts: [{HOST}]
  addresses: [{address[0]}]
  ports: [{{number: {address[1]}, name: tcp-metaprotocol-thrift-calc}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-metaprotocol-thrift-calc: {backend}}}}}]
---
apiVersion: metamesh.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {{name: gate, namespace: demo}}
spec:
{policy}""")


def refused(gen: types.ModuleType, address: tuple[str, int]) -> bool:
    client = ThriftClient(gen, *address)
    try:
        client.client.add(1, 1)
    except (TTransportException, ConnectionError):
        return True
    finally:
        client.close()
    return False


def served(gen: types.ModuleType, address: tuple[str, int]) -> Callable[[], bool]:
    return lambda: not refused(gen, address)


def test_envoy_enforces_authorization_with_network_rbac(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    calc = NamedCalc(calc_gen, "v1")
    address = free_address()
    with ApacheServer(calc_gen.Calc.Processor(calc), "framed", "binary") as server:
        other = "  action: ALLOW\n  rules: [{from: [{source: {ipBlocks: [127.0.0.2/32]}}]}]\n"
        ads = ServerThread(mesh(address, server.port, other))
        envoy = EnvoyNode(ads.port, tmp_path, "envoy-rbac")
        try:
            wait_until(lambda: "rbac.denied" in envoy.get("/stats"), "Envoy's RBAC filter", 20)
            assert refused(calc_gen, address) and calc.calls == []
            denied = envoy.stats("")
            assert sum(n for k, n in denied.items() if k.endswith("allow.rbac.denied")) >= 1

            ours = "  action: ALLOW\n  rules: [{from: [{source: {ipBlocks: [127.0.0.1/32]}}]}]\n"
            ads.call(lambda: ads.server.set_model(mesh(address, server.port, ours)))
            wait_until(served(calc_gen, address), "the edited policy to allow us", 20)
            assert calc.calls[-1] == ("add", (1, 1))

            deny = (
                "  action: DENY\n  rules: [{from: [{source: {ipBlocks: [127.0.0.0/8]}}], "
                "to: [{operation: {attributes: {method: {exact: add}}}}]}]\n"
            )
            ads.call(lambda: ads.server.set_model(mesh(address, server.port, deny)))
            wait_until(lambda: refused(calc_gen, address), "the DENY rule, failing closed", 20)
            client = ThriftClient(calc_gen, *address)
            try:
                with pytest.raises((TTransportException, ConnectionError)):
                    client.echo("not add, refused all the same")
            finally:
                client.close()
            assert ads.call(lambda: ads.server.nacks()) == []
        finally:
            envoy.close()
            ads.close()
