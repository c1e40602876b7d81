"""The transparent sidecar end to end, in two network namespaces this test creates.

Client namespace: ``metamesh control-plane`` (on its own 127.0.0.1, watching a directory the
test edits) and ``metamesh proxy --xds ... --intercept --namespace demo``; an unmodified
Apache Thrift client and a dubbo-py consumer that dial service **names**, resolved by the
system resolver (glibc, whose queries to the host's nameserver the rules send to the proxy's
DNS responder). Server namespace: Apache Thrift servers and dubbo-py providers v1/v2 on
0.0.0.0, and a second proxy, ``metamesh proxy --config inbound.yaml --intercept``, whose
listeners on the server's address take the inbound connections its rules capture.

One run checks: names resolve to the VIPs (an explicit ServiceEntry address, and one the
control plane allocated); Thrift pinned to v1 by a MetaRouter, Dubbo split 50/50; a MetaRouter
edit moves Thrift to v2 on the same client connection with no failed call; a connection to
the server's own address (no mesh service) is passed through; the server's proxy served
every call (its access log); counters in the client proxy's admin; after SIGTERM both
proxies exit 0 and no rule is left. A second test: a proxy killed with SIGKILL leaves its
rules and ``metamesh intercept --cleanup`` removes them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import types
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import pytest

from tests.e2e.mesh import wait_until, write
from tests.runtime.netns import SERVER_IP, HostPair, Namespace, namespaces_unavailable

pytestmark = [
    pytest.mark.interop,
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(namespaces_unavailable()), reason=namespaces_unavailable() or "available"
    ),
]

PEERS = str(Path(__file__).with_name("netns_peers.py"))
THRIFT_HOST = "calc.demo.svc.cluster.local"
THRIFT_VIP = "198.18.10.10"
DUBBO_HOST = "demoservice.demo.svc.cluster.local"
META = "{name: %s, namespace: demo}"


def service(name: str, host: str, port: int, protocol: str, vip: str | None) -> str:
    address = f"  addresses: [{vip}]\n" if vip else ""
    endpoints = "".join(
        f"  - {{address: {SERVER_IP}, ports: {{{protocol}: {port + i}}}, "
        f"labels: {{version: v{i + 1}}}}}\n"
        for i in range(2)
    )
    return f"""apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {META % name}
spec:
  hosts: [{host}]
{address}  ports: [{{number: {port}, name: {protocol}}}]
  resolution: STATIC
  endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {META % name}
spec:
  host: {host}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


def router(name: str, host: str, weights: dict[str, int]) -> str:
    routes = ", ".join(
        f"{{destination: {{host: {host}, subset: {s}}}, weight: {w}}}" for s, w in weights.items()
    )
    return f"""apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {META % name}
spec:
  hosts: [{host}]
  routes:
  - name: main
    route: [{routes}]
"""


