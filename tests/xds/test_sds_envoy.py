"""A real Envoy gets its mesh identity over SDS from ``metamesh agent`` and talks mutual TLS
with metamesh proxies, both ways, carrying real Apache Thrift calls.

Processes: ``metamesh control-plane --ca-dir`` (the CA), ``metamesh agent`` for the workload
``demo/sleep`` (key made there, certificate from the CA with a bootstrap token, served on a
Unix socket), Envoy (``.venv-envoy``) whose bootstrap takes secrets ``default`` and
``ROOTCA`` from the agent (state of the world for its clusters, delta for its listener), and
``metamesh proxy --config`` for ``demo/calc`` with its certificate from the same CA.

- Envoy as the TLS client: Thrift client -> Envoy tcp_proxy (UpstreamTlsContext from SDS) ->
  metamesh STRICT listener -> Apache Thrift server. The metamesh listener's authorization
  allows Envoy's principal; a second listener allows only another principal and answers
  Envoy's calls with a TApplicationException.
- Envoy as the TLS server: Thrift client -> metamesh (cluster ``tls_mode: ISTIO_MUTUAL``) ->
  Envoy listener (DownstreamTlsContext from SDS, client certificate required, the calc SPIFFE
  id matched) -> the Thrift server.
- Envoy's ADS: its bootstrap follows the control plane's TLS ADS port with the same SDS
  certificate (mutual TLS, the control plane's SPIFFE id checked by Envoy); the control plane
  admits the node by its certificate and Envoy accepts CDS.
- Rotation: the agent asks for 4-second certificates; Envoy's ``sds.*.update_success`` grows
  and its admin ``/certs`` shows a new serial, while connections held through both paths
  keep answering.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import types
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.Thrift import TApplicationException
from thrift.transport import TSocket
from thrift.transport.TTransport import TFramedTransport

from tests.codecs.thrift.apache_peer import ApacheServer, CalcHandler
from tests.e2e.mesh import Metamesh, wait_until
from tests.support.ports import free_port
from tests.xds.test_envoy import envoy_binary

pytestmark = [pytest.mark.interop]
SLEEP = "spiffe://cluster.local/ns/demo/sa/sleep"
CALC = "spiffe://cluster.local/ns/demo/sa/calc"
CONTROL_PLANE = "spiffe://cluster.local/ns/metamesh-system/sa/metamesh-control-plane"


def sds(api_type: str) -> str:
    return (
        "{resource_api_version: V3, api_config_source: {api_type: " + api_type + ", "
        "transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: sds-grpc}}]}}"
    )


def common_tls(api_type: str, peer: str, indent: int = 10) -> str:
    text = f"""
common_tls_context:
  tls_certificate_sds_secret_configs: [{{name: default, sds_config: {sds(api_type)}}}]
  combined_validation_context:
    default_validation_context:
      match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "{peer}"}}}}]
    validation_context_sds_secret_config: {{name: ROOTCA, sds_config: {sds(api_type)}}}"""
    return text.replace("\n", "\n" + " " * indent)


def tcp_proxy(cluster: str) -> str:
    return f"""
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {cluster}
          cluster: {cluster}"""


def endpoint(port: int) -> str:
    return f"""
    load_assignment:
      cluster_name: c{port}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}"""


def envoy_bootstrap(p: Ports, socket: Path) -> str:
    upstream_tls = """
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"""
    return f"""
node:
  id: envoy-sleep
  cluster: sleep
  metadata: {{NAMESPACE: demo, SERVICE_ACCOUNT: sleep}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: metamesh_xds}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p.envoy_admin}}}}}}}
static_resources:
  listeners:
  - name: out_allowed
    address: {{socket_address: {{address: 127.0.0.1, port_value: {p.envoy_out_allowed}}}}}
    filter_chains:
    - filters:{tcp_proxy("mm_allowed")}
  - name: out_denied
    address: {{socket_address: {{address: 127.0.0.1, port_value: {p.envoy_out_denied}}}}}
    filter_chains:
    - filters:{tcp_proxy("mm_denied")}
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {p.envoy_in}}}}}
    filter_chains:
    - filters:{tcp_proxy("calc_local")}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true{common_tls("DELTA_GRPC", CALC)}
  clusters:
  - name: mm_allowed
    connect_timeout: 2s{endpoint(p.mm_strict_allowed)}{upstream_tls}{common_tls("GRPC", CALC, 8)}
  - name: mm_denied
    connect_timeout: 2s{endpoint(p.mm_strict_denied)}{upstream_tls}{common_tls("GRPC", CALC, 8)}
  - name: calc_local
    connect_timeout: 2s{endpoint(p.thrift)}
  - name: metamesh_xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}{endpoint(p.xds)}{upstream_tls}{common_tls("GRPC", CONTROL_PLANE, 8)}
  - name: sds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: sds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{pipe: {{path: {socket}}}}}}}
