"""The two-sided mesh over xDS: client -> outbound proxy -> mutual TLS -> inbound proxy -> server.

``metamesh control-plane --ca-dir`` (the mesh CA) and two ``metamesh proxy --xds`` processes,
each with a workload certificate from that CA: the client workload (namespace ``client-ns``,
service account ``sleep``) and the server workload (``server-ns``, ``server``, inbound side
only). The server workload is an Istio ``WorkloadEntry`` on 127.0.31.x selected by the
ServiceEntries of a Thrift and a Dubbo service; the real servers (Apache Thrift, dubbo-py)
listen on 127.0.0.1 on the same ports, as an app behind its sidecar.

Real clients (Apache Thrift, dubbo-py, a Node sofa-rpc-node consumer) call the services'
addresses. Authorization by
principal and by namespace runs on the inbound side (ALLOW lets ``sleep`` through and refuses
a client of another service account; DENY by namespace refuses ``client-ns``), with errors the
clients understand. PeerAuthentication STRICT refuses a plaintext client at the inbound port
(counted), PERMISSIVE takes both; DestinationRule ``tls`` and PeerAuthentication edits apply
live while the clients keep their connections; a MetaRouter's local rate limit is enforced by
the server's proxy (per instance), not the client's.
"""

from __future__ import annotations

import socket
import ssl
import types
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dubbo.client import DubboClient
from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.Thrift import TApplicationException
from thrift.transport import TSocket, TSSLSocket
from thrift.transport.TTransport import TFramedTransport, TTransportException

from metamesh.security.ca import CertificateAuthority
from metamesh.security.spiffe import SpiffeId
from tests.codecs.dubbo import peers
from tests.codecs.thrift.apache_peer import ApacheServer
from tests.e2e.mesh import Metamesh, ThriftClient, wait_until, write
from tests.runtime.test_mtls_e2e import issue
from tests.runtime.thrift_servers import NamedCalc
from tests.support.ports import free_port

pytestmark = [
    pytest.mark.interop,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
THRIFT_HOST = "hello.server-ns.svc.cluster.local"
IFACE = "org.apache.dubbo.demo.DemoService"
DUBBO_HOST = IFACE.lower()
THRIFT_PORT_NAME = "tcp-metaprotocol-thrift-hello"
DUBBO_PORT_NAME = "tcp-metaprotocol-dubbo-demo"
OTHER = SpiffeId("cluster.local", "client-ns", "other")
SERVER_ID = "spiffe://cluster.local/ns/server-ns/sa/server"


def services(vip: str, thrift: tuple[int, int], dubbo: tuple[int, int], workload: str) -> str:
    """Two ServiceEntries (VIP port, app port) whose endpoints are the WorkloadEntry."""

    def entry(name: str, host: str, port: int, port_name: str, *more: str) -> str:
        return f"""apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: {name}, namespace: server-ns}}
spec:
  hosts: [{host}]
  addresses: [{", ".join((vip, *more))}]
  ports: [{{number: {port}, name: {port_name}}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: server}}}}
---
"""

    return (
        entry("hello", THRIFT_HOST, thrift[0], THRIFT_PORT_NAME)
        # also on 127.0.0.1, where the Node consumer script connects
        + entry("demo", DUBBO_HOST, dubbo[0], DUBBO_PORT_NAME, "127.0.0.1")
        + f"""apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {{name: server-1, namespace: server-ns}}
spec:
  address: {workload}
  ports: {{{THRIFT_PORT_NAME}: {thrift[1]}, {DUBBO_PORT_NAME}: {dubbo[1]}}}
  labels: {{app: server}}
  serviceAccount: server
"""
    )


def mixed_service(vip: str, port: int, plain: int) -> str:
    return f"""apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: mixed, namespace: server-ns}}
spec:
  hosts: [mixed.server-ns.svc.cluster.local]
  addresses: [{vip}]
  ports: [{{number: {port}, name: tcp-metaprotocol-thrift-mixed}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: server}}}}
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-metaprotocol-thrift-mixed: {plain}}}}}]
"""


def policy(action: str, source: str) -> str:
    return f"""apiVersion: metamesh.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {{name: server-policy, namespace: server-ns}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: {action}
  rules:
  - from: [{{source: {source}}}]
"""


def peer_authentication(mode: str) -> str:
    return f"""apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: {mode}}}}}
"""


def destination_rule(mode: str) -> str:
    return f"""apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: hello, namespace: server-ns}}
spec:
  host: {THRIFT_HOST}
  trafficPolicy: {{tls: {{mode: {mode}}}}}
"""


@dataclass
class Mesh:
    config: Path
    vip: str
    thrift: tuple[int, int]  # (service port, app port = inbound port)
    dubbo: tuple[int, int]
    workload: str
    root: Path
    ca: CertificateAuthority
    server_admin: str
    client_admin: str
    gen: types.ModuleType
    tmp: Path
    mixed: int  # the port of the service with a mesh workload and a plain server

    def thrift_client(self) -> ThriftClient:
        return ThriftClient(self.gen, self.vip, self.thrift[0])

    def direct(self, who: SpiffeId | None) -> tuple[Any, Any]:
        """A Thrift client straight to the inbound port: plaintext, or mTLS as ``who``."""
        if who is None:
            sock: Any = TSocket.TSocket(self.workload, self.thrift[1])
        else:
            cert, key = issue(self.ca, who, self.tmp)
            ctx = ssl.create_default_context(cafile=str(self.root))
            ctx.check_hostname = False
            ctx.load_cert_chain(cert, key)
            sock = TSSLSocket.TSSLSocket(
                self.workload, self.thrift[1], ssl_context=ctx, validate_callback=is_server
            )
        sock.setTimeout(5000)
        transport = TFramedTransport(sock)
        transport.open()
        return self.gen.Calc.Client(TBinaryProtocolAccelerated(transport)), transport

    def stats(self, admin: str) -> str:
        with urllib.request.urlopen(f"http://{admin}/stats/prometheus") as r:
            text: str = r.read().decode()
        return text

    def counter(self, admin: str, name: str) -> float:
        for line in self.stats(admin).splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.split()[-1])
        return 0.0

    def edit(self, name: str, text: str) -> None:
        write(self.config / name, text)


