"""Istio's CreateCertificate over real gRPC with TLS on 127.0.0.1: first CSR with a bootstrap
token, renewal with the certificate, refusals for no/unknown credentials and bad CSRs."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from metamesh.security.ca import CertificateAuthority
from metamesh.security.cert_service import (
    MAX_SERVER_TTL,
    CertificateService,
    TokenBook,
    control_plane_certificate,
    request_certificate,
    server_credentials,
)
from metamesh.security.csr import new_key_and_csr
from metamesh.security.spiffe import SpiffeId, identity_of

TD = "cluster.local"
SLEEP = SpiffeId(TD, "demo", "sleep")


def leaf_identity(chain: list[str]) -> SpiffeId | None:
    return identity_of(x509.load_pem_x509_certificate(chain[0].encode()))


async def scenario(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    ca = CertificateAuthority.create(TD, now)
    tokens_file = tmp_path / "tokens.yaml"
    tokens_file.write_text("tokens:\n- {token: t-sleep, namespace: demo, serviceAccount: sleep}\n")
    service = CertificateService(ca, TokenBook.load(tokens_file, TD))
    server = grpc.aio.server()
    service.add_to(server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(ca, now))
    await server.start()
    target = f"127.0.0.1:{port}"
    try:
        # first CSR: the token's identity, whatever the CSR claims
        first = new_key_and_csr(SpiffeId(TD, "kube-system", "admin"))
        chain = await request_certificate(
            target, ca.root_pem, first.csr_pem, token="t-sleep", ttl=dt.timedelta(minutes=5)
        )
        assert leaf_identity(chain) == SLEEP and chain[-1] == ca.root_pem
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        assert dt.timedelta(minutes=4) < leaf.not_valid_after_utc - now <= dt.timedelta(minutes=6)

        # renewal: authenticated by the certificate just issued, no token
        second = new_key_and_csr(SLEEP)
        renewed = await request_certificate(
            target,
            ca.root_pem,
            second.csr_pem,
            client_chain_pem="".join(chain[:-1]).encode(),
            client_key_pem=first.key_pem,
        )
        assert leaf_identity(renewed) == SLEEP

        # refusals
        for token in (None, "wrong"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await request_certificate(target, ca.root_pem, second.csr_pem, token=token)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await request_certificate(target, ca.root_pem, b"not a csr", token="t-sleep")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # a client that trusts another root does not talk to this CA
        other = CertificateAuthority.create(TD, now)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await request_certificate(
                target, other.root_pem, second.csr_pem, token="t-sleep", timeout=3
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert service.counts == {
            "issued_token": 1,
            "issued_cert": 1,
            "unauthenticated": 2,
            "bad_csr": 1,
        }
    finally:
        await server.stop(0)


def test_create_certificate_over_grpc_with_tls(tmp_path: Path) -> None:
    asyncio.run(scenario(tmp_path))


def test_a_renewal_needs_a_live_mesh_certificate_and_a_proof_for_this_csr() -> None:
    import base64

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = dt.datetime.now(dt.UTC)
    ca = CertificateAuthority.create(TD, now)
    clock = [now]
    service = CertificateService(ca, TokenBook({}), clock=lambda: clock[0])
    pair = new_key_and_csr(SLEEP)
    chain = ca.sign(pair.csr_pem, SLEEP, now, dt.timedelta(minutes=10))
    key = serialization.load_pem_private_key(pair.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = new_key_and_csr(SLEEP).csr_pem
    cert_b64 = base64.b64encode("".join(chain[:-1]).encode()).decode()

    def proof(data: bytes) -> str:
        return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()

    assert service._certificate_holder(cert_b64, proof(csr), csr) == SLEEP
    assert service._certificate_holder(cert_b64, proof(b"another csr"), csr) is None
    other = CertificateAuthority.create(TD, now)  # same trust domain, another root
    foreign = other.sign(pair.csr_pem, SLEEP, now)
    foreign_b64 = base64.b64encode("".join(foreign[:-1]).encode()).decode()
    assert service._certificate_holder(foreign_b64, proof(csr), csr) is None
    clock[0] = now + dt.timedelta(minutes=11)  # expired
    assert service._certificate_holder(cert_b64, proof(csr), csr) is None


def test_the_ca_ports_certificate_is_renewed_at_half_its_lifetime() -> None:
    """grpc asks before each handshake; past half the lifetime a new certificate is served."""

    async def serial_seen(port: int, root: str) -> int:
        context = ssl.create_default_context(cadata=root)
        context.check_hostname = False  # the renewed one is issued in the test's future
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2"])
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der).serial_number

    async def scenario() -> None:
        now = dt.datetime.now(dt.UTC)
        ca = CertificateAuthority.create(TD, now)
        offset = [dt.timedelta()]
        server = grpc.aio.server()
        CertificateService(ca, TokenBook({})).add_to(server)
        credentials = server_credentials(ca, now, clock=lambda: now + offset[0])
        port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        try:
            first = await serial_seen(port, ca.root_pem)
            assert await serial_seen(port, ca.root_pem) == first
            offset[0] = MAX_SERVER_TTL / 2 + dt.timedelta(seconds=1)
            assert await serial_seen(port, ca.root_pem) != first
        finally:
            await server.stop(0)

    asyncio.run(scenario())


def test_the_control_plane_certificate_names_loopback_and_what_proxies_dial() -> None:
    """Listening on 0.0.0.0 (every address) the control plane is dialled on 127.0.0.1 by local
    proxies and on its other addresses by the rest: loopback is always named, the unspecified
    address never (it is nobody's destination), other hosts as given."""
    now = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)
    ca = CertificateAuthority.create(TD, now)
    chain, _ = control_plane_certificate(ca, now, ("0.0.0.0", "198.18.0.1", "cp.example"))
    leaf = x509.load_pem_x509_certificates(chain)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "::1",
        "198.18.0.1",
    }
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "cp.example"]