"""  # noqa: E501


def metamesh_config(p: Ports) -> str:
    def listener(name: str, port: int, tls: str, route: str, filters: str = "") -> str:
        return f"""
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    tls_mode: {tls}
    meta_protocol_proxy:
      codec: {{name: thrift}}
      route_config_name: {route}
      meta_protocol_filters:{filters}
      - {{name: aeraki.meta_protocol.filters.router}}"""

    def allow(principal: str) -> str:
        return f"""
      - name: metamesh.filters.rbac
        config:
          policies:
          - name: allow-one
            action: ALLOW
            rules: [{{from: [{{source: {{principals: ["{principal}"]}}}}]}}]"""

    allowed = allow(SLEEP.removeprefix("spiffe://"))
    denied = allow("cluster.local/ns/demo/sa/someone-else")
    return f"""
static_resources:
  listeners:{listener("allowed", p.mm_strict_allowed, "STRICT", "calc", allowed)}{listener("denied", p.mm_strict_denied, "STRICT", "calc", denied)}{listener("to-envoy", p.mm_plain, "DISABLE", "envoy")}
  clusters:
  - name: calc
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p.thrift}}}}}}}
  - name: envoy-inbound
    tls_mode: ISTIO_MUTUAL
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p.envoy_in}}}}}}}
  route_configs:
  - name: calc
    routes:
    - {{name: all, route: {{cluster: calc}}}}
  - name: envoy
    routes:
    - {{name: all, route: {{cluster: envoy-inbound}}}}
"""  # noqa: E501


@dataclass
class Ports:
    thrift: int = 0
    envoy_admin: int = 0
    envoy_out_allowed: int = 0
    envoy_out_denied: int = 0
    envoy_in: int = 0
    mm_strict_allowed: int = 0
    mm_strict_denied: int = 0
    mm_plain: int = 0
    mm_admin: int = 0
    ca: int = 0
    xds: int = 0


@dataclass
class Mesh:
    ports: Ports
    gen: types.ModuleType
    agent: Metamesh
    envoy_log: Path
    control_plane: Metamesh

    def client(self, port: int) -> tuple[Any, TFramedTransport]:
        sock = TSocket.TSocket("127.0.0.1", port)
        sock.setTimeout(5000)
        transport = TFramedTransport(sock)
        transport.open()
        return self.gen.Calc.Client(TBinaryProtocolAccelerated(transport)), transport

    def envoy(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.ports.envoy_admin}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def envoy_stat(self, name: str) -> int:
        for line in self.envoy("/stats").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return -1

    def mm_stats(self) -> str:
        url = f"http://127.0.0.1:{self.ports.mm_admin}/stats/prometheus"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())


def start_envoy(stack: ExitStack, config: Path, log: Path) -> None:
    out = stack.enter_context(log.open("wb"))
    proc = subprocess.Popen(
        [str(envoy_binary()), "-c", str(config), "--concurrency", "1",
         "--base-id", str(2_000_000 + config.stat().st_ino % 1_000_000), "-l", "warning"],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    def stop() -> None:
        proc.kill()
        proc.wait(10)

    stack.callback(stop)


@pytest.fixture(scope="module")
def mesh(calc_gen: types.ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """One mesh for the module's tests (each process start costs seconds on a loaded host)."""
    tmp_path = tmp_path_factory.mktemp("sds-envoy")
    p = Ports(**{name: free_port() for name in Ports.__dataclass_fields__ if name != "thrift"})
    short = Path(tempfile.mkdtemp(prefix="mm-sds-"))  # a socket path must stay short
    socket = short / "sds.sock"
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n- {token: t-sleep, namespace: demo, serviceAccount: sleep}\n"
        "- {token: t-calc, namespace: demo, serviceAccount: calc}\n"
    )
    (tmp_path / "sleep.token").write_text("t-sleep\n")
    (tmp_path / "calc.token").write_text("t-calc\n")
    (tmp_path / "mesh").mkdir()
    ca_dir = tmp_path / "ca"
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, short, True)
        server = ApacheServer(calc_gen.Calc.Processor(CalcHandler(calc_gen)), "framed", "binary")
        p.thrift = stack.enter_context(server).port
        cp = stack.enter_context(
            Metamesh(tmp_path, "cp", "control-plane", "--config-dir", str(tmp_path / "mesh"),
                     "--xds-port", str(p.xds), "--ca-dir", str(ca_dir),
                     "--ca-port", str(p.ca), "--ca-tokens", str(tokens))
        )  # fmt: skip
        cp.wait_for("metamesh: CA on")
        root = str(ca_dir / "root-cert.pem")
        agent = stack.enter_context(
            Metamesh(tmp_path, "agent", "agent", "--ca", f"127.0.0.1:{p.ca}", "--ca-root", root,
                     "--ca-token-file", str(tmp_path / "sleep.token"), "--namespace", "demo",
                     "--service-account", "sleep", "--cert-ttl", "4", "--sds-socket", str(socket))
        )  # fmt: skip
        agent.wait_for("SDS on unix:")
        config = tmp_path / "proxy.yaml"
        config.write_text(metamesh_config(p))
        proxy = stack.enter_context(
            Metamesh(tmp_path, "proxy", "proxy", "--config", str(config),
                     "--admin-port", str(p.mm_admin), "--ca", f"127.0.0.1:{p.ca}",
                     "--ca-root", root, "--ca-token-file", str(tmp_path / "calc.token"),
                     "--namespace", "demo", "--service-account", "calc")
        )  # fmt: skip
        wait_until(lambda: "admin on" in proxy.stderr(), "the proxy", 20)
        bootstrap = tmp_path / "envoy.yaml"
        bootstrap.write_text(envoy_bootstrap(p, socket))
        envoy_log = tmp_path / "envoy.log"
        start_envoy(stack, bootstrap, envoy_log)
        m = Mesh(p, calc_gen, agent, envoy_log, cp)

        def envoy_ready() -> bool:
            try:
                return m.envoy("/ready").strip() == "LIVE"
            except OSError:
                return False

        try:
            wait_until(envoy_ready, "Envoy's listeners (waiting on SDS)", 30)
        except AssertionError as e:
            tail = envoy_log.read_text(errors="replace")[-3000:]
            logs = f"Envoy's log:\n{tail}\nagent:\n{agent.stderr()[-2000:]}"
            raise AssertionError(f"{e}\n{logs}") from e
        yield m


