"""Mutual TLS on the proxy's client side, with real peers: Apache Thrift's TSSLSocket client,
``openssl s_client``, certificates from the mesh CA.

The proxy (``metamesh proxy --config``) has a STRICT listener with an ALLOW policy for one
principal, and a PERMISSIVE listener without a policy, both in front of a real Apache Thrift
server. Checked: a client with a mesh certificate for the allowed identity is served, one for
another identity gets a TApplicationException from the policy, plaintext and certificate-less
clients are refused at the STRICT port (counted and logged), a certificate from another CA is
refused, PERMISSIVE serves plaintext and TLS alike, and ``openssl s_client`` shows the SPIFFE
URI SAN of the proxy's certificate.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import subprocess
import sys
import types
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.Thrift import TApplicationException
from thrift.transport import TSocket, TSSLSocket
from thrift.transport.TTransport import TFramedTransport, TTransportException

from metamesh.security.ca import CertificateAuthority
from metamesh.security.csr import new_key_and_csr
from metamesh.security.spiffe import SpiffeId
from tests.codecs.thrift.apache_peer import ApacheServer, CalcHandler
from tests.e2e.mesh import free_port, wait_until

pytestmark = pytest.mark.interop
TD = "cluster.local"
SERVER = SpiffeId(TD, "demo", "calc")
SLEEP = SpiffeId(TD, "demo", "sleep")
INTRUDER = SpiffeId(TD, "other", "intruder")


def issue(ca: CertificateAuthority, who: SpiffeId, tmp: Path) -> tuple[Path, Path]:
    pair = new_key_and_csr(who)
    chain = ca.sign(pair.csr_pem, who, dt.datetime.now(dt.UTC))
    cert, key = tmp / f"{who.service_account}.pem", tmp / f"{who.service_account}.key"
    cert.write_text("".join(chain[:-1]))
    key.write_bytes(pair.key_pem)
    return cert, key


def config(strict: int, permissive: int, upstream: int) -> str:
    def listener(name: str, port: int, mode: str, filters: str) -> str:
        return f"""
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    tls_mode: {mode}
    meta_protocol_proxy:
      codec: {{name: thrift}}
      route_config_name: calc
      meta_protocol_filters:{filters}
      - {{name: aeraki.meta_protocol.filters.router}}"""

    rbac = f"""
      - name: metamesh.filters.rbac
        config:
          policies:
          - name: only-sleep
            action: ALLOW
            rules: [{{from: [{{source: {{principals: ["{SLEEP.principal}"]}}}}]}}]"""
    return f"""
static_resources:
  listeners:{listener("strict", strict, "STRICT", rbac)}{listener("permissive", permissive, "PERMISSIVE", "")}
  clusters:
  - name: calc
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
  route_configs:
  - name: calc
    routes:
    - {{name: all, route: {{cluster: calc}}}}
