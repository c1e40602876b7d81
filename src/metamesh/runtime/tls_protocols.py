"""TLS on the proxy's connections: protocol/transport pairs around the plain adapters.

Both sides of a proxy's TLS run here over ``ssl.MemoryBIO``, instead of the loop's built-in
TLS, and this module is compiled in the native build (it is on every request's path).

**Listeners** (:class:`TlsServerProtocol`, ``tls_mode`` STRICT or PERMISSIVE) accept plain TCP
and run TLS themselves, for three reasons: every failed handshake is seen here, so it is
counted by reason and logged (the loop's TLS drops them silently); PERMISSIVE can look at the
first bytes and decide per connection (``0x16``, a TLS handshake record, or plaintext) without
losing them; and the identity of the verified peer certificate reaches the core as a plain
attribute before the first request. Refused, each counted in :class:`~metamesh.runtime.tls.
TlsStats` and logged (one line per reason per 10 s): plaintext on a STRICT port, garbage
before the ClientHello, a client without a certificate, a certificate from another CA or
expired, one without a SPIFFE id of this trust domain, and a handshake not done within
:data:`HANDSHAKE_TIMEOUT` (a slow TLS client).

**Upstream connections** (:class:`TlsClientProtocol`, ISTIO_MUTUAL / SIMPLE / MUTUAL clusters)
do the same from the client side; :attr:`TlsClientProtocol.handshake` is done when the
connection may carry requests (or failed with the handshake's error).

Once a handshake is done, the plain adapter (:class:`~metamesh.runtime.protocols.
DownstreamProtocol` or ``UpstreamProtocol``) is connected to a :class:`TlsTransport`, which
encrypts what it writes; decrypted bytes are fed to it as they arrive. The core never knows TLS
is there.

Why not the loop's TLS for upstream connections: per request it cost more. uvloop's TLS reads
until ``SSLWantReadError``, an exception built (its message formatted) and caught on every
read, about 2 us each (measured over memory BIOs, OpenSSL 3.0); the reader here stops once
neither the incoming BIO nor the TLS object holds bytes. See ``benchmarks/mesh_tls.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any, Final

from metamesh.runtime.tls import TlsCredentials, reason_of

HANDSHAKE_TIMEOUT: Final = 10.0
_TLS_HANDSHAKE: Final = 0x16
_READ: Final = 1 << 16


class TlsTransport:
    """What the plain adapter writes to: encrypts, and delegates the rest to the socket."""

    def __init__(self, owner: TlsConnection) -> None:
        self._owner = owner
        self._raw: Any = owner.raw

    def write(self, data: bytes) -> None:
        owner = self._owner
        sslobj = owner.sslobj
        if sslobj is not None and not self._raw.is_closing():
            sslobj.write(data)
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
        closing: bool = self._raw.is_closing()
        return closing

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        size: int = self._raw.get_write_buffer_size()
        return size

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peer_principal":
            return self._owner.principal
        if name == "ssl_object":
            return self._owner.sslobj
        return self._raw.get_extra_info(name, default)


class TlsConnection:
    """What both sides share once TLS runs: records in, plaintext to ``inner``; plaintext out
    (through :class:`TlsTransport`), records to the socket."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.raw: Any = None  # the socket's transport, set by connection_made
        self.sslobj: ssl.SSLObject | None = None
        self.principal = ""
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ready = False  # the inner adapter is connected

    # -- asyncio protocol (the parts both sides share) ---------------------------------

    def eof_received(self) -> bool | None:
        if self._ready:
            result: bool | None = self.inner.eof_received()
            return result
        return None

    def pause_writing(self) -> None:
        if self._ready:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._ready:
            self.inner.resume_writing()

    # -- records -------------------------------------------------------------------------

    def read_plaintext(self) -> None:
        """Decrypt what arrived and hand it to the inner adapter in one call."""
        sslobj = self.sslobj
        assert sslobj is not None
        incoming = self._incoming
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
        except ssl.SSLZeroReturnError:  # close_notify: the peer is done sending
            if chunks:
                self.inner.data_received(b"".join(chunks))
            if self.inner.eof_received() is None:
                self.raw.close()
            return
        except ssl.SSLError as exc:
            self.record_error(exc)
            return
        self.flush_outgoing()
        if chunks:
            self.inner.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def record_error(self, exc: ssl.SSLError) -> None:
        """A record that does not decrypt: the connection is closed."""
        self.raw.close()

    def handshake_step(self) -> bool:
        """Advance the handshake with what has arrived, sending what it answers; True once
        done. A refused handshake calls :meth:`handshake_failed` (its alert already sent)."""
        sslobj = self.sslobj
        assert sslobj is not None
        try:
            sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self.flush_outgoing()
            return False
        except ssl.SSLError as exc:
            self.flush_outgoing()  # the alert tells the peer why
            self.handshake_failed(exc)
            return False
        self.flush_outgoing()
        return True

    def handshake_failed(self, exc: ssl.SSLError) -> None:
        self.raw.close()

    def flush_outgoing(self) -> None:
        out = self._outgoing.read()
        if out and not self.raw.is_closing():
            self.raw.write(out)

    def close_notify(self) -> None:
        if self.sslobj is not None and self._ready:
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError):
                self.sslobj.unwrap()
            self.flush_outgoing()


