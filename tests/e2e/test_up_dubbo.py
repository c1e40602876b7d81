"""``metamesh up DIR`` end to end with Dubbo: real dubbo-py providers v1/v2 and a consumer.

Each test runs in both deployed modes (``up``, and ``control-plane`` + ``proxy --xds``).

The providers (``dubbopy_versioned.py``, each a subprocess) answer ``<version>:...``, so the
consumer sees which subset served each call. One ``metamesh up`` subprocess serves the
directory; over ONE consumer connection the test checks a route by method (``sayHello`` -> v2),
a route by attachment (``x-tenant: beta`` -> v1), a 20/80 split of the rest within 5 sigma,
the proxy's ``istio_requests_total`` per version against what the consumer saw, and then
rewrites the MetaRouter file and polls (2 s budget) until the new route is followed on the same
connection with no failed call.
"""

from __future__ import annotations

import socket
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metamesh.demo.mesh import parse_prometheus
from metamesh.demo.steps import within_5_sigma
from tests.codecs.dubbo.peers import Peer
from tests.e2e import mesh
from tests.e2e.mesh import (
    MODES,
    DeployedMesh,
    access_records,
    check_server_info,
    free_address,
    service_with_subsets,
    write,
)

pytestmark = [pytest.mark.interop, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
IFACE = "org.apache.dubbo.demo.DemoService"
HOST = IFACE.lower()
META = "{name: demo, namespace: dubbo}"
PROVIDER = Path(__file__).with_name("dubbopy_versioned.py")
ROUTE_CHANGE_BUDGET = 2.0  # seconds from the file write to the new route in force


def services(address: tuple[str, int], v1: int, v2: int) -> str:
    return service_with_subsets(
        META, HOST, address, "tcp-metaprotocol-dubbo-e2e", {"v1": v1, "v2": v2}
    )


def to(subset: str, weight: int | None = None) -> str:
    return mesh.to(subset, weight, host=HOST)


def router(routes: str) -> str:
    return mesh.router(routes, host=HOST, meta=META)


FIRST_ROUTES = f"""  - name: hello-to-v2
    match: {{attributes: {{interface: {{exact: {IFACE}}}, method: {{exact: sayHello}}}}}}
    route: [{to("v2")}]
  - name: beta-to-v1
    match: {{attributes: {{x-tenant: {{exact: beta}}}}}}
    route: [{to("v1")}]
  - name: split
    route: [{to("v1", 20)}, {to("v2", 80)}]"""

EDITED_ROUTES = f"""  - name: echo-to-v1
    match: {{attributes: {{method: {{exact: echo}}}}}}
    route: [{to("v1")}]
  - name: rest
    route: [{to("v2")}]"""


class Consumer:
    """A dubbo-py consumer on one connection; every answer's version is tallied."""

    def __init__(self, address: tuple[str, int]) -> None:
        from dubbo.client import DubboClient

        self.client: Any = DubboClient(address[0], address[1], dubbo_version="2.0.2")
        self.local = self.client._sock.getsockname()
        self.seen: Counter[str] = Counter()
        self.last = ""  # the last answer without its version

    def call(self, method: str, arg: str, **attachments: str) -> str:
        answer = self.client.send_request_and_return_response(
            service_name=IFACE,
            method_name=method,
            args=[arg],
            service_version="0.0.0",
            attachment=attachments,
        )
        assert answer.status == 20, (answer.status, answer.error)
        version, _, self.last = str(answer.data).partition(":")
        self.seen[version] += 1
        return version

    def same_connection(self) -> bool:
        sock = self.client._sock
        return sock.fileno() != -1 and sock.getsockname() == self.local

    def close(self) -> None:
        self.client._sock.shutdown(socket.SHUT_RDWR)  # dubbo-py has no close()
        self.client._sock.close()


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


def proxy_requests(admin: str) -> dict[str, int]:
    with urllib.request.urlopen(f"http://{admin}/stats/prometheus", timeout=5) as reply:
        counts = parse_prometheus(reply.read().decode())
    assert not counts.failed and counts.local_replies == 0
    return {v: counts.requests(HOST, v) for v in ("v1", "v2")}


@pytest.mark.parametrize("mode", MODES)
def test_up_routes_dubbo_by_method_attachment_split_and_live_edit(
    providers: tuple[int, int], tmp_path: Path, mode: str
) -> None:
    config = tmp_path / "mesh"
    config.mkdir()
    address = free_address()
    write(config / "services.yaml", services(address, *providers))
    write(config / "router.yaml", router(FIRST_ROUTES))
    where = f"{address[0]}:{address[1]}"
    log = tmp_path / "access.log"
    with DeployedMesh(tmp_path, mode, config, "--access-log", str(log)) as up:
        up.wait_for(f"{where}  dubbo  hello-to-v2 -> v2; beta-to-v1 -> v1; split -> v1 20%")
        check_server_info(up.admin())
        consumer = Consumer(address)
        try:
            # by method: every sayHello on v2, with or without the attachment
            assert {consumer.call("sayHello", f"u{i}") for i in range(20)} == {"v2"}
            assert consumer.call("sayHello", "b", **{"x-tenant": "beta"}) == "v2"
            # by attachment: the provider saw it, and every such call went to v1
            assert consumer.call("getAttachment", "x-tenant", **{"x-tenant": "beta"}) == "v1"
            assert consumer.last == "beta"
            assert {consumer.call("echo", str(i), **{"x-tenant": "beta"}) for i in range(20)} == {
                "v1"
            }
            # the rest: 20/80 within 5 sigma
            n = 400
            split = Counter(consumer.call("echo", str(i)) for i in range(n))
            assert set(split) == {"v1", "v2"} and within_5_sigma(split["v1"], n, 0.2), split
            # the proxy counted exactly what the consumer saw, per version
            assert proxy_requests(up.admin()) == {v: consumer.seen[v] for v in ("v1", "v2")}

            # live edit: echo now to v1 only, the rest to v2, on the same connection
            write(config / "router.yaml", router(EDITED_ROUTES))
            start, streak = time.monotonic(), 0
            while streak < 20:
                assert time.monotonic() - start < ROUTE_CHANGE_BUDGET, "route change not in force"
                streak = streak + 1 if consumer.call("echo", "poll") == "v1" else 0
            print(f"route change in force after {time.monotonic() - start:.3f}s")
            assert {consumer.call("sayHello", "x", **{"x-tenant": "beta"}) for _ in range(20)} == {
                "v2"
            }
            assert consumer.same_connection()
        finally:
            consumer.close()
        assert up.stop() == 0
    # one access log line per call the consumer made, whichever mode served them
    records = access_records(log)
    assert len(records) == consumer.seen.total()
    assert {r["interface"] for r in records} == {IFACE}
    assert {r["method"] for r in records} == {"sayHello", "getAttachment", "echo"}
    assert {r["route"] for r in records} == {
        "hello-to-v2", "beta-to-v1", "split", "echo-to-v1", "rest"
    }  # fmt: skip