"""  # noqa: E501


def expect_server(cert: dict[str, Any], hostname: str) -> None:
    """The client's check of the server: its SPIFFE id, not a host name (as Istio's)."""
    uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
    if uris != [SERVER.uri]:
        raise TTransportException(message=f"unexpected server identity {uris}")


class Mesh:
    def __init__(self, tmp: Path, calc_gen: types.ModuleType) -> None:
        self.tmp, self.gen = tmp, calc_gen
        self.ca = CertificateAuthority.create(TD, dt.datetime.now(dt.UTC))
        self.root = tmp / "root.pem"
        self.root.write_text(self.ca.root_pem)
        self.strict, self.permissive, self.admin = free_port(), free_port(), free_port()

    def client(self, port: int, who: SpiffeId | None, ca: CertificateAuthority | None = None):  # type: ignore[no-untyped-def]
        if who is None:
            sock: Any = TSocket.TSocket("127.0.0.1", port)
        else:
            cert, key = issue(ca or self.ca, who, self.tmp)
            ctx = ssl.create_default_context(cafile=str(self.root))
            ctx.check_hostname = False  # mesh certificates name a SPIFFE id, not a host
            ctx.load_cert_chain(cert, key)
            sock = TSSLSocket.TSSLSocket(
                "127.0.0.1", port, ssl_context=ctx, validate_callback=expect_server
            )
        sock.setTimeout(5000)
        transport = TFramedTransport(sock)
        transport.open()
        return self.gen.Calc.Client(TBinaryProtocolAccelerated(transport)), transport


@pytest.fixture
def mesh(tmp_path: Path, calc_gen: types.ModuleType) -> Iterator[tuple[Mesh, Path]]:
    m = Mesh(tmp_path, calc_gen)
    cert, key = issue(m.ca, SERVER, tmp_path)
    with ApacheServer(calc_gen.Calc.Processor(CalcHandler(calc_gen)), "framed", "binary") as up:
        path = tmp_path / "proxy.yaml"
        path.write_text(config(m.strict, m.permissive, up.port))
        err = tmp_path / "proxy.err"
        with open(err, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "metamesh", "proxy", "--config", str(path),
                 "--admin-port", str(m.admin), "--tls-cert", str(cert), "--tls-key", str(key),
                 "--tls-root", str(m.root)],
                stderr=stderr,
            )  # fmt: skip
        try:
            wait_until(lambda: "admin on" in err.read_text() or proc.poll() is not None, "start")
            assert proc.poll() is None, err.read_text()
            yield m, err
        finally:
            proc.terminate()
            proc.wait(15)


def test_strict_mtls_with_an_allow_policy_by_principal(mesh: tuple[Mesh, Path]) -> None:
    m, err = mesh
    client, transport = m.client(m.strict, SLEEP)
    assert [client.add(i, 1) for i in range(5)] == [1, 2, 3, 4, 5]
    transport.close()

    intruder, transport = m.client(m.strict, INTRUDER)
    with pytest.raises(TApplicationException, match="no ALLOW policy matched"):
        intruder.add(1, 1)
    transport.close()

    # plaintext to a STRICT port: closed before any request is read
    plain, transport = m.client(m.strict, None)
    with pytest.raises(TTransportException):
        plain.add(1, 1)
    transport.close()

    # a certificate from another CA (same trust domain): the handshake fails
    other = CertificateAuthority.create(TD, dt.datetime.now(dt.UTC))
    with pytest.raises((TTransportException, ssl.SSLError, OSError)):
        stranger, transport = m.client(m.strict, SLEEP, ca=other)
        stranger.add(1, 1)

    # no client certificate at all
    with (
        socket.create_connection(("127.0.0.1", m.strict)) as raw,
        pytest.raises((ssl.SSLError, OSError)),
    ):
        ctx = ssl.create_default_context(cafile=str(m.root))
        ctx.check_hostname = False
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(b"\x00\x00\x00\x01x")
            assert tls.recv(1) == b""  # TLS 1.3: the refusal arrives after the handshake
            raise ssl.SSLError("closed")

    wait_until(lambda: "no_client_certificate" in err.read_text(), "the refusal logged")
    log = err.read_text()
    assert "TLS: refused" in log and "plaintext" in log and "untrusted_certificate" in log
    with urllib.request.urlopen(f"http://127.0.0.1:{m.admin}/stats/prometheus") as r:
        stats = r.read().decode()
    assert "metamesh_rbac_denied_total 1.0" in stats


def test_permissive_serves_plaintext_and_mtls_alike(mesh: tuple[Mesh, Path]) -> None:
    m, _ = mesh
    for who in (None, SLEEP, INTRUDER):  # no policy on this listener
        client, transport = m.client(m.permissive, who)
        assert client.add(20, 22) == 42
        transport.close()


def test_openssl_s_client_sees_the_spiffe_id_and_needs_a_certificate(
    mesh: tuple[Mesh, Path],
) -> None:
    m, _ = mesh
    cert, key = issue(m.ca, SLEEP, m.tmp)
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{m.strict}", "-CAfile", str(m.root)]
    with_cert = subprocess.run(
        [*base, "-cert", str(cert), "-key", str(key), "-showcerts"],
        input="", capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert "Verify return code: 0 (ok)" in with_cert.stdout
    leaf = with_cert.stdout.split("-----BEGIN CERTIFICATE-----")[1].split("-----END")[0]
    pem = f"-----BEGIN CERTIFICATE-----{leaf}-----END CERTIFICATE-----\n"
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName"],
        input=pem, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"URI:{SERVER.uri}" in text
    # TLS 1.2, where the server's refusal of a certificate-less client ends the handshake
    # itself (in 1.3 it arrives after, as the first record the client reads)
    without = subprocess.run(
        [*base, "-tls1_2"], input="", capture_output=True, text=True, timeout=20
    )  # fmt: skip
    assert without.returncode != 0
    assert "alert handshake failure" in without.stderr or "alert" in without.stderr.lower()


def outbound_config(port: int, inbound: int) -> str:
    return f"""
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    meta_protocol_proxy:
      codec: {{name: thrift}}
      route_config_name: calc
      meta_protocol_filters: [{{name: aeraki.meta_protocol.filters.router}}]
  clusters:
  - name: outbound|9090||calc.demo.svc.cluster.local
    tls_mode: ISTIO_MUTUAL
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {inbound}}}}}}}
  route_configs:
  - name: calc
    routes:
    - {{name: all, route: {{cluster: outbound|9090||calc.demo.svc.cluster.local}}}}
