"""An Envoy sidecar in the mesh, from the same resources: SDS certificates, STRICT mTLS, RBAC.

Processes: ``metamesh control-plane --ca-dir`` (the mesh CA, ADS over TLS), ``metamesh agent``
for the server workload ``server-ns/server`` (its key and certificate, served over SDS on a
Unix socket), a real Envoy as that workload's sidecar (node metadata ``NAMESPACE``, ``LABELS``,
``SERVICE_ACCOUNT``, ``METAMESH_OUTBOUND: false``; ADS over TLS with its SDS certificate), and
a ``metamesh proxy`` for the client workload ``client-ns/sleep`` with its certificate from the
same CA. The server app is a real Apache Thrift server on 127.0.0.1 behind the workload's
address, as in ``tests/e2e/test_mesh_two_sides.py`` where both sidecars are metamesh's.

Checked: an Apache Thrift client -> the client's metamesh proxy (auto mTLS to the workload)
-> Envoy's inbound listener (``DownstreamTlsContext`` with SDS secrets, STRICT from the
PeerAuthentication; network RBAC allowing ``sleep`` by principal) -> the app. A plaintext
client at the workload's port is refused (STRICT), and so is a TLS client with a mesh
certificate of another service account (RBAC by principal); Envoy counts both.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
import types
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.transport import TSocket, TSSLSocket
from thrift.transport.TTransport import TFramedTransport, TTransportException

from metamesh.security.ca import CertificateAuthority
from metamesh.security.spiffe import SpiffeId
from tests.codecs.thrift.apache_peer import ApacheServer
from tests.control.envoy.envoy_node import EnvoyNode
from tests.e2e.mesh import Metamesh, ThriftClient, wait_until, write
from tests.runtime.test_mtls_e2e import issue
from tests.runtime.thrift_servers import NamedCalc
from tests.support.ports import free_port
from tests.xds.test_sds_envoy import CONTROL_PLANE

pytestmark = [pytest.mark.interop, pytest.mark.slow]
HOST = "hello.server-ns.svc.cluster.local"
PORT_NAME = "tcp-metaprotocol-thrift-hello"
VIP, WORKLOAD = "127.0.10.78", "127.0.31.8"


def manifests(port: int, app_port: int) -> str:
    return f"""\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: hello, namespace: server-ns}}
spec:
  hosts: [{HOST}]
  addresses: [{VIP}]
  ports: [{{number: {port}, name: {PORT_NAME}}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: server}}}}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {{name: server-1, namespace: server-ns}}
