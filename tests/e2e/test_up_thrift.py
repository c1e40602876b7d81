"""``metamesh up DIR`` end to end: real Apache Thrift clients and servers, live config edits.

Each test runs in both deployed modes (``up``, and ``control-plane`` + ``proxy --xds``).

The servers' ``echo`` answers ``<version>:<text>``, so the client itself sees which subset a
request reached. One ``metamesh up`` subprocess serves the directory, which also holds what a
team keeps beside its Aeraki resources (an Istio VirtualService and Gateway, a Kubernetes
Service and Deployment: skipped, one info line per kind); the tests check a
method route and a 20/80 split (+-5 sigma), then edit the MetaRouter file and, on the same
client connection with no error, poll until echo follows the new route (2 s budget), drop
invalid YAML and an invalid resource into the directory (reported on stderr, traffic keeps
the last good route) and check ``metamesh proxy-config`` shows the served address.
"""

from __future__ import annotations

import subprocess
import sys
import time
import types
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from metamesh.demo.steps import within_5_sigma
from tests.codecs.thrift.apache_peer import ApacheServer
from tests.e2e.mesh import (
    MODES,
    DeployedMesh,
    ThriftClient,
    access_records,
    check_server_info,
    free_address,
    router,
    thrift_mesh,
    to,
    wait_until,
    write,
)
from tests.runtime.thrift_servers import NamedCalc

pytestmark = pytest.mark.interop
ROUTE_CHANGE_BUDGET = 2.0  # seconds from the file write to the new route in force
#: Kinds metamesh does not read, as they sit beside Aeraki resources in a team's repository.
NOT_READ = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec: {hosts: [web], http: [{route: [{destination: {host: web}}]}]}
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: ingress, namespace: demo}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: v1
kind: Service
metadata: {name: thrift-e2e, namespace: demo}
spec: {ports: [{name: tcp-metaprotocol-thrift-e2e, port: 9090}], selector: {app: thrift-e2e}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: thrift-e2e-v1, namespace: demo}
spec:
  selector: {matchLabels: {app: thrift-e2e}}
  template: {metadata: {labels: {app: thrift-e2e}}}
"""


@pytest.fixture
def servers(calc_gen: types.ModuleType) -> Iterator[tuple[NamedCalc, NamedCalc, int, int]]:
    with ExitStack() as stack:
        v1, v2 = NamedCalc(calc_gen, "v1"), NamedCalc(calc_gen, "v2")
        s1 = stack.enter_context(ApacheServer(calc_gen.Calc.Processor(v1), "framed", "binary"))
        s2 = stack.enter_context(ApacheServer(calc_gen.Calc.Processor(v2), "framed", "binary"))
        yield v1, v2, s1.port, s2.port


def first_version_after(client: ThriftClient, version: str) -> float:
    """Poll on ``client`` until 20 answers in a row come from ``version``; seconds taken."""
    start = time.monotonic()
    streak = 0
    while streak < 20:
        assert time.monotonic() - start < ROUTE_CHANGE_BUDGET, "route change not in force"
        streak = streak + 1 if client.echo("poll").startswith(version + ":") else 0
    return time.monotonic() - start


@pytest.mark.parametrize("mode", MODES)
def test_up_routes_splits_and_follows_edits(
    calc_gen: types.ModuleType,
    servers: tuple[NamedCalc, NamedCalc, int, int],
    tmp_path: Path,
    mode: str,
) -> None:
    v1, v2, p1, p2 = servers
    config = tmp_path / "mesh"
    config.mkdir()
    address, port = free_address()
    thrift_mesh(config, address, port, p1, p2)
    write(
        config / "router.yaml",
        router(
            f"""  - name: add-to-v2
    match: {{attributes: {{method: {{exact: add}}}}}}
    route: [{to("v2")}]
  - name: split
    route: [{to("v1", 20)}, {to("v2", 80)}]"""
        ),
    )
    write(config / "k8s.yaml", NOT_READ)
    log = tmp_path / "access.log"
    with DeployedMesh(tmp_path, mode, config, "--access-log", str(log)) as up:
        up.wait_for(f"{address}:{port}  thrift  add-to-v2 -> v2; split -> v1 20%, v2 80%")
        skipped = [x for x in up.stderr().splitlines() if "k8s.yaml:" in x and ": info: " in x]
        assert [x.split(": info: ")[1].split(":")[0] for x in skipped] == [
            "VirtualService", "Gateway", "Service", "Deployment"
        ], skipped  # fmt: skip
        check_server_info(up.admin())
        client = ThriftClient(calc_gen, address, port)
        try:
            # method route: every add reaches v2
            for i in range(20):
                assert client.client.add(i, 1) == i + 1
            assert [m for m, _ in v1.calls] == [] and len(v2.calls) == 20

            # the rest: 20/80 within 5 sigma
            n = 400
            answers = Counter(client.echo(str(i)).split(":")[0] for i in range(n))
            assert set(answers) == {"v1", "v2"}
            assert within_5_sigma(answers["v1"], n, 0.2), answers

            # edit the MetaRouter: echo now goes to v1 only, on the same connection
            write(
                config / "router.yaml",
                router(
                    f"""  - name: echo-to-v1
    match: {{attributes: {{method: {{exact: echo}}}}}}
    route: [{to("v1")}]
  - name: rest
    route: [{to("v2")}]"""
                ),
            )
            took = first_version_after(client, "v1")
            print(f"route change in force after {took:.3f}s")
            assert client.same_connection()

            # invalid YAML: reported, the last good config stays, traffic continues
            (config / "zz-broken.yaml").write_text("kind: MetaRouter\nspec: [oops\n")
            wait_until(lambda: "zz-broken.yaml" in up.stderr(), "the YAML error on stderr")
            assert "stays in force" in up.stderr()
            assert all(client.echo("x").startswith("v1:") for _ in range(50))

            # an invalid resource: kind, name and field named; traffic continues
            write(
                config / "zz-broken.yaml",
                router(
                    "  - name: bad\n    route: [" + to("v1", 30) + ", " + to("v2", 30) + "]"
                ).replace("name: thrift-e2e", "name: thrift-bad"),
            )
            wait_until(lambda: "MetaRouter demo/thrift-bad" in up.stderr(), "resource error")
            assert all(client.echo("y").startswith("v1:") for _ in range(50))
            (config / "zz-broken.yaml").unlink()

            # and changes flow again once the directory is valid
            write(config / "router.yaml", router(f"  - name: all-v2\n    route: [{to('v2')}]"))
            first_version_after(client, "v2")
            assert client.same_connection()
        finally:
            client.close()

        # proxy-config reads the running proxy's admin
        shown = subprocess.run(
            [sys.executable, "-m", "metamesh", "proxy-config", "listeners", "--admin", up.admin()],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"{address}:{port}" in shown
        assert up.stop() == 0
    # one access log line per call the servers answered, whichever mode served them
    records = access_records(log)
    assert len(records) == len(v1.calls) + len(v2.calls)
    assert {r["method"] for r in records} == {"add", "echo"}
    assert {r["route"] for r in records} >= {"add-to-v2", "split", "echo-to-v1", "all-v2"}
    assert {r["response_code"] for r in records} == {"0"}  # Istio's code for success
    if mode == "up":
        assert "metamesh: stopping" in up.stdout()