class TlsServerProtocol(TlsConnection):
    """The asyncio protocol of a TLS (STRICT) or PERMISSIVE listener; see the module docstring.

    ``inner`` is the plain adapter the decrypted connection is handed to.
    """

    def __init__(self, credentials: TlsCredentials, mode: str, inner: Any) -> None:
        super().__init__(inner)
        self.credentials = credentials
        self.mode = mode
        self._plain = False  # PERMISSIVE, and the client spoke plaintext
        self._timer: asyncio.TimerHandle | None = None
        self._peer = ""

    def connection_made(self, transport: Any) -> None:
        self.raw = transport
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
        self.read_plaintext()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._ready:
            self.inner.connection_lost(exc)

    def record_error(self, exc: ssl.SSLError) -> None:
        self._refuse("tls_error", str(exc.reason or exc))

    def handshake_failed(self, exc: ssl.SSLError) -> None:
        self._refuse(reason_of(exc), str(exc.reason or exc))

    def _handshake(self) -> bool:
        """Advance the handshake; True once done and the peer is accepted."""
        sslobj = self.sslobj
        assert sslobj is not None
        if not self.handshake_step():
            return False
        credentials = self.credentials
        identity = credentials.identity(sslobj.getpeercert(binary_form=True))
        if identity is None or identity.trust_domain != credentials.trust_domain:
            self._refuse("wrong_identity", "no SPIFFE id of this trust domain in the certificate")
            return False
        self.principal = identity.principal
        credentials.stats.handshakes += 1
        self._connect_inner(TlsTransport(self))
        return True

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


class TlsClientProtocol(TlsConnection):
    """The asyncio protocol of a TLS upstream connection: starts the handshake as soon as TCP
    connects; :attr:`handshake` resolves when ``inner`` is connected (it then gets the
    decrypted stream), or fails with the handshake's error (``ssl.SSLError``, or
    ``ConnectionResetError`` when the peer closed first). The caller bounds the wait."""

    def __init__(self, context: ssl.SSLContext, server_hostname: str | None, inner: Any) -> None:
        super().__init__(inner)
        self.context = context
        self.server_hostname = server_hostname
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.raw = transport
        try:
            self.sslobj = self.context.wrap_bio(
                self._incoming, self._outgoing, False, self.server_hostname
            )
        except ssl.SSLError as exc:
            self._fail(exc)
            return
        except ValueError as exc:  # e.g. a context that checks host names, and no SNI given
            self._fail(OSError(f"TLS: {exc}"))
            return
        self._handshake()

    def data_received(self, data: bytes) -> None:
        if self.sslobj is None:
            return
        self._incoming.write(data)
        if not self._ready and not self._handshake():
            return
        self.read_plaintext()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ready:
            self.inner.connection_lost(exc)
        elif not self.handshake.done():
            reason = "the upstream closed the connection during the TLS handshake"
            self.handshake.set_exception(ConnectionResetError(reason) if exc is None else exc)

    def handshake_failed(self, exc: ssl.SSLError) -> None:
        self._fail(exc)

    def _handshake(self) -> bool:
        if not self.handshake_step():
            return False
        self._ready = True
        self.inner.connection_made(TlsTransport(self))
        if not self.handshake.done():
            self.handshake.set_result(None)
        return True

    def _fail(self, exc: Exception) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc)
        self.raw.close()
