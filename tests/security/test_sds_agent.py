"""``metamesh agent`` in-process against a real CA over gRPC: the socket appears only once the
first certificate is in, serves it (the key never seen by the CA), goes away on stop; a path
that is not a socket is refused with one line and exit code 1."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from pathlib import Path

import grpc
import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from metamesh.security.ca import CertificateAuthority
from metamesh.security.cert_service import CertificateService, TokenBook, server_credentials
from metamesh.security.sds_agent import AgentSettings, serve_agent
from metamesh.security.spiffe import SpiffeId

TD = "cluster.local"
SLEEP = SpiffeId(TD, "demo", "sleep")


async def with_ca(tmp_path: Path, socket: Path) -> tuple[int, str, bytes]:
    now = dt.datetime.now(dt.UTC)
    ca = CertificateAuthority.create(TD, now)
    (tmp_path / "root.pem").write_text(ca.root_pem)
    (tmp_path / "token").write_text("t-sleep\n")
    server = grpc.aio.server()
    CertificateService(ca, TokenBook({"t-sleep": SLEEP})).add_to(server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(ca, now))
    await server.start()
    settings = AgentSettings(
        f"127.0.0.1:{port}", tmp_path / "root.pem", tmp_path / "token", SLEEP, socket
    )
    out, stop = io.StringIO(), asyncio.Event()
    agent = asyncio.create_task(serve_agent(settings, out=out, stop=stop))
    key = b""
    try:
        for _ in range(200):
            if "SDS on unix:" in out.getvalue() or agent.done():
                break
            await asyncio.sleep(0.05)
        if not agent.done():
            async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
                stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
                request = discovery_pb2.DiscoveryRequest(resource_names=["default"])
                response = await stub.FetchSecrets(request)
                secret = secret_pb2.Secret()
                response.resources[0].Unpack(secret)
                key = secret.tls_certificate.private_key.inline_bytes
    finally:
        stop.set()
        code = await agent
        await server.stop(0)
    return code, out.getvalue(), key


def test_the_agent_serves_its_certificate_then_removes_the_socket(tmp_path: Path) -> None:
    socket = tmp_path / "sds.sock"
    code, out, key = asyncio.run(with_ca(tmp_path, socket))
    assert code == 0 and f"agent for {SLEEP}: SDS on unix:{socket}" in out
    assert key.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert not socket.exists()


def test_a_path_that_is_not_a_socket_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    socket = tmp_path / "notes.txt"
    socket.write_text("keep")
    code, _, _ = asyncio.run(with_ca(tmp_path, socket))
    assert code == 1 and socket.read_text() == "keep"
    assert f"metamesh agent: cannot serve SDS on {socket}: " in capsys.readouterr().err
