"""SPIFFE identities as Istio spells them, and how they read back from a certificate.

A workload is ``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``; Istio's
authorization ``principals`` drop the scheme (``cluster.local/ns/default/sa/sleep``) and
``namespaces`` match the ``ns`` segment. A certificate carries the id as its one URI
subjectAltName; :func:`identity_of` reads it back (None when absent or not Istio-shaped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography import x509

DEFAULT_TRUST_DOMAIN: Final = "cluster.local"


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """One workload identity."""

    trust_domain: str
    namespace: str
    service_account: str

    @property
    def uri(self) -> str:
        return f"spiffe://{self.principal}"

    @property
    def principal(self) -> str:
        """The form Istio's authorization ``principals`` use (no scheme)."""
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> SpiffeId | None:
        """``spiffe://td/ns/N/sa/S`` -> SpiffeId; None for anything else."""
        if not uri.startswith("spiffe://"):
            return None
        parts = uri[len("spiffe://") :].split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa" or not all(parts):
            return None
        return cls(parts[0], parts[2], parts[4])


def identity_of(cert: x509.Certificate) -> SpiffeId | None:
    """The SPIFFE id in ``cert``'s URI subjectAltName, if it has exactly one Istio-shaped id."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    ids = [i for i in (SpiffeId.parse(u) for u in uris) if i is not None]
    return ids[0] if len(ids) == 1 else None