spec:
  address: {WORKLOAD}
  ports: {{{PORT_NAME}: {app_port}}}
  labels: {{app: server}}
  serviceAccount: server
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: metamesh.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {{name: only-sleep, namespace: server-ns}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: ALLOW
  rules: [{{from: [{{source: {{principals: [cluster.local/ns/client-ns/sa/sleep]}}}}]}}]
"""


def refused(gen: types.ModuleType, sock: Any) -> bool:
    """One call over ``sock``: True when the connection is refused or closed on it."""
    sock.setTimeout(5000)
    transport = TFramedTransport(sock)
    try:
        transport.open()
        gen.Calc.Client(TBinaryProtocolAccelerated(transport)).echo("let me in")
    except (TTransportException, OSError):
        return True
    finally:
        transport.close()
    return False


def test_an_envoy_sidecar_serves_strict_mtls_with_sds_certificates_and_rbac(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    short = Path(tempfile.mkdtemp(prefix="mm-envoy-"))  # a socket path must stay short
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n- {token: t-sleep, namespace: client-ns, serviceAccount: sleep}\n"
        "- {token: t-server, namespace: server-ns, serviceAccount: server}\n"
    )
    for who in ("sleep", "server"):
        (tmp_path / f"{who}.token").write_text(f"t-{who}\n")
    config, ca_dir = tmp_path / "mesh", tmp_path / "ca"
    config.mkdir()
    app = NamedCalc(calc_gen, "server")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, short, True)
        server = stack.enter_context(ApacheServer(calc_gen.Calc.Processor(app), "framed", "binary"))
        port = free_port()
        write(config / "mesh.yaml", manifests(port, server.port))
        ca_port, xds = free_port(), free_port()
        cp = stack.enter_context(
            Metamesh(tmp_path, "cp", "control-plane", "--config-dir", str(config),
                     "--xds-port", str(xds), "--ca-dir", str(ca_dir), "--ca-port", str(ca_port),
                     "--ca-tokens", str(tokens))
        )  # fmt: skip
        cp.wait_for("metamesh: CA on")
        root = str(ca_dir / "root-cert.pem")
        agent = stack.enter_context(
            Metamesh(tmp_path, "agent", "agent", "--ca", f"127.0.0.1:{ca_port}", "--ca-root", root,
                     "--ca-token-file", str(tmp_path / "server.token"), "--namespace", "server-ns",
                     "--service-account", "server", "--sds-socket", str(short / "sds.sock"))
        )  # fmt: skip
        agent.wait_for("SDS on unix:")
        workload = {
            "NAMESPACE": "server-ns",
            "LABELS": {"app": "server"},
            "SERVICE_ACCOUNT": "server",
            "METAMESH_OUTBOUND": "false",
        }
        envoy = EnvoyNode(xds, tmp_path, "server-envoy", workload, sds_socket=short / "sds.sock",
                          xds_tls_peer=CONTROL_PLANE)  # fmt: skip
        stack.callback(envoy.close)
        client_proxy = stack.enter_context(
            Metamesh(tmp_path, "sleep", "proxy", "--xds", f"127.0.0.1:{xds}", "--admin-port", "0",
                     "--node-id", "sleep", "--namespace", "client-ns", "--labels", "app=sleep",
                     "--service-account", "sleep", "--ca", f"127.0.0.1:{ca_port}",
                     "--ca-root", root, "--ca-token-file", str(tmp_path / "sleep.token"))
        )  # fmt: skip
        client_proxy.wait_for(f"{VIP}:{port}")
        try:
            wait_until(lambda: envoy.server_state() == "LIVE", "Envoy's SDS secrets", 30)
            inbound = f"inbound_{WORKLOAD}_{server.port}"
            wait_until(lambda: inbound in envoy.get("/listeners"), "Envoy's inbound listener", 20)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{envoy.log()[-3000:]}\n{agent.stderr()[-1500:]}") from e

        client = stack.enter_context(closing(ThriftClient(calc_gen, VIP, port)))
        assert [client.echo(f"hi {n}") for n in range(5)] == [f"server:hi {n}" for n in range(5)]
        assert client.client.add(2, 3) == 5

        assert refused(calc_gen, TSocket.TSocket(WORKLOAD, server.port))  # plaintext: STRICT
        ca = CertificateAuthority.load(Path(root), ca_dir / "root-key.pem", "cluster.local")
        cert, key = issue(ca, SpiffeId("cluster.local", "client-ns", "other"), tmp_path)
        context = ssl.create_default_context(cafile=root)
        context.check_hostname = False
        context.load_cert_chain(cert, key)
        other = TSSLSocket.TSSLSocket(
            WORKLOAD, server.port, ssl_context=context, validate_callback=lambda *_: None
        )
        assert refused(calc_gen, other)  # a mesh identity the ALLOW policy does not name
        assert [m for m, _ in app.calls] == ["echo"] * 5 + ["add"]

        stats = envoy.stats("")
        allowed = sum(n for k, n in stats.items() if k.endswith("allow.rbac.allowed"))
        denied = sum(n for k, n in stats.items() if k.endswith("allow.rbac.denied"))
        assert allowed >= 1 and denied == 1, {k: n for k, n in stats.items() if "rbac" in k}
        handshakes = sum(n for k, n in stats.items() if k.endswith("ssl.handshake"))
        assert handshakes >= 2  # the client proxy's connection and the other identity's
