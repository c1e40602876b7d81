"""Thrift through a metamesh proxy and through a real Envoy, from one control plane.

The same MetaRouter drives both (:mod:`.side_by_side`): ``add`` goes to v2, the rest is split
20/80. Over one Apache Thrift connection per proxy (framed, binary) the test checks the method
route, the split (within 5 sigma), then rewrites the MetaRouter (``echo`` to v1, the rest to
v2) and polls both held connections until the new route is in force on both, within 2 s of
the write. No call may fail. At the end each proxy's own request counts (metamesh's
``istio_requests_total`` per version, Envoy's per-cluster ``thrift.upstream_rq_call`` from its
``/stats``) equal what its client saw, and the two together equal the servers' counts.
"""

from __future__ import annotations

import types
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from metamesh.demo.steps import within_5_sigma
from tests.codecs.thrift.apache_peer import ApacheServer
from tests.control.envoy.envoy_node import error_states
from tests.control.envoy.side_by_side import TwoDataPlanes, within_budget
from tests.e2e.mesh import HOST, ThriftClient, free_address, router, thrift_mesh, to, write
from tests.runtime.thrift_servers import NamedCalc

pytestmark = pytest.mark.interop

FIRST = f"""  - name: add-to-v2
    match: {{attributes: {{method: {{exact: add}}}}}}
    route: [{to("v2")}]
  - name: split
    route: [{to("v1", 20)}, {to("v2", 80)}]"""
EDITED = f"""  - name: echo-to-v1
    match: {{attributes: {{method: {{exact: echo}}}}}}
    route: [{to("v1")}]
  - name: rest
    route: [{to("v2")}]"""


@pytest.fixture
def servers(calc_gen: types.ModuleType) -> Iterator[tuple[NamedCalc, NamedCalc, int, int]]:
    with ExitStack() as stack:
        v1, v2 = NamedCalc(calc_gen, "v1"), NamedCalc(calc_gen, "v2")
        s1 = stack.enter_context(ApacheServer(calc_gen.Calc.Processor(v1), "framed", "binary"))
        s2 = stack.enter_context(ApacheServer(calc_gen.Calc.Processor(v2), "framed", "binary"))
        yield v1, v2, s1.port, s2.port


class Tallied:
    """One client connection through one proxy; the versions that answered, tallied."""

    def __init__(self, gen: types.ModuleType, address: tuple[str, int]) -> None:
        self.client = ThriftClient(gen, *address)
        self.seen: Counter[str] = Counter()

    def echo(self, text: str) -> str:
        version = self.client.echo(text).split(":")[0]
        self.seen[version] += 1
        return version

    def echoes_from(self, version: str) -> Callable[[], bool]:
        return lambda: self.echo("poll") == version

    def add(self, a: int) -> None:
        assert self.client.client.add(a, 1) == a + 1
        self.seen["v2"] += 1  # checked against the servers' counts below


def envoy_counts(mesh: TwoDataPlanes, port: int) -> dict[str, int]:
    stats = mesh.node.stats("cluster.outbound|")
    return {
        v: stats.get(f"cluster.outbound|{port}|{v}|{HOST}.thrift.upstream_rq_call", 0)
        for v in ("v1", "v2")
    }


def test_thrift_same_scenario_through_metamesh_and_envoy(
    calc_gen: types.ModuleType, servers: tuple[NamedCalc, NamedCalc, int, int], tmp_path: Path
) -> None:
    v1, v2, p1, p2 = servers
    config = tmp_path / "mesh"
    config.mkdir()
    address, port = free_address()
    thrift_mesh(config, address, port, p1, p2)
    write(config / "router.yaml", router(FIRST))
    with TwoDataPlanes(tmp_path, config, (address, port)) as mesh:
        mesh.proxy.wait_for(f"{address}:{port}  thrift  add-to-v2 -> v2; split -> v1 20%, v2 80%")
        mesh.wait_for_envoy(lambda dump: '"method_name": "add"' in dump, "Envoy's Thrift routes")
        clients = [Tallied(calc_gen, mesh.metamesh), Tallied(calc_gen, mesh.envoy)]
        try:
            for client in clients:
                before = len(v2.calls)
                for i in range(20):
                    client.add(i)
                assert len(v2.calls) - before == 20 and not [m for m, _ in v1.calls if m == "add"]
                n = 400
                split = Counter(client.echo(str(i)) for i in range(n))
                assert set(split) == {"v1", "v2"} and within_5_sigma(split["v1"], n, 0.2), split

            write(config / "router.yaml", router(EDITED))
            took = within_budget([client.echoes_from("v1") for client in clients])
            print(f"route change in force on both proxies after {took:.3f}s")
            for client in clients:
                client.add(0)
                assert client.client.same_connection()
        finally:
            for client in clients:
                client.client.close()

        served = {"v1": len(v1.calls), "v2": len(v2.calls)}
        counts = mesh.metamesh_counts()
        assert counts.errors() == 0
        assert {v: counts.requests(HOST, v) for v in served} == dict(clients[0].seen)
        assert envoy_counts(mesh, port) == dict(clients[1].seen)
        assert served == dict(clients[0].seen + clients[1].seen)
        assert error_states(mesh.node.config_dump()) == []  # Envoy rejected nothing
        errors = mesh.node.stats("thrift.")
        assert not {k: n for k, n in errors.items() if n and ("exception" in k or "error" in k)}
