"""Workload TLS credentials and contexts, and the counters of refused handshakes.

:class:`TlsCredentials` holds the workload's certificate as SSL contexts: the server context of
the mTLS listeners and the client context of ISTIO_MUTUAL upstream connections;
:meth:`TlsCredentials.update` swaps the certificate for new handshakes (rotation) while
established connections keep theirs. :func:`origination_context` is the client context of
DestinationRule SIMPLE / MUTUAL TLS from files. The protocols that run TLS on connections are
in :mod:`metamesh.runtime.tls_protocols`.

What a handshake costs (``benchmarks/mesh_tls.py``, OpenSSL 3.0): the server sends no TLS 1.3
session tickets (``num_tickets = 0``). Each ticket cost the server about 0.2 ms (OpenSSL
serializes the session, the client's certificate chain included, and encrypts it), two by
default, and metamesh's own clients never resume: they keep few long-lived pooled connections.
An Envoy client then makes full handshakes, as it does the first time anyway. The peer's
SPIFFE id is parsed once per distinct certificate (:meth:`TlsCredentials.identity`), not once
per connection.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections import Counter
from typing import Final

from cryptography import x509

from metamesh.security.spiffe import SpiffeId, identity_of

log = logging.getLogger("metamesh.tls")

LOG_EVERY: Final = 10.0
_IDENTITY_CACHE: Final = 1024  # distinct peer certificates remembered (then forgotten at once)
_UNKNOWN: Final = object()


class TlsCredentials:
    """The workload's certificate, key and trusted root as SSL contexts: ``context`` for the
    listeners (server side, a client certificate required) and ``client_context`` for
    ISTIO_MUTUAL upstream connections (the peer's chain verified against the root; its name is
    a SPIFFE id, checked by :meth:`peer_identity_ok`, not a host name)."""

    def __init__(self, chain_pem: bytes, key_pem: bytes, root_pem: bytes, trust_domain: str):
        self.trust_domain = trust_domain
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client_context.check_hostname = False
        for ctx in (self.context, self.client_context):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=root_pem.decode())
        self.context.num_tickets = 0  # see the module docstring
        self.rotations = 0
        self._identities: dict[bytes, SpiffeId | None] = {}
        self._load(chain_pem, key_pem)
        self.stats = TlsStats()

    def identity(self, der: bytes | None) -> SpiffeId | None:
        """The SPIFFE id of a verified peer certificate (DER), remembered per certificate:
        peers reconnect with the same one until it rotates."""
        if not der:
            return None
        known = self._identities.get(der, _UNKNOWN)
        if known is not _UNKNOWN:
            return known  # type: ignore[return-value]
        if len(self._identities) >= _IDENTITY_CACHE:
            self._identities.clear()
        found = self._identities[der] = identity_of(x509.load_der_x509_certificate(der))
        return found

    def peer_identity_ok(self, sslobj: ssl.SSLObject | None, sans: tuple[str, ...] = ()) -> bool:
        """The verified peer of an upstream connection has a SPIFFE id of this trust domain
        (one of ``sans`` when given: the service accounts the cluster's endpoints run as)."""
        identity = self.identity(sslobj.getpeercert(binary_form=True) if sslobj else None)
        if identity is None or identity.trust_domain != self.trust_domain:
            return False
        return not sans or identity.uri in sans

    def _load(self, chain_pem: bytes, key_pem: bytes) -> None:
        # load_cert_chain reads files only; they live for the call in a private directory
        with tempfile.TemporaryDirectory(prefix="metamesh-tls-") as tmp:
            cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            for path, data in ((cert, chain_pem), (key, key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
            self.context.load_cert_chain(cert, key)
            self.client_context.load_cert_chain(cert, key)

    def update(self, chain_pem: bytes, key_pem: bytes) -> None:
        """A new certificate for handshakes from now on (connections keep theirs)."""
        self._load(chain_pem, key_pem)
        self.rotations += 1


def origination_context(
    client_certificate: str, private_key: str, ca_certificates: str
) -> ssl.SSLContext:
    """A client context for DestinationRule SIMPLE / MUTUAL TLS from the proxy's files: the
    peer verified against ``ca_certificates`` (the system's roots when empty), names checked
    by :func:`peer_sans_ok` rather than against the endpoint's address."""
    context = ssl.create_default_context(cafile=ca_certificates or None)
    context.check_hostname = False
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_certificate:
        context.load_cert_chain(client_certificate, private_key or None)
    return context


def peer_sans_ok(sslobj: ssl.SSLObject | None, sans: tuple[str, ...]) -> bool:
    """The peer certificate carries one of ``sans`` (URI or DNS names); any when empty."""
    if not sans:
        return True
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if not der:
        return False
    try:
        ext = x509.load_der_x509_certificate(der).extensions
        names = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {*names.get_values_for_type(x509.UniformResourceIdentifier)}
    have.update(names.get_values_for_type(x509.DNSName))
    return any(san in have for san in sans)


class TlsStats:
    """Handshakes done and refused (by reason), with a bounded log of the refusals."""

    def __init__(self) -> None:
        self.handshakes = 0
        self.plaintext = 0  # PERMISSIVE connections that were plaintext
        self.refused: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}

    def refuse(self, reason: str, detail: str, peer: str, now: float) -> None:
        self.refused[reason] += 1
        if now - self._logged_at.get(reason, -1e9) >= LOG_EVERY:
            self._logged_at[reason] = now
            log.warning(
                "TLS: refused %s: %s (%s; %d so far, logged once per %.0f s)",
                peer,
                reason,
                detail,
                self.refused[reason],
                LOG_EVERY,
            )


def reason_of(exc: ssl.SSLError) -> str:
    """The refusal reason (a metric label) of a failed handshake."""
    text = f"{exc.reason or ''} {exc}".upper()
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in text or "CERTIFICATE REQUIRED" in text:
        return "no_client_certificate"
    if "CERTIFICATE_VERIFY_FAILED" in text or "UNKNOWN_CA" in text or "EXPIRED" in text:
        return "untrusted_certificate"
    if "WRONG_VERSION" in text or "HTTP_REQUEST" in text or "UNKNOWN_PROTOCOL" in text:
        return "not_tls"
    return "handshake_failed"
