"""Thrift matches on an Envoy node, with the real binary: THeader headers and multiplexed names.

One Thrift service, three subsets on real Apache THeader servers (v1 and v2 plain, v3 a
multiplexed processor serving ``Calc``), metamesh's ADS server and a real Envoy (its listener
moved to 127.0.0.1 with ``METAMESH_LISTEN_ADDRESS``). The MetaRouter, in order:
``service: Calc`` + ``method: echo`` -> v3 (Envoy: ``method_name: Calc:echo``), ``x-tenant:
beta`` -> v1 (a THeader header), the rest -> v2. A multiplexed client reaches v3, a THeader
client with the header v1 and without it v2, on held connections.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from thrift.TMultiplexedProcessor import TMultiplexedProcessor

from tests.codecs.thrift.apache_peer import connect
from tests.control.cases import model_of
from tests.control.envoy.envoy_node import EnvoyNode
from tests.e2e.mesh import free_address, router, service_with_subsets, to, wait_until
from tests.runtime.thrift_servers import AnyClientServer, NamedCalc
from tests.xds.test_envoy import ServerThread

pytestmark = pytest.mark.interop
META = "{name: thrift-e2e, namespace: demo}"
ROUTES = f"""  - name: multiplexed-echo-to-v3
    match: {{attributes: {{service: {{exact: Calc}}, method: {{exact: echo}}}}}}
    route: [{to("v3")}]
  - name: beta-to-v1
    match: {{attributes: {{x-tenant: {{exact: beta}}}}}}
    route: [{to("v1")}]
  - name: rest
    route: [{to("v2")}]"""


@pytest.fixture
def servers(calc_gen: types.ModuleType) -> Iterator[dict[str, int]]:
    with ExitStack() as stack:
        ports = {}
        for name in ("v1", "v2"):
            processor = calc_gen.Calc.Processor(NamedCalc(calc_gen, name))
            ports[name] = stack.enter_context(AnyClientServer(processor)).port
        multiplexed = TMultiplexedProcessor()
        multiplexed.registerProcessor("Calc", calc_gen.Calc.Processor(NamedCalc(calc_gen, "v3")))
        ports["v3"] = stack.enter_context(AnyClientServer(multiplexed)).port
        yield ports


def test_envoy_routes_thrift_on_theader_headers_and_multiplexed_names(
    calc_gen: types.ModuleType, servers: dict[str, int], tmp_path: Path
) -> None:
    address = free_address()
    host = "thrift-e2e.demo.svc.cluster.local"
    manifests = service_with_subsets(META, host, address, "tcp-metaprotocol-thrift-e2e", servers)
    ads = ServerThread(model_of(manifests + "---\n" + router(ROUTES)))
    envoy = EnvoyNode(ads.port, tmp_path, "envoy-thrift", {"METAMESH_LISTEN_ADDRESS": "127.0.0.1"})
    try:
        wait_until(lambda: "Calc:echo" in envoy.get("/config_dump"), "Envoy's routes", 20)
        wait_until(lambda: f"127.0.0.1:{address[1]}" in envoy.get("/listeners"), "listener", 20)
        with (
            connect(calc_gen.Calc, "header", "binary", address[1]) as header,
            connect(calc_gen.Calc, "framed", "binary", address[1], "Calc") as multiplexed,
        ):
            client: Any = header.client
            for n in range(10):
                header.protocol.set_header(b"x-tenant", b"beta")  # cleared after each call
                assert client.echo(f"b{n}") == f"v1:b{n}"
                assert client.echo(f"p{n}") == f"v2:p{n}"
                assert multiplexed.client.echo(f"m{n}") == f"v3:m{n}"
        assert ads.call(lambda: ads.server.nacks()) == []
    finally:
        envoy.close()
        ads.close()
