"""The SDS server over its Unix socket with a real gRPC client: mode 0600, the three methods,
a rotation pushed on open streams, names not served answered and counted."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from metamesh.xds.sds import SdsServer
from metamesh.xds.sds_state import SECRET_TYPE


async def _requests(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    while (item := await queue.get()) is not None:
        yield item


def test_streams_fetch_and_rotation_over_the_socket(tmp_path: Path) -> None:
    asyncio.run(_streams_fetch_and_rotation(tmp_path))


async def _streams_fetch_and_rotation(tmp_path: Path) -> None:
    server = SdsServer()
    server.update(b"chain1", b"key1", b"root")
    path = tmp_path / "sds.sock"
    await server.start(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
            stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
            queue: asyncio.Queue[Any] = asyncio.Queue()
            call = stub.StreamSecrets(_requests(queue))
            queue.put_nowait(
                discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE, resource_names=["default"])
            )
            first = await call.read()
            queue.put_nowait(
                discovery_pb2.DiscoveryRequest(
                    type_url=SECRET_TYPE,
                    resource_names=["default"],
                    version_info=first.version_info,
                    response_nonce=first.nonce,
                )
            )
            server.update(b"chain2", b"key2", b"root")
            second = await call.read()
            assert (first.version_info, second.version_info) == ("1", "2")
            fetched = await stub.FetchSecrets(
                discovery_pb2.DiscoveryRequest(resource_names=["ROOTCA"])
            )
            assert len(fetched.resources) == 1
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.FetchSecrets(discovery_pb2.DiscoveryRequest(resource_names=["x"]))
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            queue.put_nowait(None)
        assert server.counts["pushes"] == 1 and server.counts["acks"] == 1
        assert server.counts["unknown_secret"] == 1
    finally:
        await server.stop(0)
    assert not path.exists()


def test_a_path_that_is_not_a_socket_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "important.txt"
    path.write_text("keep me")
    with pytest.raises(OSError, match="not a socket"):
        asyncio.run(SdsServer().start(path))
    assert path.read_text() == "keep me"


def test_garbage_on_the_socket_and_the_loopback_port_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    asyncio.run(_garbage(tmp_path))
    assert "SDS: refused unix socket client: not_http2" in caplog.text
    assert "SDS: refused" in caplog.text and "not through the socket" in caplog.text


async def _garbage(tmp_path: Path) -> None:
    server = SdsServer()
    server.update(b"chain1", b"key1", b"root")
    path = tmp_path / "sds.sock"
    await server.start(path)
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await reader.read() == b""  # closed
        writer.close()
        assert server.front is not None and server.front.refused["not_http2"] == 1
        request = discovery_pb2.DiscoveryRequest(resource_names=["default"])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.front.backend_port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await sds_pb2_grpc.SecretDiscoveryServiceStub(ch).FetchSecrets(request)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert server.counts["not_through_socket"] == 1
        async with grpc.aio.insecure_channel(f"unix:{path}") as channel:  # others still served
            fetched = await sds_pb2_grpc.SecretDiscoveryServiceStub(channel).FetchSecrets(request)
            assert len(fetched.resources) == 1
    finally:
        await server.stop(0)
