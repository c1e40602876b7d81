"""The server side's TLS record handling (``TlsServerProtocol``) over memory BIOs, no sockets.

The plaintext reader stops as soon as nothing is left to decrypt instead of reading until
``SSLWantReadError``; these check it still hands over every byte whatever the record
boundaries: many records in one read, a record cut across reads, one byte at a time, a
close_notify right behind the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from typing import Any

import pytest

from metamesh.runtime.tls import TlsCredentials
from metamesh.runtime.tls_protocols import TlsServerProtocol
from metamesh.security.ca import CertificateAuthority
from tests.runtime.capture_probe import issue


class Raw:
    """The socket side: what the server writes, for the client to read."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


class Inner:
    """The plain adapter: collects the decrypted bytes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool | None:
        self.eof = True
        return None


@pytest.fixture(scope="module")
def pki() -> tuple[TlsCredentials, ssl.SSLContext]:
    ca = CertificateAuthority.create("cluster.local", dt.datetime.now(dt.UTC))
    server_cert, server_key = issue(ca, "server")
    client_cert, client_key = issue(ca, "client")
    creds = TlsCredentials(server_cert, server_key, ca.root_pem.encode(), "cluster.local")
    client = TlsCredentials(client_cert, client_key, ca.root_pem.encode(), "cluster.local")
    return creds, client.client_context


async def connected(
    pki: tuple[TlsCredentials, ssl.SSLContext],
) -> tuple[TlsServerProtocol, Inner, Raw, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    creds, client_ctx = pki
    inner, raw = Inner(), Raw()
    server = TlsServerProtocol(creds, "STRICT", inner)
    server.connection_made(raw)  # type: ignore[arg-type]
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    for _ in range(10):  # handshake by hand: client bytes in, server bytes back
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        else:
            if server.principal:
                break
        server.data_received(c_out.read())
        c_in.write(bytes(raw.out))
        raw.out.clear()
    assert server.principal == "cluster.local/ns/default/sa/client"
    return server, inner, raw, client, c_in, c_out


def records(client: ssl.SSLObject, out: ssl.MemoryBIO, payloads: list[bytes]) -> bytes:
    for p in payloads:
        client.write(p)  # one or more records each
    return out.read()


@pytest.mark.parametrize("step", [None, 1, 7, 100, 5000])
def test_every_byte_arrives_whatever_the_cuts(
    pki: tuple[TlsCredentials, ssl.SSLContext], step: int | None
) -> None:
    async def run() -> None:
        server, inner, _, client, _, out = await connected(pki)
        payloads = [bytes([i % 251]) * (1 + i * 37 % 3000) for i in range(40)]
        payloads.append(b"x" * 70_000)  # more than one record (16 KB each) and than _READ
        wire = records(client, out, payloads)
        if step is None:
            server.data_received(wire)  # every record in one read
        else:
            for i in range(0, len(wire), step):
                server.data_received(wire[i : i + step])
        assert bytes(inner.data) == b"".join(payloads)

    asyncio.run(run())


def test_close_notify_behind_the_data(pki: tuple[TlsCredentials, ssl.SSLContext]) -> None:
    async def run() -> None:
        server, inner, raw, client, _, out = await connected(pki)
        client.write(b"last request")
        with contextlib.suppress(ssl.SSLWantReadError):
            client.unwrap()
        server.data_received(out.read())
        assert bytes(inner.data) == b"last request"
        assert not raw.closed
        server.eof_received()  # the FIN behind it reaches the plain adapter
        assert inner.eof

    asyncio.run(run())