def test_envoy_client_completes_mtls_with_a_strict_metamesh_listener(mesh: Mesh) -> None:
    client, transport = mesh.client(mesh.ports.envoy_out_allowed)
    assert [client.add(i, 1) for i in range(20)] == [i + 1 for i in range(20)]
    transport.close()
    stats = mesh.mm_stats()
    assert "metamesh_tls_handshakes_total" in stats
    # the allowed principal is Envoy's SPIFFE id: another listener allowing only someone else
    # refuses the same Envoy's calls with the policy's protocol-native error
    client, transport = mesh.client(mesh.ports.envoy_out_denied)
    with pytest.raises(TApplicationException):
        client.add(1, 1)
    transport.close()
    certs = json.loads(mesh.envoy("/certs"))["certificates"]
    uris = {
        san["uri"]
        for entry in certs
        for cert in entry.get("cert_chain", [])
        for san in cert.get("subject_alt_names", [])
        if "uri" in san
    }
    assert uris == {SLEEP}, uris


def test_metamesh_istio_mutual_cluster_to_an_envoy_listener(mesh: Mesh) -> None:
    client, transport = mesh.client(mesh.ports.mm_plain)
    assert [client.echo(f"m{i}") for i in range(20)] == [f"m{i}" for i in range(20)]
    transport.close()
    assert mesh.envoy_stat(f"listener.127.0.0.1_{mesh.ports.envoy_in}.ssl.handshake") >= 1


def test_envoy_certificate_rotates_over_the_open_sds_stream(mesh: Mesh) -> None:
    def serials() -> set[str]:
        certs = json.loads(mesh.envoy("/certs"))["certificates"]
        return {c["serial_number"] for e in certs for c in e.get("cert_chain", [])}

    out, out_transport = mesh.client(mesh.ports.envoy_out_allowed)
    into, into_transport = mesh.client(mesh.ports.mm_plain)
    first = serials()
    before = mesh.envoy_stat("sds.default.update_success")
    calls = 0
    deadline = time.monotonic() + 20
    issued = mesh.agent.stderr().count(" in use (#")
    while mesh.agent.stderr().count(" in use (#") < issued + 2:  # two renewals (4 s certs)
        assert time.monotonic() < deadline, "the agent renewed no certificate"
        assert out.add(calls, 1) == calls + 1
        assert into.echo(str(calls)) == str(calls)
        calls += 1
        time.sleep(0.02)
    wait_until(
        lambda: mesh.envoy_stat("sds.default.update_success") >= before + 2,
        "Envoy to take the renewed certificates over its open SDS streams",
    )
    assert serials() - first, "Envoy's /certs still shows the first certificate"
    # connections held across the rotations still answer; new ones handshake with the new cert
    assert out.add(2, 2) == 4 and into.echo("held") == "held"
    out_transport.close()
    into_transport.close()
    fresh, transport = mesh.client(mesh.ports.envoy_out_allowed)
    assert fresh.add(3, 3) == 6
    transport.close()


def test_envoy_follows_the_tls_ads_port_with_its_sds_certificate(mesh: Mesh) -> None:
    """Envoy's own gRPC client on the control plane's TLS ADS port: mutual TLS with the
    certificate the agent serves, the control plane's SPIFFE id checked by Envoy, the node
    admitted by its certificate and its CDS subscription answered and ACKed."""
    wait_until(
        lambda: (
            "ADS: node envoy-sleep is spiffe://cluster.local/ns/demo/sa/sleep (certificate)"
            in mesh.control_plane.stderr()
        ),
        "the control plane to admit Envoy by its certificate",
    )
    wait_until(
        lambda: mesh.envoy_stat("cluster_manager.cds.update_success") >= 1,
        "Envoy to accept CDS over the TLS ADS stream",
    )
    assert mesh.envoy_stat("cluster.metamesh_xds.ssl.handshake") >= 1
