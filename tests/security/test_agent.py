"""The identity agent against a real CA over gRPC: token first, certificate for renewals, and
the token again once its certificate has expired (a proxy stopped past the lifetime)."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc

from metamesh.security.agent import IdentityAgent
from metamesh.security.ca import CertificateAuthority
from metamesh.security.cert_service import CertificateService, TokenBook, server_credentials
from metamesh.security.spiffe import SpiffeId

TD = "cluster.local"
SLEEP = SpiffeId(TD, "demo", "sleep")


def test_token_then_certificate_then_token_after_expiry() -> None:
    async def scenario() -> None:
        now = dt.datetime.now(dt.UTC)
        ca = CertificateAuthority.create(TD, now)
        service = CertificateService(ca, TokenBook({"t-sleep": SLEEP}))
        server = grpc.aio.server()
        service.add_to(server)
        port = server.add_secure_port("127.0.0.1:0", server_credentials(ca, now))
        await server.start()
        offset = dt.timedelta()
        got: list[bytes] = []

        async def on_certificate(chain: bytes, key: bytes) -> None:
            got.append(chain)

        agent = IdentityAgent(
            f"127.0.0.1:{port}",
            ca.root_pem,
            SLEEP,
            on_certificate,
            token="t-sleep",
            ttl=dt.timedelta(hours=1),
            clock=lambda: dt.datetime.now(dt.UTC) + offset,
        )
        try:
            await agent._renew()  # the first: with the token
            await agent._renew()  # a renewal: with the certificate
            offset = dt.timedelta(hours=2)  # the agent was away past the certificate's end
            await agent._renew()
        finally:
            await server.stop(0)
        assert len(got) == 3
        assert service.counts == {"issued_token": 2, "issued_cert": 1}

    asyncio.run(scenario())
