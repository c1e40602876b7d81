"""The transparent sidecar end to end, in three network namespaces this test creates.

Client namespace: ``metamesh control-plane`` (watching a directory the test edits) and
``metamesh proxy --xds 127.0.0.1:15010 --intercept --namespace demo``; an unmodified Apache
Thrift client and a dubbo-py consumer that dial service **names**, resolved by the system
resolver (glibc, whose queries to the machine's nameserver address the rules send to the
proxy's DNS responder). Two server namespaces, one per version: an Apache Thrift server and a
dubbo-py provider on 0.0.0.0, and ``metamesh proxy --xds <client link>:15010 --no-outbound
--instance-ips <its address> --intercept``: the inbound side the control plane generates for
the ServiceEntry endpoints it fronts (mesh workloads, service account ``server``), whose
listeners on the server's address take what its rules capture. The control plane is the mesh CA
(``--ca-dir``, one bootstrap token per proxy): every proxy gets its workload certificate, ADS
runs over TLS, and the mesh's default PERMISSIVE mode leaves the choice to the client side,
which speaks mutual TLS to mesh workloads (auto mTLS) and plaintext to anything else.

One run checks: names resolve to the VIPs (an explicit ServiceEntry address, and one the control
plane allocated), another name is forwarded to a real dnsmasq (``--dns-upstream``); Thrift
pinned to v1 by a MetaRouter, Dubbo split 50/50; a MetaRouter edit moves Thrift to v2 on the
same client connection with no failed call; a connection to a server's own address (no mesh
service) is passed through; each server's proxy served every call for its version (access logs);
each server's proxy saw its mesh calls as ``mutual_tls`` from the client's SPIFFE identity and
the passed-through connection as plaintext; counters in the client proxy's admin; after
SIGTERM every proxy exits 0 and no rule is left in any namespace. A second test: a proxy killed
with SIGKILL leaves its rules and ``metamesh intercept --cleanup`` removes them. A third:
``metamesh up DIR --intercept`` serves a short name to a Thrift client.
"""

from __future__ import annotations

import json
import shutil
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
from tests.runtime.netns import Hosts, Namespace, client_ip, namespaces_unavailable, server_ip

pytestmark = [
    pytest.mark.interop,
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(namespaces_unavailable()), reason=namespaces_unavailable() or "available"
    ),
]

PEERS = str(Path(__file__).with_name("netns_peers.py"))
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
THRIFT_HOST = "calc.demo.svc.cluster.local"
THRIFT_VIP = "198.18.10.10"
DUBBO_HOST = "demoservice.demo.svc.cluster.local"
META = "{name: %s, namespace: demo}"


