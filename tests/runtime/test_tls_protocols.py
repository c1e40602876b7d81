"""The upstream side's TLS (``TlsClientProtocol``) against a real TLS server on 127.0.0.1.

The server is Python's own TLS stack (``asyncio.start_server`` with an SSL context, OpenSSL's
socket BIO), so the client is checked against an implementation that is not its own: the
handshake resolves ``handshake`` and connects the inner adapter with the verified peer
reachable as ``ssl_object``; bytes of any size come through in both directions; a server
whose certificate comes from another CA, and one that closes before answering, fail the
handshake with the error instead of connecting.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from typing import Any

import pytest

from metamesh.runtime.tls import TlsCredentials
from metamesh.runtime.tls_protocols import TlsClientProtocol
from metamesh.security.ca import CertificateAuthority
from tests.runtime.capture_probe import issue


class Inner:
    """The plain adapter (as UpstreamProtocol): records what the TLS layer hands it."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.data = bytearray()
        self.got = asyncio.Event()
        self.lost = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got.set()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def credentials(ca: CertificateAuthority, account: str) -> TlsCredentials:
    chain, key = issue(ca, account)
    return TlsCredentials(chain, key, ca.root_pem.encode(), "cluster.local")


@pytest.fixture(scope="module")
def mesh() -> tuple[TlsCredentials, TlsCredentials]:
    ca = CertificateAuthority.create("cluster.local", dt.datetime.now(dt.UTC))
    return credentials(ca, "server"), credentials(ca, "client")


async def echo_server(context: ssl.SSLContext) -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1]


async def connect(context: ssl.SSLContext, port: int) -> tuple[TlsClientProtocol, Inner, Any]:
    inner = Inner()
    tls = TlsClientProtocol(context, None, inner)
    transport, _ = await asyncio.get_running_loop().create_connection(
        lambda: tls, "127.0.0.1", port
    )
    return tls, inner, transport


def test_requests_and_replies_of_any_size_cross(
    mesh: tuple[TlsCredentials, TlsCredentials],
) -> None:
    server_creds, client_creds = mesh

    async def run() -> None:
        server, port = await echo_server(server_creds.context)
        tls, inner, transport = await connect(client_creds.client_context, port)
        await asyncio.wait_for(tls.handshake, 10)
        assert inner.transport is not None
        peer = inner.transport.get_extra_info("ssl_object")
        assert client_creds.peer_identity_ok(peer)  # the verified server's SPIFFE id
        sent = b"".join(bytes([i % 251]) * (1 + i * 37 % 3000) for i in range(40)) + b"x" * 70_000
        for i in range(0, len(sent), 9_000):  # many writes, records of every size
            inner.transport.write(sent[i : i + 9_000])
        while len(inner.data) < len(sent):
            inner.got.clear()
            await asyncio.wait_for(inner.got.wait(), 10)
        assert bytes(inner.data) == sent
        inner.transport.close()
        server.close()
        await server.wait_closed()
        assert transport.is_closing()

    asyncio.run(run())


def test_a_server_of_another_ca_fails_the_handshake(
    mesh: tuple[TlsCredentials, TlsCredentials],
) -> None:
    _, client_creds = mesh
    other = CertificateAuthority.create("cluster.local", dt.datetime.now(dt.UTC))
    stranger = credentials(other, "server")

    async def run() -> None:
        server, port = await echo_server(stranger.context)
        tls, inner, transport = await connect(client_creds.client_context, port)
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.wait_for(tls.handshake, 10)
        assert inner.transport is None  # never connected to the core
        assert transport.is_closing()
        server.close()
        await server.wait_closed()

    asyncio.run(run())


def test_a_server_that_closes_before_answering_fails_the_handshake(
    mesh: tuple[TlsCredentials, TlsCredentials],
) -> None:
    _, client_creds = mesh

    async def run() -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(10)  # the ClientHello's first bytes, then close
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tls, inner, _ = await connect(client_creds.client_context, port)
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(tls.handshake, 10)
        assert inner.transport is None and not inner.lost
        server.close()
        await server.wait_closed()

    asyncio.run(run())
