"""The proxy side of a certificate: a key made here, and a CSR that proves it holds the key.

The private key never leaves the process: the CSR carries the public key and is signed with
the private one, so the CA can check possession. The CSR names the identity the proxy asks for
(as a URI SAN), but the CA issues for the identity it authenticated, never for what a CSR
claims. Keys are ECDSA P-256, as Istio's agent makes by default.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from metamesh.security.spiffe import SpiffeId


@dataclass(frozen=True, slots=True)
class KeyAndCsr:
    key_pem: bytes
    csr_pem: bytes


def new_key_and_csr(identity: SpiffeId) -> KeyAndCsr:
    """A fresh P-256 key and a CSR for ``identity`` signed with it."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "metamesh")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return KeyAndCsr(key_pem, csr.public_bytes(serialization.Encoding.PEM))