def service(name: str, host: str, port: int, protocol: str, vip: str | None) -> str:
    """A ServiceEntry whose endpoints are the two server hosts (v1, v2: mesh workloads with
    the service account ``server``), and a DestinationRule with the two subsets."""
    address = f"  addresses: [{vip}]\n" if vip else ""
    endpoints = "".join(
        f"  - {{address: {server_ip(i)}, labels: {{version: v{i + 1}}}, serviceAccount: server}}\n"
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


TOKENS = """tokens:
- {token: client-token, namespace: demo, serviceAccount: client}
- {token: server-token, namespace: demo, serviceAccount: server}
"""


def ca_options(tmp: Path, token: str, host: str) -> list[str]:
    """A proxy's options for its workload certificate from the control plane's CA at ``host``
    (port 15012; the control plane's certificate names that address)."""
    token_file = tmp / f"{token}.txt"
    token_file.write_text(token)
    return [
        "--ca", f"{host}:15012", "--ca-root", str(tmp / "ca" / "root-cert.pem"),
        "--ca-token-file", str(token_file),
    ]  # fmt: skip


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
def hosts() -> Iterator[Hosts]:
    with Hosts(servers=2) as all_hosts:
        yield all_hosts


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


def test_names_routes_split_and_route_change_through_intercepting_proxies(
    hosts: Hosts, calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    gen_dir = str(Path(calc_gen.__file__).parents[1])
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    thrift_port, dubbo_port = "tcp-metaprotocol-thrift-x", "tcp-metaprotocol-dubbo-x"
    write(mesh / "calc.yaml", service("calc", THRIFT_HOST, 9090, thrift_port, THRIFT_VIP))
    write(mesh / "dubbo.yaml", service("demo", DUBBO_HOST, 20880, dubbo_port, None))
    write(mesh / "calc-router.yaml", router("calc", THRIFT_HOST, {"v1": 100}))
    write(mesh / "dubbo-router.yaml", router("demo", DUBBO_HOST, {"v1": 50, "v2": 50}))
    (tmp_path / "tokens.yaml").write_text(TOKENS)
    cli = hosts.client
    with ExitStack() as stack:
        # one control plane, in the client namespace; the server proxies reach it over their
        # link (their rules leave the --xds address alone), the client proxy on 127.0.0.1
        cp = Process(
            cli, tmp_path, "cp", "control-plane", "--config-dir", str(mesh),
            "--xds-address", "0.0.0.0", "--ca-dir", str(tmp_path / "ca"),
            "--ca-tokens", str(tmp_path / "tokens.yaml"),
            "--xds-name", client_ip(0), "--xds-name", client_ip(1),
        )  # fmt: skip
        stack.callback(cp.stop)
        inbound = []
        for i, srv in enumerate(hosts.servers):
            version = f"v{i + 1}"
            servers = srv.python(PEERS, "servers", gen_dir, version, stdout=subprocess.PIPE)
            stack.callback(servers.wait, 10)
            stack.callback(servers.kill)
            assert servers.stdout is not None and servers.stdout.readline().strip() == "READY"
            if i == 0:
                cp.wait_for("control plane (xDS) on")
            proxy = Process(
                srv, tmp_path, f"server-proxy-{version}", "proxy",
                "--xds", f"{client_ip(i)}:15010", "--no-outbound", "--namespace", "demo",
                "--service-account", "server", "--instance-ips", server_ip(i),
                "--node-id", f"server-{version}", "--intercept", "--no-dns",
                "--access-log", str(tmp_path / f"inbound-{version}.log"),
                *ca_options(tmp_path, "server-token", client_ip(i)),
            )  # fmt: skip
            stack.callback(proxy.stop)
            inbound.append(proxy)
        # the client workload's nameserver for other names: a real dnsmasq on server v1's host
        dnsmasq = subprocess.Popen(
            hosts.server.argv([
                DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", f"--listen-address={server_ip(0)}", "--bind-interfaces",
                "--pid-file=", "--user=root", "--address=/upstream.test/192.0.2.7",
            ]),
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        stack.callback(dnsmasq.wait, 10)
        stack.callback(dnsmasq.terminate)
        proxy = Process(
            cli, tmp_path, "proxy", "proxy", "--xds", "127.0.0.1:15010", "--intercept",
            "--namespace", "demo", "--node-id", "client-1",
            "--intercept-exclude-inbound-ports", "15010", "--dns-upstream", server_ip(0),
            "--service-account", "client", *ca_options(tmp_path, "client-token", "127.0.0.1"),
        )  # fmt: skip
        stack.callback(proxy.stop)
        proxy.wait_for(f"{THRIFT_VIP}:9090")
        proxy.wait_for("intercepting: outbound TCP")
        for i, server_proxy in enumerate(inbound):
            server_proxy.wait_for("intercepting: outbound TCP")
            server_proxy.wait_for(f"{server_ip(i)}:20880")  # its inbound listeners (xDS)
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
        # another name: forwarded from the proxy's marked socket (not redirected back to it)
        assert cli.run("getent", "ahostsv4", "upstream.test").stdout.split()[0] == "192.0.2.7"

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

        # no mesh service at a server's own address: passed through, to its inbound proxy
        direct = Client(cli, "thrift-client", server_ip(1), "9090", gen_dir)
        stack.callback(direct.close)
        assert direct.versions(3)[0] == {"v2": 3}

        stats = admin_stats(cli)
        assert metric(stats, "metamesh_intercept_passthrough_total") >= 1
        assert metric(stats, 'metamesh_intercept_connections_total{listener="') >= 2
        assert metric(stats, 'metamesh_dns_queries_total{result="mesh"}') >= 4
        assert metric(stats, 'metamesh_dns_queries_total{result="forwarded"}') >= 1
        assert metric(stats, "metamesh_intercept_rules_installed") == 1

        # the servers' side: mesh calls arrived over mutual TLS from the client's identity,
        # the passed-through connection (the app dialled an address) in plaintext
        client_id = 'source_principal="spiffe://cluster.local/ns/demo/sa/client"'
        for i, srv in enumerate(hosts.servers):
            inbound_requests = [
                line
                for line in admin_stats(srv).splitlines()
                if line.startswith("istio_requests_total{") and 'reporter="destination"' in line
            ]
            mutual = [line for line in inbound_requests if 'security_policy="mutual_tls"' in line]
            plain = [line for line in inbound_requests if 'security_policy="none"' in line]
            assert mutual and all(client_id in line for line in mutual), inbound_requests
            assert metric("\n".join(plain), "istio_requests_total") == (3 if i else 0)

        for client in (thrift, dubbo, direct):
            client.close()
        assert proxy.stop() == 0
        assert all(p.stop() == 0 for p in inbound)
        for ns in (cli, *hosts.servers):
            assert "metamesh" not in ns.tables()

    # every call reached its server through that server's proxy (inbound listeners on the
    # server's address, from the control plane)
    logs = [Counter(), Counter()]
    for i, log in enumerate(logs):
        for line in (tmp_path / f"inbound-v{i + 1}.log").read_text().splitlines():
            log[json.loads(line)["listener"]] += 1
    thrift_in, dubbo_in = (
        [log[f"inbound_{server_ip(i)}_{port}"] for i, log in enumerate(logs)]
        for port in (9090, 20880)
    )
    assert thrift_in[0] >= 20  # and the polls answered before the change
    assert thrift_in[1] >= 1 + 20 + 3  # after the change, and the 3 passed through
    assert dubbo_in == [split["v1"], split["v2"]]


def test_a_killed_proxy_leaves_its_rules_and_cleanup_removes_them(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("static_resources: {listeners: [], clusters: []}\n")
    with Hosts(servers=0) as hosts:
        ns = hosts.client
        proxy = Process(
            ns, tmp_path, "proxy", "proxy", "--config", str(tmp_path / "empty.yaml"), "--intercept"
        )
        try:
            proxy.wait_for("intercepting: outbound TCP")
        finally:
            proxy.stop(signal.SIGKILL)
        assert "table inet metamesh" in ns.tables()
        done = ns.run(*_metamesh(), "intercept", "--cleanup")
        assert done.stdout.strip() == "metamesh intercept: table inet metamesh removed"
        assert "metamesh" not in ns.tables()
        again = ns.run(*_metamesh(), "intercept", "--cleanup")
        assert again.stdout.strip() == "metamesh intercept: table inet metamesh was not there"


def test_up_intercepts_with_its_own_control_plane(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    """``metamesh up DIR --intercept``: control plane and proxy in one process (its xDS on
    127.0.0.1 stays out of the rules); a Thrift client dials the name, the server answers."""
    gen_dir = str(Path(calc_gen.__file__).parents[1])
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    write(
        mesh / "calc.yaml",
        f"""apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {META % "calc"}
spec:
  hosts: [{THRIFT_HOST}]
  addresses: [{THRIFT_VIP}]
  ports: [{{number: 9090, name: tcp-metaprotocol-thrift-x}}]
  resolution: STATIC
  endpoints: [{{address: {server_ip(0)}}}]
""",
    )
    with Hosts(servers=1) as hosts, ExitStack() as stack:
        servers = hosts.server.python(PEERS, "servers", gen_dir, "v1", stdout=subprocess.PIPE)
        stack.callback(servers.wait, 10)
        stack.callback(servers.kill)
        up = Process(hosts.client, tmp_path, "up", "up", str(mesh), "--intercept", "-n", "demo")
        stack.callback(up.stop)
        assert servers.stdout is not None and servers.stdout.readline().strip() == "READY"
        up.wait_for(f"{THRIFT_VIP}:9090")
        up.wait_for("intercepting: outbound TCP")
        client = Client(hosts.client, "thrift-client", "calc", "9090", gen_dir)  # short name
        stack.callback(client.close)
        seen, record = client.versions(5)
        assert seen == {"v1": 5} and record["peer"] == [THRIFT_VIP, 9090]
        client.close()
        assert up.stop() == 0
        assert "metamesh" not in hosts.client.tables()


STATIC = """static_resources:
  listeners:
  - name: calc
    address: {socket_address: {address: %s, port_value: 9090}}
    meta_protocol_proxy:
      codec: {name: thrift}
      route_config_name: calc.test_9090
      meta_protocol_filters: [{name: aeraki.meta_protocol.filters.router}]
  clusters:
  - name: outbound|9090||calc.test
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: %s, port_value: 9090}}}
  route_configs:
  - name: calc.test_9090
    routes:
    - {route: {cluster: outbound|9090||calc.test}}
"""


def test_rules_of_an_init_step_are_served_and_left_in_place(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    """``metamesh intercept`` (a pod's init step) installs the rules; ``proxy --config ...
    --intercept --intercept-rules external`` serves them (a static config: the name comes
    from its route configuration) and leaves them when it stops."""
    gen_dir = str(Path(calc_gen.__file__).parents[1])
    config = tmp_path / "static.yaml"
    config.write_text(STATIC % (THRIFT_VIP, server_ip(0)))
    with Hosts(servers=1) as hosts, ExitStack() as stack:
        cli = hosts.client
        servers = hosts.server.python(PEERS, "servers", gen_dir, "v1", stdout=subprocess.PIPE)
        stack.callback(servers.wait, 10)
        stack.callback(servers.kill)
        init = cli.run(*_metamesh(), "intercept")
        assert init.stdout.strip() == "metamesh intercept: table inet metamesh installed"
        proxy = Process(
            cli, tmp_path, "proxy", "proxy", "--config", str(config), "--intercept",
            "--intercept-rules", "external",
        )  # fmt: skip
        stack.callback(proxy.stop)
        assert servers.stdout is not None and servers.stdout.readline().strip() == "READY"
        proxy.wait_for("installed by someone else, left in place")
        client = Client(cli, "thrift-client", "calc.test", "9090", gen_dir)
        stack.callback(client.close)
        seen, record = client.versions(3)
        assert seen == {"v1": 3} and record["peer"] == [THRIFT_VIP, 9090]
        client.close()
        assert proxy.stop() == 0
        assert "table inet metamesh" in cli.tables()  # not this proxy's to remove
        cli.run(*_metamesh(), "intercept", "--cleanup")


def _metamesh() -> tuple[str, ...]:
    import sys

    return (sys.executable, "-m", "metamesh")