"""


def start_proxy(
    tmp: Path, name: str, text: str, admin: int, cert: Path, key: Path, root: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    err = tmp / f"{name}.err"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metamesh", "proxy", "--config", str(path),
             "--admin-port", str(admin), "--tls-cert", str(cert), "--tls-key", str(key),
             "--tls-root", str(root)],
            stderr=stderr,
        )  # fmt: skip
    wait_until(lambda: "admin on" in err.read_text() or proc.poll() is not None, name)
    assert proc.poll() is None, err.read_text()
    return proc, err


def test_two_hops_outbound_to_inbound_over_mutual_tls(
    mesh: tuple[Mesh, Path], tmp_path: Path
) -> None:
    """client -> outbound proxy (as sleep) -> mTLS -> inbound STRICT + ALLOW sleep -> server;
    an outbound proxy holding another identity is refused with an error the client reads, and
    one whose certificate comes from another CA cannot connect at all."""
    m, inbound_err = mesh
    other = CertificateAuthority.create(TD, dt.datetime.now(dt.UTC))
    other_root = tmp_path / "other-root.pem"
    other_root.write_text(other.root_pem)
    procs, errs = [], []
    try:
        for who, issuer, trusted, expect in (
            (SLEEP, m.ca, m.root, "ok"),
            (INTRUDER, m.ca, m.root, "no ALLOW policy matched"),
            (SLEEP, other, m.root, "upstream"),  # the inbound refuses the foreign client cert
            (SLEEP, m.ca, other_root, "upstream"),  # the outbound refuses the inbound's cert
        ):
            cert, key = issue(issuer, who, tmp_path)
            port = free_port()
            proc, err = start_proxy(
                tmp_path, f"out-{len(procs)}", outbound_config(port, m.strict), free_port(),
                cert, key, trusted,
            )  # fmt: skip
            procs.append(proc)
            errs.append(err)
            client, transport = m.client(port, None)  # the app speaks plaintext to its sidecar
            try:
                if expect == "ok":
                    assert [client.add(i, 2) for i in range(20)] == [i + 2 for i in range(20)]
                else:
                    with pytest.raises(TApplicationException, match=expect):
                        client.add(1, 2)
            finally:
                transport.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
    wait_until(lambda: "untrusted_certificate" in inbound_err.read_text(), "inbound refusal")
    assert "CERTIFICATE_VERIFY_FAILED" in errs[3].read_text()
