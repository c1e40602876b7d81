"""Dubbo through a metamesh proxy and through a real Envoy, from one control plane.

The same MetaRouter drives both (:mod:`.side_by_side`; Envoy's side is dubbo_proxy,
:mod:`metamesh.control.envoy.dubbo`). Real dubbo-py providers v1/v2 answer ``<version>:...``;
one dubbo-py consumer per proxy, each on one connection, checks routes by interface + method
(``sayHello`` -> v2), by attachment (``x-tenant: beta`` -> v1), by service version
(``version: 9.9.9`` -> v1) and by group (``group: blue`` -> v1), a 20/80 split of the rest
within 5 sigma, then a live MetaRouter edit in force on both held connections within 2 s of
the write. No call may fail. Each proxy's request counts (metamesh's ``istio_requests_total``,
Envoy's per-cluster ``upstream_rq_total`` from ``/stats``) equal what its consumer saw.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from metamesh.demo.steps import within_5_sigma
from tests.codecs.dubbo.peers import Peer
from tests.control.envoy.envoy_node import error_states
from tests.control.envoy.side_by_side import TwoDataPlanes, within_budget
from tests.e2e.mesh import free_address, write
from tests.e2e.test_up_dubbo import HOST, IFACE, PROVIDER, Consumer, router, services, to

pytestmark = [pytest.mark.interop, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

FIRST = f"""  - name: hello-to-v2
    match: {{attributes: {{interface: {{exact: {IFACE}}}, method: {{exact: sayHello}}}}}}
    route: [{to("v2")}]
  - name: beta-to-v1
    match: {{attributes: {{x-tenant: {{exact: beta}}}}}}
    route: [{to("v1")}]
  - name: version-to-v1
    match: {{attributes: {{version: {{exact: 9.9.9}}}}}}
    route: [{to("v1")}]
  - name: group-to-v1
    match: {{attributes: {{group: {{exact: blue}}}}}}
    route: [{to("v1")}]
  - name: split
    route: [{to("v1", 20)}, {to("v2", 80)}]"""
EDITED = f"""  - name: echo-to-v1
    match: {{attributes: {{method: {{exact: echo}}}}}}
    route: [{to("v1")}]
  - name: rest
    route: [{to("v2")}]"""


@pytest.fixture
def providers() -> Iterator[tuple[int, int]]:
    started: list[Peer] = []
    try:
        for version in ("v1", "v2"):
            started.append(Peer([sys.executable, str(PROVIDER), "0", version], PROVIDER.parent))
        yield started[0].port, started[1].port
    finally:
        for peer in started:
            peer.stop()


class VersionedConsumer(Consumer):
    """The e2e consumer, plus calls that name a service version."""

    def call_version(self, method: str, arg: str, version: str) -> str:
        answer = self.client.send_request_and_return_response(
            service_name=IFACE, method_name=method, args=[arg], service_version=version
        )
        assert answer.status == 20, (answer.status, answer.error)
        served = str(answer.data).partition(":")[0]
        self.seen[served] += 1
        return served

    def echoes_from(self, version: str) -> Callable[[], bool]:
        return lambda: self.call("echo", "poll") == version


def envoy_counts(mesh: TwoDataPlanes, port: int) -> dict[str, int]:
    stats = mesh.node.stats("cluster.outbound|")
    return {
        v: stats.get(f"cluster.outbound|{port}|{v}|{HOST}.upstream_rq_total", 0)
        for v in ("v1", "v2")
    }


def test_dubbo_same_scenario_through_metamesh_and_envoy(
    providers: tuple[int, int], tmp_path: Path
) -> None:
    config = tmp_path / "mesh"
    config.mkdir()
    address = free_address()
    write(config / "services.yaml", services(address, *providers))
    write(config / "router.yaml", router(FIRST))
    with TwoDataPlanes(tmp_path, config, address) as mesh:
        mesh.proxy.wait_for(f"{address[0]}:{address[1]}  dubbo  hello-to-v2 -> v2")
        mesh.wait_for_envoy(lambda dump: "hello-to-v2" in dump, "Envoy's Dubbo routes")
        consumers = [VersionedConsumer(mesh.metamesh), VersionedConsumer(mesh.envoy)]
        try:
            for consumer in consumers:
                assert {consumer.call("sayHello", f"u{i}") for i in range(10)} == {"v2"}
                assert consumer.call("sayHello", "b", **{"x-tenant": "beta"}) == "v2"
                assert consumer.call("getAttachment", "x-tenant", **{"x-tenant": "beta"}) == "v1"
                assert consumer.last == "beta"
                assert {consumer.call("echo", "t", **{"x-tenant": "beta"}) for _ in range(10)} == {
                    "v1"
                }
                assert {consumer.call_version("echo", "v", "9.9.9") for _ in range(10)} == {"v1"}
                assert {consumer.call("echo", "g", group="blue") for _ in range(10)} == {"v1"}
                n = 400
                split = Counter(consumer.call("echo", str(i)) for i in range(n))
                assert set(split) == {"v1", "v2"} and within_5_sigma(split["v1"], n, 0.2), split

            write(config / "router.yaml", router(EDITED))
            took = within_budget([consumer.echoes_from("v1") for consumer in consumers])
            print(f"route change in force on both proxies after {took:.3f}s")
            for consumer in consumers:
                assert consumer.call("sayHello", "x", **{"x-tenant": "beta"}) == "v2"
                assert consumer.same_connection()
        finally:
            for consumer in consumers:
                consumer.close()

        counts = mesh.metamesh_counts()
        assert counts.errors() == 0
        assert {v: counts.requests(HOST, v) for v in ("v1", "v2")} == dict(consumers[0].seen)
        assert envoy_counts(mesh, address[1]) == dict(consumers[1].seen)
        assert error_states(mesh.node.config_dump()) == []  # Envoy rejected nothing
