"""``metamesh agent`` in-process against a real CA over gRPC: the socket appears only once the
first certificate is in, serves it (the key never seen by the CA), goes away on stop; a path
that is not a socket is refused with one line and exit code 1; its admin port reports LIVE and
counts a client that is not gRPC on the socket."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import re
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
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


async def with_ca(
    tmp_path: Path,
    socket: Path,
    admin_port: int | None = None,
    check: Callable[[str], Awaitable[None]] | None = None,
) -> tuple[int, str, bytes]:
    now = dt.datetime.now(dt.UTC)
    ca = CertificateAuthority.create(TD, now)
    (tmp_path / "root.pem").write_text(ca.root_pem)
    (tmp_path / "token").write_text("t-sleep\n")
    server = grpc.aio.server()
    CertificateService(ca, TokenBook({"t-sleep": SLEEP})).add_to(server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(ca, now))
    await server.start()
    settings = AgentSettings(
        f"127.0.0.1:{port}",
        tmp_path / "root.pem",
        tmp_path / "token",
        SLEEP,
        socket,
        admin_port=admin_port,
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
            if check is not None:
                await check(out.getvalue())
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


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_agent_admin_port_reports_ready_and_counts_sds_refusals(tmp_path: Path) -> None:
    socket = tmp_path / "sds.sock"
    seen: dict[str, str] = {}

    async def check(out: str) -> None:
        found = re.search(r"agent admin on 127\.0\.0\.1:(\d+)", out)
        assert found, out
        admin = f"http://127.0.0.1:{found[1]}"
        reader, writer = await asyncio.open_unix_connection(str(socket))
        writer.write(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 30)  # not the HTTP/2 preface
        await writer.drain()
        await reader.read()  # closed by the agent
        writer.close()
        seen["ready"] = str(await asyncio.to_thread(get, f"{admin}/ready"))
        seen["stats"] = (await asyncio.to_thread(get, f"{admin}/stats/prometheus"))[1]

    code, _, _ = asyncio.run(with_ca(tmp_path, socket, admin_port=0, check=check))
    assert code == 0
    assert seen["ready"] == "(200, 'LIVE\\n')"
    stats = seen["stats"]
    assert 'metamesh_sds_refused_total{reason="not_http2"} 1.0' in stats
    assert 'metamesh_sds_refused_total{reason="not_through_socket"} 0.0' in stats
    assert "metamesh_agent_certificates_issued_total 1.0" in stats
    assert "metamesh_agent_certificate_request_failures_total 0.0" in stats
    expiry = re.search(r"^metamesh_agent_certificate_expiry_seconds (\S+)$", stats, re.M)
    assert expiry and float(expiry[1]) > dt.datetime.now(dt.UTC).timestamp()