def inbound_config() -> str:
    """The server proxy's static config: a listener on the server's address per port, its
    only route to the app on 127.0.0.1 (stat prefixes ``inbound|...``, as Istio names them)."""
    listeners, clusters, routes = [], [], []
    for port, codec in ((9090, "thrift"), (9091, "thrift"), (20880, "dubbo"), (20881, "dubbo")):
        name = f"inbound|{port}||demo"
        listeners.append(
            f"""  - name: inbound-{port}
    address: {{socket_address: {{address: {SERVER_IP}, port_value: {port}}}}}
    meta_protocol_proxy:
      stat_prefix: "{name}"
      codec: {{name: {codec}}}
      route_config_name: "{name}"
      meta_protocol_filters: [{{name: aeraki.meta_protocol.filters.router}}]
"""
        )
        clusters.append(
            f"""  - name: "{name}"
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""
        )
        routes.append(f'  - name: "{name}"\n    routes:\n    - {{route: {{cluster: "{name}"}}}}\n')
    return (
        "static_resources:\n  listeners:\n"
        + "".join(listeners)
        + "  clusters:\n"
        + "".join(clusters)
        + "  route_configs:\n"
        + "".join(routes)
    )


class Client:
    """A peer client process in a namespace (see netns_peers.py): ``call(n)`` -> its record."""

    def __init__(self, ns: Namespace, *args: str) -> None:
        self.proc = ns.python(
            PEERS, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def call(self, n: int) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            assert self.proc.stderr is not None
            raise AssertionError(f"client exited: {self.proc.stderr.read()}")
        record: dict[str, Any] = json.loads(line)
        return record

    def versions(self, n: int) -> tuple[Counter[str], dict[str, Any]]:
        record = self.call(n)
        assert "error" not in record, record
        return Counter(a.split(":", 1)[0] for a in record["answers"]), record

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


class Process:
    """A ``metamesh`` process in a namespace with its output in files."""

    def __init__(self, ns: Namespace, tmp: Path, name: str, *args: str) -> None:
        self.out_path, self.err_path = tmp / f"{name}.out", tmp / f"{name}.err"
        self._files: list[IO[str]] = [open(self.out_path, "w"), open(self.err_path, "w")]  # noqa: SIM115
        self.proc = ns.metamesh(self._files[0], self._files[1], *args)

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        def seen() -> bool:
            assert self.proc.poll() is None, self.err_path.read_text()
            return text in self.out_path.read_text() + self.err_path.read_text()

        wait_until(seen, repr(text), timeout)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        for f in self._files:
            f.close()
        return code


@pytest.fixture
def hosts() -> Iterator[HostPair]:
    with HostPair() as pair:
        yield pair


def admin_stats(ns: Namespace) -> str:
    script = (
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:15000/stats/prometheus').read().decode())"
    )
    return ns.run("python3", "-c", script).stdout


def metric(text: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def test_names_routes_split_and_route_change_through_two_intercepting_proxies(
    hosts: HostPair, calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    gen_dir = str(Path(calc_gen.__file__).parents[1])
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    write(
        mesh / "calc.yaml",
        service("calc", THRIFT_HOST, 9090, "tcp-metaprotocol-thrift-x", THRIFT_VIP),
    )
    write(mesh / "dubbo.yaml", service("demo", DUBBO_HOST, 20880, "tcp-metaprotocol-dubbo-x", None))
    write(mesh / "calc-router.yaml", router("calc", THRIFT_HOST, {"v1": 100}))
    write(mesh / "dubbo-router.yaml", router("demo", DUBBO_HOST, {"v1": 50, "v2": 50}))
    (tmp_path / "inbound.yaml").write_text(inbound_config())
    cli, srv = hosts.client, hosts.server
    with ExitStack() as stack:
        servers = srv.python(PEERS, "servers", gen_dir, stdout=subprocess.PIPE)
        stack.callback(servers.wait, 10)
        stack.callback(servers.kill)
        assert servers.stdout is not None and servers.stdout.readline().strip() == "READY"

        inbound = Process(
            srv, tmp_path, "server-proxy", "proxy", "--config", str(tmp_path / "inbound.yaml"),
            "--intercept", "--no-dns", "--access-log", str(tmp_path / "inbound.log"),
        )  # fmt: skip
        stack.callback(inbound.stop)
        cp = Process(cli, tmp_path, "cp", "control-plane", "--config-dir", str(mesh))
        stack.callback(cp.stop)
        cp.wait_for("control plane (xDS) on")
        proxy = Process(
            cli, tmp_path, "proxy", "proxy", "--xds", "127.0.0.1:15010", "--intercept",
            "--namespace", "demo", "--node-id", "client-1",
        )  # fmt: skip
        stack.callback(proxy.stop)
        proxy.wait_for(f"{THRIFT_VIP}:9090")
        proxy.wait_for("intercepting: outbound TCP")
        inbound.wait_for("intercepting: outbound TCP")
        served = proxy.out_path.read_text()
        dubbo_vip = next(
            word.rsplit(":", 1)[0]
            for line in served.splitlines()
            for word in line.split()
            if word.endswith(":20880")
        )
        assert dubbo_vip.startswith("127.240."), served

        # names resolve to the VIPs through glibc (the DNS redirect + responder)
        assert cli.run("getent", "ahostsv4", THRIFT_HOST).stdout.split()[0] == THRIFT_VIP
        assert cli.run("getent", "ahostsv4", "demoservice.demo").stdout.split()[0] == dubbo_vip

        thrift = Client(cli, "thrift-client", THRIFT_HOST, "9090", gen_dir)
        stack.callback(thrift.close)
        dubbo = Client(cli, "dubbo-client", "demoservice.demo", "20880")
        stack.callback(dubbo.close)

        seen, first = thrift.versions(20)
        assert seen == {"v1": 20}
        assert first["peer"] == [THRIFT_VIP, 9090]  # the app believes it talks to the VIP
        split, record = dubbo.versions(200)
        assert record["peer"] == [dubbo_vip, 20880]
        assert set(split) == {"v1", "v2"} and 60 <= split["v1"] <= 140, split

        # live route change: v2 on the same client connection, no failed call
        write(mesh / "calc-router.yaml", router("calc", THRIFT_HOST, {"v2": 100}))
        wait_until(lambda: thrift.versions(1)[0] == {"v2": 1}, "the route change", timeout=10)
        seen, after = thrift.versions(20)
        assert seen == {"v2": 20} and after["local"] == first["local"]

        # no mesh service at the server's own address: passed through, to its inbound proxy
        direct = Client(cli, "thrift-client", SERVER_IP, "9091", gen_dir)
        stack.callback(direct.close)
        assert direct.versions(3)[0] == {"v2": 3}

        stats = admin_stats(cli)
        assert metric(stats, "metamesh_intercept_passthrough_total") == 1
        assert metric(stats, 'metamesh_intercept_connections_total{listener="') >= 2
        assert metric(stats, 'metamesh_dns_queries_total{result="mesh"}') >= 4
        assert metric(stats, "metamesh_intercept_rules_installed") == 1

        for client in (thrift, dubbo, direct):
            client.close()
        assert proxy.stop() == 0
        assert inbound.stop() == 0
        assert "metamesh" not in cli.tables() and "metamesh" not in srv.tables()

    records = [json.loads(x) for x in (tmp_path / "inbound.log").read_text().splitlines()]
    by_listener = Counter(r["listener"] for r in records)
    # every call reached the servers through the server's proxy: Thrift on v1 then v2, the
    # 200 Dubbo calls split over both, the 3 passed through
    assert by_listener["inbound-9090"] >= 20  # and the polls answered before the change
    assert by_listener["inbound-20880"] + by_listener["inbound-20881"] == 200
    assert by_listener["inbound-9091"] >= 1 + 20 + 3


def test_a_killed_proxy_leaves_its_rules_and_cleanup_removes_them(
    hosts: HostPair, tmp_path: Path
) -> None:
    (tmp_path / "empty.yaml").write_text("static_resources: {listeners: [], clusters: []}\n")
    ns = hosts.client
    proxy = Process(
        ns, tmp_path, "proxy", "proxy", "--config", str(tmp_path / "empty.yaml"), "--intercept"
    )
    try:
        proxy.wait_for("intercepting: outbound TCP")
    finally:
        proxy.stop(signal.SIGKILL)
    assert "table ip metamesh" in ns.tables()
    done = ns.run(*_metamesh(), "intercept", "--cleanup")
    assert done.stdout.strip() == "metamesh intercept: table ip metamesh removed"
    assert "metamesh" not in ns.tables()
    again = ns.run(*_metamesh(), "intercept", "--cleanup")
    assert again.stdout.strip() == "metamesh intercept: table ip metamesh was not there"


def _metamesh() -> tuple[str, ...]:
    import sys

    return (sys.executable, "-m", "metamesh")
