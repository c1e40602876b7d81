"""The CA: a root made once and kept, workload certificates for verified CSRs, checked by
OpenSSL (the ``openssl`` command) and by a real TLS handshake between two Python sockets."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509

from metamesh.security.ca import MAX_TTL, CertificateAuthority, CsrError
from metamesh.security.csr import new_key_and_csr
from metamesh.security.spiffe import SpiffeId, identity_of

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
SLEEP = SpiffeId("cluster.local", "demo", "sleep")


def test_the_root_is_made_once_and_kept_with_a_private_key_file(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path, "cluster.local", NOW)
    assert stat.S_IMODE((tmp_path / "root-key.pem").stat().st_mode) == 0o600
    again = CertificateAuthority.load_or_create(tmp_path, "cluster.local", NOW)
    assert again.root_pem == first.root_pem
    assert first.root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_workload_certificate_carries_only_the_authenticated_identity(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("cluster.local", NOW)
    # the CSR asks for another identity: the CA issues for the one it authenticated
    req = new_key_and_csr(SpiffeId("cluster.local", "kube-system", "admin"))
    chain = ca.sign(req.csr_pem, SLEEP, NOW, dt.timedelta(hours=1))
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    assert identity_of(leaf) == SLEEP
    assert leaf.not_valid_after_utc - NOW == dt.timedelta(hours=1)
    assert chain[-1] == ca.root_pem
    (tmp_path / "root.pem").write_text(ca.root_pem)
    (tmp_path / "leaf.pem").write_text(chain[0])
    out = subprocess.run(
        ["openssl", "verify", "-attime", str(int(NOW.timestamp())), "-CAfile",
         str(tmp_path / "root.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(tmp_path / "leaf.pem")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "URI:spiffe://cluster.local/ns/demo/sa/sleep" in text


def test_lifetimes_are_capped_and_bad_requests_refused() -> None:
    ca = CertificateAuthority.create("cluster.local", NOW)
    req = new_key_and_csr(SLEEP)
    leaf = x509.load_pem_x509_certificate(
        ca.sign(req.csr_pem, SLEEP, NOW, dt.timedelta(days=365))[0].encode()
    )
    assert leaf.not_valid_after_utc - NOW == MAX_TTL
    with pytest.raises(CsrError, match="not a PEM certificate request"):
        ca.sign(b"garbage", SLEEP, NOW)
    tampered = req.csr_pem.replace(b"\n", b"\n", 1)[:-80] + req.csr_pem[-80:].lower()
    with pytest.raises(CsrError):
        ca.sign(tampered, SLEEP, NOW)


def test_two_workloads_complete_a_mutual_tls_handshake(tmp_path: Path) -> None:
    """What the proxies will do: each side presents its workload cert, trusts the root only."""
    now = dt.datetime.now(dt.UTC)
    ca = CertificateAuthority.create("cluster.local", now)
    (tmp_path / "root.pem").write_text(ca.root_pem)

    def context(identity: SpiffeId, purpose: ssl.Purpose) -> ssl.SSLContext:
        req = new_key_and_csr(identity)
        chain = ca.sign(req.csr_pem, identity, now)
        cert = tmp_path / f"{identity.service_account}.pem"
        key = tmp_path / f"{identity.service_account}.key"
        cert.write_text("".join(chain[:-1]))
        key.write_bytes(req.key_pem)
        ctx = ssl.create_default_context(purpose, cafile=str(tmp_path / "root.pem"))
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(cert, key)
        return ctx

    server_ctx = context(SpiffeId("cluster.local", "demo", "server"), ssl.Purpose.CLIENT_AUTH)
    client_ctx = context(SLEEP, ssl.Purpose.SERVER_AUTH)
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[SpiffeId | None] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            seen.append(identity_of(x509.load_der_x509_certificate(der)))
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()
    with (
        socket.create_connection(listener.getsockname()) as raw,
        client_ctx.wrap_socket(raw) as tls,
    ):
        assert tls.recv(2) == b"ok"
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        peer = identity_of(x509.load_der_x509_certificate(der))
    thread.join()
    listener.close()
    assert seen == [SLEEP]
    assert peer == SpiffeId("cluster.local", "demo", "server")


def test_spiffe_ids_parse_only_in_istio_shape() -> None:
    assert SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/sleep") == SLEEP
    assert SLEEP.principal == "cluster.local/ns/demo/sa/sleep"
    for bad in ("spiffe://td/ns/x", "http://td/ns/a/sa/b", "spiffe://td/ns//sa/b", ""):
        assert SpiffeId.parse(bad) is None
