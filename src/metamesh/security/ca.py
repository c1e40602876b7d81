"""The mesh's certificate authority: a root made on first start (or an operator's), and
short-lived workload certificates signed for verified CSRs.

:meth:`CertificateAuthority.load_or_create` reads ``root-cert.pem`` / ``root-key.pem`` from the
control plane's state directory, creating them on first start (ECDSA P-256, ten years, key file
mode 0600), or uses the certificate, key and optional chain an operator gives (a root, or an
intermediate under the organisation's root: the chain then travels with every certificate).

:meth:`CertificateAuthority.sign` checks the CSR's signature (possession of the key), then issues
a certificate for the identity the *caller authenticated*, never for what the CSR asks: the
only subjectAltName is that SPIFFE URI, the validity is the requested lifetime capped at
:data:`MAX_TTL`, backdated a minute for clock skew, and the usages are a TLS client's and
server's. Time is an argument (``now``), so lifetimes and rotation are tested without sleeping.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from metamesh.security.spiffe import SpiffeId

ROOT_TTL: Final = dt.timedelta(days=3650)
DEFAULT_TTL: Final = dt.timedelta(hours=24)
MAX_TTL: Final = dt.timedelta(days=7)
SKEW: Final = dt.timedelta(minutes=1)
ROOT_CERT_FILE: Final = "root-cert.pem"
ROOT_KEY_FILE: Final = "root-key.pem"


class CsrError(ValueError):
    """A CSR that cannot be signed (unparsable, bad signature, unsupported key)."""


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class CertificateAuthority:
    """Signs workload certificates (see the module docstring)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    trust_domain: str
    #: Certificates above ``cert`` up to and including the root (empty when ``cert`` is it).
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def root(self) -> x509.Certificate:
        return self.chain[-1] if self.chain else self.cert

    @property
    def root_pem(self) -> str:
        return _pem(self.root)

    @classmethod
    def create(cls, trust_domain: str, now: dt.datetime) -> CertificateAuthority:
        """A new self-signed root for ``trust_domain``."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "metamesh"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"metamesh root CA ({trust_domain})"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - SKEW)
            .not_valid_after(now + ROOT_TTL)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key, trust_domain)

    @classmethod
    def load(
        cls, cert_file: Path, key_file: Path, trust_domain: str, chain_file: Path | None = None
    ) -> CertificateAuthority:
        """An operator's CA certificate and key (and the chain above it, up to the root)."""
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_file}: only ECDSA CA keys are supported")
        chain = (
            tuple(x509.load_pem_x509_certificates(chain_file.read_bytes())) if chain_file else ()
        )
        return cls(cert, key, trust_domain, chain)

    @classmethod
    def load_or_create(
        cls, directory: Path, trust_domain: str, now: dt.datetime
    ) -> CertificateAuthority:
        """The root kept in ``directory``, made (and written there) on first start."""
        cert_file, key_file = directory / ROOT_CERT_FILE, directory / ROOT_KEY_FILE
        if cert_file.exists() and key_file.exists():
            return cls.load(cert_file, key_file, trust_domain)
        ca = cls.create(trust_domain, now)
        directory.mkdir(parents=True, exist_ok=True)
        key_pem = ca.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key_pem)
        cert_file.write_text(ca.root_pem)
        return ca

    def sign(
        self,
        csr_pem: bytes,
        identity: SpiffeId,
        now: dt.datetime,
        ttl: dt.timedelta = DEFAULT_TTL,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
    ) -> list[str]:
        """PEM chain ``[leaf, intermediates..., root]`` for ``csr_pem``, issued to ``identity``.

        ``dns_names`` / ``ip_addresses`` are added for server certificates the control plane
        issues to itself (clients dial it by address); workload certificates carry only the
        SPIFFE id.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CsrError(f"not a PEM certificate request: {exc}") from None
        if not csr.is_signature_valid:
            raise CsrError("the request's signature does not match its key")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise CsrError("only ECDSA keys are accepted")
        ttl = min(ttl, MAX_TTL)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        names += [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))  # as Istio's: the identity is the (critical) SAN
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - SKEW)
            .not_valid_after(now + ttl)
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        chain = [leaf, self.cert, *self.chain] if self.chain else [leaf, self.cert]
        return [_pem(c) for c in chain]