def is_server(cert: dict[str, Any], hostname: str) -> None:
    """TSSLSocket's check of the inbound port's certificate: the server workload's SPIFFE id
    (mesh certificates name no host)."""
    uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
    assert uris == [SERVER_ID], uris


def dubbo_call(client: Any, name: str) -> Any:
    return peers.dubbopy_call(client, "sayHello", name, iface=IFACE, service_version="0.0.0")


@pytest.fixture(scope="module")
def mesh(calc_gen: types.ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("two-sides")
    config, ca_dir = tmp / "mesh", tmp / "ca"
    config.mkdir()
    tokens = tmp / "tokens.yaml"
    tokens.write_text(
        "tokens:\n- {token: t-sleep, namespace: client-ns, serviceAccount: sleep}\n"
        "- {token: t-server, namespace: server-ns, serviceAccount: server}\n"
    )
    for who in ("sleep", "server"):
        (tmp / f"{who}.token").write_text(f"t-{who}\n")
    with ExitStack() as stack:
        server = stack.enter_context(
            ApacheServer(calc_gen.Calc.Processor(NamedCalc(calc_gen, "server")), "framed", "binary")
        )
        provider = peers.start_dubbopy_provider()
        stack.callback(provider.stop)
        vip, workload = "127.0.10.77", "127.0.31.7"
        thrift, dubbo = (free_port(), server.port), (free_port(), provider.port)
        write(config / "services.yaml", services(vip, thrift, dubbo, workload))
        # a service with two endpoints: the mesh workload (its app on 127.0.0.1 at the
        # service port) and a plain server without a proxy
        app = stack.enter_context(
            ApacheServer(
                calc_gen.Calc.Processor(NamedCalc(calc_gen, "workload")), "framed", "binary"
            )
        )
        plain = stack.enter_context(
            ApacheServer(calc_gen.Calc.Processor(NamedCalc(calc_gen, "plain")), "framed", "binary")
        )
        write(config / "mixed.yaml", mixed_service(vip, app.port, plain.port))
        write(config / "peer.yaml", peer_authentication("STRICT"))
        write(
            config / "policy.yaml",
            policy("ALLOW", "{principals: [cluster.local/ns/client-ns/sa/sleep]}"),
        )
        ca_port, xds = free_port(), free_port()
        cp = stack.enter_context(
            Metamesh(tmp, "cp", "control-plane", "--config-dir", str(config),
                     "--xds-port", str(xds), "--ca-dir", str(ca_dir), "--ca-port", str(ca_port),
                     "--ca-tokens", str(tokens))
        )  # fmt: skip
        cp.wait_for("metamesh: CA on")
        root = ca_dir / "root-cert.pem"

        def proxy(who: str, namespace: str, *extra: str) -> Metamesh:
            return stack.enter_context(
                Metamesh(tmp, who, "proxy", "--xds", f"127.0.0.1:{xds}", "--admin-port", "0",
                         "--node-id", who, "--namespace", namespace, "--labels", f"app={who}",
                         "--service-account", who, "--ca", f"127.0.0.1:{ca_port}",
                         "--ca-root", str(root), "--ca-token-file", str(tmp / f"{who}.token"),
                         *extra)
            )  # fmt: skip

        server_proxy = proxy("server", "server-ns", "--no-outbound")
        client_proxy = proxy("sleep", "client-ns")
        server_proxy.wait_for(f"{workload}:{thrift[1]}")
        client_proxy.wait_for(f"{vip}:{thrift[0]}")
        ca = CertificateAuthority.load(root, ca_dir / "root-key.pem", "cluster.local")
        yield Mesh(
            config, vip, thrift, dubbo, workload, root, ca,
            server_proxy.admin(), client_proxy.admin(), calc_gen, tmp, app.port,
        )  # fmt: skip


def test_thrift_and_dubbo_through_both_proxies_with_allow_by_principal(mesh: Mesh) -> None:
    client = mesh.thrift_client()
    assert client.echo("hi") == "server:hi"  # outbound -> mTLS -> inbound -> server
    assert mesh.counter(mesh.server_admin, "metamesh_tls_handshakes_total") >= 1
    consumer = DubboClient(mesh.vip, mesh.dubbo[0], dubbo_version="2.0.2")
    answer = dubbo_call(consumer, "mesh")
    assert answer.ok, answer.error

    if peers.node() is not None:  # a Node Dubbo consumer (sofa-rpc-node) too
        node_consumer = peers.start_node_consumer("sofa", mesh.dubbo[0])
        try:
            answer_node = node_consumer.call("sayHello", ("string", "node"))
            assert answer_node["ok"] and "node" in str(answer_node["result"]), answer_node
        finally:
            node_consumer.stop()

    # another service account of the client's namespace, with a valid mesh certificate
    other, transport = mesh.direct(OTHER)
    with pytest.raises(TApplicationException, match="no ALLOW policy matched"):
        other.add(1, 1)
    transport.close()
    assert client.echo("again") == "server:again" and client.same_connection()
    client.close()
    consumer._sock.shutdown(socket.SHUT_RDWR)


def test_deny_by_namespace_refuses_the_client_namespace_live(mesh: Mesh) -> None:
    client = mesh.thrift_client()
    dubbo = DubboClient(mesh.vip, mesh.dubbo[0], dubbo_version="2.0.2")
    assert client.echo("before") == "server:before"
    mesh.edit("policy.yaml", policy("DENY", "{namespaces: [client-ns]}"))

    def denied() -> bool:
        try:
            client.echo("x")
        except TApplicationException as e:
            return "denied by policy server-ns/server-policy" in str(e)
        return False

    wait_until(denied, "the DENY policy in force", timeout=15)
    refused = dubbo_call(dubbo, "mesh")
    assert not refused.ok and refused.status != 20
    assert "denied by policy server-ns/server-policy" in str(
        refused.error
    )  # Dubbo's error response
    assert client.same_connection()  # the client keeps its connection through the edit
    mesh.edit("policy.yaml", policy("ALLOW", "{namespaces: [client-ns]}"))
    wait_until(lambda: not denied(), "the ALLOW policy back", timeout=15)
    assert dubbo_call(dubbo, "again").ok
    client.close()
    dubbo._sock.shutdown(socket.SHUT_RDWR)


HANDSHAKES = "metamesh_tls_handshakes_total"
REFUSED_PLAINTEXT = 'metamesh_tls_refused_total{reason="plaintext"}'
SERVED_PLAINTEXT = "metamesh_tls_plaintext_connections_total"


def echo_ok(client: ThriftClient) -> bool:
    try:
        return client.echo("x") == "server:x"
    except TApplicationException:  # the outbound proxy's reply when the upstream failed
        return False


def test_strict_refuses_plaintext_at_the_inbound_port_and_permissive_takes_it(
    mesh: Mesh,
) -> None:
    mesh.edit("policy.yaml", policy("DENY", "{namespaces: [elsewhere]}"))  # anyone may call
    held = mesh.thrift_client()
    assert held.echo("held") == "server:held"
    before = mesh.counter(mesh.server_admin, REFUSED_PLAINTEXT)
    plain, transport = mesh.direct(None)
    with pytest.raises(TTransportException):
        plain.add(1, 1)
    transport.close()
    wait_until(
        lambda: mesh.counter(mesh.server_admin, REFUSED_PLAINTEXT) == before + 1,
        "the plaintext refusal counted",
    )

    mesh.edit("peer.yaml", peer_authentication("PERMISSIVE"))

    def plaintext_served() -> bool:
        client, t = mesh.direct(None)
        try:
            return bool(client.add(2, 3) == 5)
        except TTransportException:
            return False
        finally:
            t.close()

    wait_until(plaintext_served, "PERMISSIVE in force", timeout=15)
    tls_client, t = mesh.direct(SpiffeId("cluster.local", "client-ns", "sleep"))
    assert tls_client.add(1, 1) == 2  # and mutual TLS alike
    t.close()
    assert held.echo("still") == "server:still" and held.same_connection()

    mesh.edit("peer.yaml", peer_authentication("STRICT"))
    wait_until(lambda: not plaintext_served(), "STRICT back in force", timeout=15)
    assert held.echo("kept") == "server:kept" and held.same_connection()
    held.close()


def test_destination_rule_and_peer_authentication_edits_apply_live(mesh: Mesh) -> None:
    mesh.edit("policy.yaml", policy("DENY", "{namespaces: [elsewhere]}"))
    mesh.edit("peer.yaml", peer_authentication("STRICT"))
    mesh.edit("dr.yaml", destination_rule("ISTIO_MUTUAL"))
    held = mesh.thrift_client()
    wait_until(lambda: echo_ok(held), "mutual TLS through both proxies", timeout=15)

    refused = mesh.counter(mesh.server_admin, REFUSED_PLAINTEXT)
    mesh.edit("dr.yaml", destination_rule("DISABLE"))  # the client side turns to plaintext
    wait_until(lambda: not echo_ok(held), "STRICT refusing the plaintext client side", 15)
    assert mesh.counter(mesh.server_admin, REFUSED_PLAINTEXT) > refused

    served = mesh.counter(mesh.server_admin, SERVED_PLAINTEXT)
    mesh.edit("peer.yaml", peer_authentication("PERMISSIVE"))  # the server takes it
    wait_until(lambda: echo_ok(held), "PERMISSIVE serving the plaintext client side", 15)
    assert mesh.counter(mesh.server_admin, SERVED_PLAINTEXT) > served

    handshakes = mesh.counter(mesh.server_admin, HANDSHAKES)
    mesh.edit("dr.yaml", destination_rule("ISTIO_MUTUAL"))  # and back to mutual TLS
    wait_until(
        lambda: echo_ok(held) and mesh.counter(mesh.server_admin, HANDSHAKES) > handshakes,
        "mutual TLS again",
        15,
    )
    assert held.same_connection()  # one client connection through every edit
    held.close()


def test_the_inbound_port_presents_the_server_workload_identity(mesh: Mesh) -> None:
    cert, key = issue(mesh.ca, SpiffeId("cluster.local", "client-ns", "sleep"), mesh.tmp)
    ctx = ssl.create_default_context(cafile=str(mesh.root))
    ctx.check_hostname = False
    ctx.load_cert_chain(cert, key)
    with (
        socket.create_connection((mesh.workload, mesh.thrift[1])) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        presented = tls.getpeercert()
        assert presented is not None
        names: Any = presented.get("subjectAltName", ())
        uris = [v for k, v in names if k == "URI"]
    assert uris == [SERVER_ID]


def router_with_local_limit(tokens: int) -> str:
    return f"""apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: hello, namespace: server-ns}}
spec:
  hosts: [{THRIFT_HOST}]
  localRateLimit:
    tokenBucket: {{fillInterval: 3600s, maxTokens: {tokens}, tokensPerFill: {tokens}}}
"""


def test_the_local_rate_limit_runs_on_the_server_side(mesh: Mesh) -> None:
    client = mesh.thrift_client()
    assert client.echo("before") == "server:before"
    mesh.edit("router.yaml", router_with_local_limit(3))

    def limited() -> bool:
        try:
            client.echo("x")
        except TApplicationException as e:
            return "local rate limit exceeded" in str(e)
        return False

    wait_until(limited, "the server side's bucket empty", timeout=15)
    # the server's proxy limits (per instance, Aeraki's rule); the client's only routes
    over = 'metamesh_local_replies_total{reason="over_limit"}'
    assert mesh.counter(mesh.server_admin, over) >= 1
    assert mesh.counter(mesh.client_admin, over) == 0  # forwarded the server's reply as is
    assert client.same_connection()
    (mesh.config / "router.yaml").unlink()
    wait_until(lambda: not limited(), "the limit removed", timeout=15)
    client.close()


def test_auto_mtls_per_endpoint_to_a_workload_and_a_plain_server(mesh: Mesh) -> None:
    mesh.edit("policy.yaml", policy("DENY", "{namespaces: [elsewhere]}"))
    mesh.edit("peer.yaml", peer_authentication("STRICT"))  # the workload takes mTLS only
    client = ThriftClient(mesh.gen, mesh.vip, mesh.mixed)
    handshakes = mesh.counter(mesh.server_admin, HANDSHAKES)
    # round robin over both: the workload answers through its proxy (mutual TLS, or STRICT
    # would refuse), the plain server directly (plaintext, or it could not read the call)
    answers = {client.echo(f"m{i}").split(":")[0] for i in range(8)}
    assert answers == {"workload", "plain"}
    assert mesh.counter(mesh.server_admin, HANDSHAKES) > handshakes
    assert client.same_connection()
    client.close()
