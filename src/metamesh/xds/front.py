"""The public side of the control connections: TLS (or a Unix socket) in front of a gRPC server.

grpc's Python server terminates TLS in its C core, which rules it out for the ADS port and the
SDS socket on two counts: it can either require a client certificate or not ask for one (not
ask and verify one if given, which a proxy authenticating with a bootstrap token before it has
a certificate needs), and a handshake or a connection it refuses never reaches Python (no
counter, only grpc's own log). So :class:`GrpcFront` accepts the connections itself:

- **TLS** (``context`` given; the ADS port): the handshake runs in asyncio with the control
  plane's server certificate and the mesh root for client certificates, asked for but
  optional (``CERT_OPTIONAL``: one that is given must verify). Plaintext, garbage before the
  ClientHello, a certificate from another CA and a handshake not done in ``handshake_timeout``
  are refused: counted by reason in :attr:`GrpcFront.refused` and logged (once per reason per
  10 s with the count, so a flood cannot flood the log).
- **Plain** (the SDS Unix socket): the first 24 bytes must be HTTP/2's client preface, what
  every gRPC client sends first; anything else is refused the same way.

An accepted connection is relayed byte for byte to the gRPC server, which listens on
127.0.0.1 on an ephemeral port without TLS. Before relaying, the front records the local port
of its connection to the backend with what it learned (:class:`Peer`: the client's address and
its verified certificate); the gRPC handlers look the caller up by ``context.peer()``
(:meth:`GrpcFront.peer_of`). A connection made to the backend port directly, not through the
front, has no record and the handlers refuse it, so the loopback port grants nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509

from metamesh.xds.sanitize import printable

log = logging.getLogger("metamesh.xds.front")

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HANDSHAKE_TIMEOUT: Final = 10.0
LOG_EVERY: Final = 10.0
_CHUNK: Final = 1 << 16


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is at the other end of a relayed connection."""

    address: str
    certificate: x509.Certificate | None = None


def refusal_reason(exc: BaseException) -> str:
    """A short reason for a failed TLS handshake (the counters' label)."""
    text_of = str(exc)
    if isinstance(exc, TimeoutError) or "taking longer than" in text_of:
        return "handshake_timeout"
    text = f"{getattr(exc, 'reason', '') or ''} {exc}".upper()
    if "CERTIFICATE_VERIFY_FAILED" in text or "UNKNOWN_CA" in text or "EXPIRED" in text:
        return "untrusted_certificate"
    if "WRONG_VERSION" in text or "HTTP_REQUEST" in text or "UNKNOWN_PROTOCOL" in text:
        return "not_tls"
    if ("UNEXPECTED" in text and "EOF" in text) or isinstance(exc, ConnectionError):
        return "closed_in_handshake"
    return "handshake_failed"


class GrpcFront:
    """See the module docstring. ``name`` prefixes the log lines ("ADS", "SDS")."""

    def __init__(
        self,
        name: str,
        backend_port: int,
        context: ssl.SSLContext | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.name = name
        self.backend_port = backend_port
        self.context = context
        self.handshake_timeout = handshake_timeout
        self.accepted = 0
        self.refused: Counter[str] = Counter()
        self._peers: dict[int, Peer] = {}
        self._logged_at: dict[str, float] = {}
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start_tcp(self, host: str, port: int) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family, backlog=128)
        self._listen(listener)
        bound: int = listener.getsockname()[1]
        return bound

    async def start_unix(self, path: Path) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(128)
        self._listen(listener)

    def _listen(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self._listener = listener
        self._accepting = asyncio.create_task(self._accept_loop(listener))

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def peer_of(self, grpc_peer: str) -> Peer | None:
        """The peer of the relayed connection a gRPC handler sees as ``grpc_peer``
        (``ipv4:127.0.0.1:PORT``); None when it did not come through this front."""
        address, _, port = grpc_peer.rpartition(":")
        if address not in ("ipv4:127.0.0.1", "ipv6:[::1]") or not port.isdigit():
            return None
        return self._peers.get(int(port))

    def refuse(self, reason: str, detail: str, peer: str) -> None:
        """Count and (rate-limited) log one refused client."""
        self.refused[reason] += 1
        now = time.monotonic()
        if now - self._logged_at.get(reason, -1e9) >= LOG_EVERY:
            self._logged_at[reason] = now
            log.warning(
                "%s: refused %s: %s (%s; %d so far, logged once per %.0f s)",
                self.name,
                peer,
                reason,
                printable(detail, 200),
                self.refused[reason],
                LOG_EVERY,
            )

    # --- one connection -----------------------------------------------------------------

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:  # out of descriptors: wait, keep serving the others
                log.error("%s: accept: %s", self.name, exc)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        """TLS from the first byte (``connect_accepted_socket``: nothing read before the
        handshake, which reports its failure here), or the HTTP/2 preface, then the relay."""
        loop = asyncio.get_running_loop()
        name = conn.getpeername() if conn.family != socket.AF_UNIX else ""
        address = f"{name[0]}:{name[1]}" if isinstance(name, tuple) else "unix socket client"
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=self.context,
                ssl_handshake_timeout=self.handshake_timeout if self.context else None,
            )
        except OSError as exc:  # ssl.SSLError, a reset, the handshake timeout (aborted)
            conn.close()
            self.refuse(refusal_reason(exc), str(exc) or type(exc).__name__, address)
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            first = b""
            if self.context is None:
                first = await asyncio.wait_for(
                    reader.readexactly(len(PREFACE)), self.handshake_timeout
                )
                if first != PREFACE:
                    self.refuse("not_http2", f"starts with {first[:16]!r}", address)
                    return
            sslobj = writer.get_extra_info("ssl_object")
            der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
            peer = Peer(address, x509.load_der_x509_certificate(der) if der else None)
            self.accepted += 1
            await self._relay(reader, writer, peer, first)
        except TimeoutError:
            self.refuse("handshake_timeout", "no HTTP/2 preface in time", address)
        except asyncio.IncompleteReadError as exc:
            self.refuse("not_http2", f"closed after {len(exc.partial)} bytes", address)
        finally:
            writer.close()

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Peer,
        first: bytes,
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
        except OSError as exc:
            log.error("%s: backend 127.0.0.1:%d: %s", self.name, self.backend_port, exc)
            return
        local_port: int = up_writer.get_extra_info("sockname")[1]
        self._peers[local_port] = peer
        try:
            up_writer.write(first)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            del self._peers[local_port]
            up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
        else:
            writer.close()
