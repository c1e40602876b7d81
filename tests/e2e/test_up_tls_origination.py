"""DestinationRule ``tls`` SIMPLE and MUTUAL: ``metamesh up`` originates TLS from files.

Two real Apache Thrift servers behind ``TSSLServerSocket`` (Python's ssl): one requires a client
certificate (MUTUAL), one does not (SIMPLE). Their certificates come from a CA made for the test
(files on disk, as an operator's would be); the DestinationRules name those files, the SNI and
the server's SAN. A plaintext Apache Thrift client calls each service through ``up``: the
answers come back, the MUTUAL server saw the client certificate of the DestinationRule, and a
SAN edit that the server's certificate does not carry fails the calls (the proxy's protocol-native
error, on the same client connection) until it is edited back.
"""

from __future__ import annotations

import datetime as dt
import ssl
import types
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from thrift.Thrift import TApplicationException
from thrift.transport import TSSLSocket

from metamesh.security.ca import CertificateAuthority
from metamesh.security.spiffe import SpiffeId
from tests.codecs.thrift.apache_peer import ApacheServer
from tests.e2e.mesh import Metamesh, ThriftClient, free_address, wait_until, write
from tests.runtime.test_mtls_e2e import issue
from tests.runtime.thrift_servers import NamedCalc

pytestmark = [pytest.mark.interop, pytest.mark.slow]
SERVER = SpiffeId("cluster.local", "legacy", "tls-server")
CLIENT = SpiffeId("cluster.local", "legacy", "mesh-client")


def tls_server(gen: types.ModuleType, name: str, context: ssl.SSLContext) -> ApacheServer:
    """An Apache framed/binary server whose listener is a TSSLServerSocket; the URIs of the
    client certificates it saw are in ``server.clients``."""
    server = ApacheServer(gen.Calc.Processor(NamedCalc(gen, name)), "framed", "binary")
    server._listener.close()
    seen: list[str] = []

    def record(cert: dict[str, Any], address: str) -> None:
        names: Any = cert.get("subjectAltName", ())
        seen.extend(v for k, v in names if k == "URI")

    listener = TSSLSocket.TSSLServerSocket(
        host="127.0.0.1", port=0, ssl_context=context, validate_callback=record
    )
    listener.listen()
    server._listener = listener
    server.port = listener.handle.getsockname()[1]
    server.clients = seen  # type: ignore[attr-defined]
    return server


def service(name: str, address: tuple[str, int], port: int, tls: str) -> str:
    host = f"{name}.legacy.svc.cluster.local"
    return f"""apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: {name}, namespace: legacy}}
spec:
  hosts: [{host}]
  addresses: [{address[0]}]
  ports: [{{number: {address[1]}, name: tcp-metaprotocol-thrift-{name}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-metaprotocol-thrift-{name}: {port}}}}}]
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: {name}, namespace: legacy}}
spec:
  host: {host}
  trafficPolicy:
    tls: {tls}
"""


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[CertificateAuthority, Path]]:
    ca = CertificateAuthority.create("cluster.local", dt.datetime.now(dt.UTC))
    root = tmp_path / "root.pem"
    root.write_text(ca.root_pem)
    yield ca, root


def test_simple_and_mutual_tls_from_files(
    calc_gen: types.ModuleType, tmp_path: Path, files: tuple[CertificateAuthority, Path]
) -> None:
    ca, root = files
    server_cert, server_key = issue(ca, SERVER, tmp_path)
    client_cert, client_key = issue(ca, CLIENT, tmp_path)

    snis: list[str | None] = []

    def context(require_client: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(server_cert, server_key)
        ctx.sni_callback = lambda _sock, name, _ctx: snis.append(name)  # type: ignore[assignment,return-value]
        if require_client:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(root))
        return ctx

    config = tmp_path / "mesh"
    config.mkdir()
    with ExitStack() as stack:
        mutual = stack.enter_context(tls_server(calc_gen, "mutual", context(True)))
        simple = stack.enter_context(tls_server(calc_gen, "simple", context(False)))
        m_addr, s_addr = free_address(), free_address()
        while s_addr[0] == m_addr[0]:
            s_addr = free_address()
        san = SERVER.uri

        def mutual_tls(sans: str) -> str:
            return (
                f"{{mode: MUTUAL, clientCertificate: {client_cert}, privateKey: {client_key}, "
                f"caCertificates: {root}, sni: tls-server.legacy, subjectAltNames: [{sans}]}}"
            )

        write(config / "mutual.yaml", service("mutual", m_addr, mutual.port, mutual_tls(san)))
        simple_tls = f"{{mode: SIMPLE, caCertificates: {root}, subjectAltNames: [{san}]}}"
        write(config / "simple.yaml", service("simple", s_addr, simple.port, simple_tls))
        up = stack.enter_context(Metamesh(tmp_path, "up", "up", str(config), "--admin-port", "0"))
        up.wait_for(f"{s_addr[0]}:{s_addr[1]}")
        up.wait_for(f"{m_addr[0]}:{m_addr[1]}")

        to_mutual = ThriftClient(calc_gen, *m_addr)
        to_simple = ThriftClient(calc_gen, *s_addr)
        assert to_mutual.echo("a") == "mutual:a"
        assert to_simple.echo("b") == "simple:b"
        assert mutual.clients == [CLIENT.uri]  # type: ignore[attr-defined]
        assert simple.clients == []  # type: ignore[attr-defined]
        assert snis == ["tls-server.legacy", None]  # the DestinationRule's sni; none for simple

        wrong = "spiffe://cluster.local/ns/legacy/sa/someone-else"
        write(config / "mutual.yaml", service("mutual", m_addr, mutual.port, mutual_tls(wrong)))

        def refused() -> bool:
            try:
                to_mutual.echo("x")
            except TApplicationException:
                return True
            return False

        wait_until(refused, "the SAN edit in force (the server's certificate does not match)")
        write(config / "mutual.yaml", service("mutual", m_addr, mutual.port, mutual_tls(san)))
        wait_until(lambda: not refused(), "the right SAN back")
        assert to_mutual.echo("c") == "mutual:c" and to_mutual.same_connection()
        to_mutual.close()
        to_simple.close()
