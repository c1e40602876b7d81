"""Mutual TLS on client connections: a protocol/transport pair around the plain adapter.

A listener with ``tls_mode`` STRICT or PERMISSIVE accepts plain TCP and runs TLS itself over
``ssl.MemoryBIO`` (:class:`TlsServerProtocol`), instead of the loop's built-in TLS, for three
reasons: every failed handshake is seen here, so it is counted by reason and logged (the loop's
TLS drops them silently); PERMISSIVE can look at the first bytes and decide per connection
(``0x16``, a TLS handshake record, or plaintext) without losing them; and the identity of the
verified peer certificate reaches the core as a plain attribute before the first request.

Once the handshake is done, the plain adapter (:class:`~metamesh.runtime.protocols.
DownstreamProtocol`) is connected to a :class:`TlsTransport`, which encrypts what it writes;
decrypted bytes are fed to it as they arrive. The core never knows TLS is there.

Refused, each counted in :attr:`TlsStats` and logged (one line per reason per 10 s, with the
count, so a flood cannot flood the log): plaintext on a STRICT port, garbage before the
ClientHello, a client without a certificate, a certificate from another CA or expired, one
without a SPIFFE id of this trust domain, and a handshake not done within
:data:`HANDSHAKE_TIMEOUT` (a slow TLS client).

:class:`TlsCredentials` holds the server context; :meth:`TlsCredentials.update` swaps the
certificate for new handshakes (rotation) while established connections keep theirs.

What a handshake costs (``benchmarks/mesh_tls.py``, OpenSSL 3.0): the server sends no TLS 1.3
session tickets (``num_tickets = 0``). Each ticket cost the server about 0.2 ms (OpenSSL
serializes the session, the client's certificate chain included, and encrypts it), two by
default, and metamesh's own clients never resume: they keep few long-lived pooled connections.
An Envoy client then makes full handshakes, as it does the first time anyway. The peer's
SPIFFE id is parsed once per distinct certificate (:meth:`TlsCredentials.identity`), not once
per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
from collections import Counter
from typing import Any, Final

from cryptography import x509

from metamesh.security.spiffe import SpiffeId, identity_of

log = logging.getLogger("metamesh.tls")

HANDSHAKE_TIMEOUT: Final = 10.0
LOG_EVERY: Final = 10.0
_TLS_HANDSHAKE: Final = 0x16
_READ: Final = 1 << 16
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


def _reason(exc: ssl.SSLError) -> str:
    text = f"{exc.reason or ''} {exc}".upper()
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in text or "CERTIFICATE REQUIRED" in text:
        return "no_client_certificate"
    if "CERTIFICATE_VERIFY_FAILED" in text or "UNKNOWN_CA" in text or "EXPIRED" in text:
        return "untrusted_certificate"
    if "WRONG_VERSION" in text or "HTTP_REQUEST" in text or "UNKNOWN_PROTOCOL" in text:
        return "not_tls"
    return "handshake_failed"


class TlsTransport:
    """What the plain adapter writes to: encrypts, and delegates the rest to the socket."""

    def __init__(self, owner: TlsServerProtocol) -> None:
        self._owner = owner
        self._raw = owner.raw

    def write(self, data: bytes) -> None:
        owner = self._owner
        if owner.sslobj is not None and not self._raw.is_closing():
            owner.sslobj.write(data)
            owner.flush_outgoing()

    def write_eof(self) -> None:
        self._owner.close_notify()
        if self._raw.can_write_eof():
            self._raw.write_eof()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self._owner.close_notify()
        self._raw.close()

    def abort(self) -> None:
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._raw.is_closing()

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peer_principal":
            return self._owner.principal
        if name == "ssl_object":
            return self._owner.sslobj
        return self._raw.get_extra_info(name, default)


class TlsServerProtocol:
    """The asyncio protocol of a TLS (STRICT) or PERMISSIVE listener; see the module docstring.

    ``inner`` is the plain adapter the decrypted connection is handed to.
    """

    def __init__(self, credentials: TlsCredentials, mode: str, inner: Any) -> None:
        self.credentials = credentials
        self.mode = mode
        self.inner = inner
        self.raw: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.sslobj: ssl.SSLObject | None = None
        self.principal = ""
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._plain = False  # PERMISSIVE, and the client spoke plaintext
        self._ready = False  # the inner adapter is connected
        self._timer: asyncio.TimerHandle | None = None
        self._peer = ""

    # -- asyncio protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        if self._plain:
            self.inner.data_received(data)
            return
        if self.sslobj is None:
            if not data:
                return
            if data[0] != _TLS_HANDSHAKE:
                if self.mode == "PERMISSIVE":
                    self._start_plain(data)
                    return
                self._refuse("plaintext", "the port requires mutual TLS")
                return
            self.sslobj = self.credentials.context.wrap_bio(
                self._incoming, self._outgoing, server_side=True
            )
        self._incoming.write(data)
        if not self._ready and not self._handshake():
            return
        self._read_plaintext()

    def eof_received(self) -> bool | None:
        if self._ready:
            result: bool | None = self.inner.eof_received()
            return result
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._ready:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._ready:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._ready:
            self.inner.resume_writing()

    # -- TLS ---------------------------------------------------------------------------

    def _handshake(self) -> bool:
        """Advance the handshake; True once done and the peer is accepted."""
        assert self.sslobj is not None
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self.flush_outgoing()
            return False
        except ssl.SSLError as exc:
            self.flush_outgoing()  # the alert tells the client why
            self._refuse(_reason(exc), str(exc.reason or exc))
            return False
        self.flush_outgoing()
        identity = self.credentials.identity(self.sslobj.getpeercert(binary_form=True))
        if identity is None or identity.trust_domain != self.credentials.trust_domain:
            self._refuse("wrong_identity", "no SPIFFE id of this trust domain in the certificate")
            return False
        self.principal = identity.principal
        self.credentials.stats.handshakes += 1
        self._connect_inner(TlsTransport(self))
        return True

    def _read_plaintext(self) -> None:
        assert self.sslobj is not None
        sslobj, incoming = self.sslobj, self._incoming
        chunks = []
        try:
            while True:
                chunk = sslobj.read(_READ)
                if not chunk:
                    break
                chunks.append(chunk)
                # Nothing left to decrypt (no record bytes waiting, no plaintext buffered):
                # stop here instead of reading until SSLWantReadError, an exception built
                # (message formatted) and caught for every request otherwise.
                if not incoming.pending and not sslobj.pending():
                    break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:  # close_notify: the client is done sending
            if chunks:
                self.inner.data_received(b"".join(chunks))
            if self.inner.eof_received() is None:
                self.raw.close()
            return
        except ssl.SSLError as exc:
            self._refuse("tls_error", str(exc.reason or exc))
            return
        self.flush_outgoing()
        if chunks:
            self.inner.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def flush_outgoing(self) -> None:
        out = self._outgoing.read()
        if out and not self.raw.is_closing():
            self.raw.write(out)

    def close_notify(self) -> None:
        if self.sslobj is not None and self._ready:
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError):
                self.sslobj.unwrap()
            self.flush_outgoing()

    # -- outcomes ------------------------------------------------------------------------

    def _start_plain(self, data: bytes) -> None:
        self._plain = True
        self.credentials.stats.plaintext += 1
        self._connect_inner(self.raw)
        self.inner.data_received(data)

    def _connect_inner(self, transport: Any) -> None:
        self._cancel_timer()
        self._ready = True
        self.inner.connection_made(transport)

    def _refuse(self, reason: str, detail: str) -> None:
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        self.credentials.stats.refuse(reason, detail, self._peer, loop.time())
        self.raw.close()

    def _handshake_timeout(self) -> None:
        self._timer = None
        if not self._ready:
            self._refuse("handshake_timeout", f"no completed handshake in {HANDSHAKE_TIMEOUT} s")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
