"""ADS over TLS with authenticated streams: real gRPC clients (grpc.aio, and metamesh's own
:class:`XdsClient`) and raw sockets against :meth:`AdsServer.start` with ``tls``.

Admitted: a client certificate from the mesh CA (mutual TLS), a bootstrap token in the
metadata; the node is held to that identity (an unclaimed namespace is filled in, another
workload's refused). Refused, each counted and logged while good clients keep being served: no
credentials, an unknown token, plaintext gRPC, garbage, a certificate from another CA, a slow
handshake, and a connection to the gRPC server's loopback port that bypasses the TLS front.
A client that trusts another root does not accept the control plane.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from metamesh.control.model import MeshModel
from metamesh.control.to_proxy import to_snapshot
from metamesh.control.translate import CLUSTER_TYPE, translate
from metamesh.proxy.config import Snapshot
from metamesh.runtime.xds_client import XdsClient, XdsTls
from metamesh.runtime.xds_state import resources_to_snapshot
from metamesh.security.ca import CertificateAuthority
from metamesh.security.cert_service import control_plane_certificate
from metamesh.security.csr import new_key_and_csr
from metamesh.security.spiffe import SpiffeId
from metamesh.xds.ads_auth import AdsTls, server_context
from metamesh.xds.resources import ProxyNode, XdsResources
from metamesh.xds.server import AdsServer
from tests.control.cases import example_model

TD = "cluster.local"
SLEEP = SpiffeId(TD, "demo", "sleep")
NOW = dt.datetime.now(dt.UTC)


def credentials(ca: CertificateAuthority, who: SpiffeId) -> tuple[bytes, bytes]:
    pair = new_key_and_csr(who)
    return "".join(ca.sign(pair.csr_pem, who, NOW)[:-1]).encode(), pair.key_pem


class Mesh:
    """An :class:`AdsServer` on TLS with the CA's server certificate and one token."""

    def __init__(self) -> None:
        self.ca = CertificateAuthority.create(TD, NOW)
        self.root = self.ca.root_pem.encode()
        self.nodes: list[ProxyNode] = []
        chain, key = control_plane_certificate(self.ca, NOW, ("127.0.0.1",))
        tokens = {"t-sleep": SLEEP}
        self.tls = AdsTls(server_context(chain, key, self.root), TD, tokens.get)

        def seen(model: MeshModel, node: ProxyNode) -> XdsResources:
            self.nodes.append(node)
            return translate(model, node)

        self.server = AdsServer(seen, example_model())
        self.port = 0

    async def __aenter__(self) -> Mesh:
        self.port = await self.server.start("127.0.0.1", 0, tls=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(0)

    @property
    def front(self) -> Any:
        assert self.server.front is not None
        return self.server.front

    async def first_response(
        self,
        cert: tuple[bytes, bytes] | None = None,
        token: str | None = None,
        namespace: str | None = None,
        root: bytes | None = None,
        target: str | None = None,
    ) -> Any:
        """The first CDS response of a stream, or the gRPC error."""
        if target is None:
            chain, key = cert or (None, None)
            creds = grpc.ssl_channel_credentials(root or self.root, key, chain)
            channel = grpc.aio.secure_channel(f"127.0.0.1:{self.port}", creds)
        else:
            channel = grpc.aio.insecure_channel(target)
        node = base_pb2.Node(id="proxy-1")
        if namespace:
            node.metadata.update({"NAMESPACE": namespace})
        request = discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER_TYPE)
        metadata = (("authorization", f"Bearer {token}"),) if token else None

        async def requests() -> AsyncIterator[Any]:
            yield request
            await asyncio.sleep(30)

        async with channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.StreamAggregatedResources(requests(), metadata=metadata)
            return await asyncio.wait_for(call.read(), 10)


def test_a_mesh_certificate_or_a_token_is_admitted_and_held_to_its_workload() -> None:
    async def scenario() -> None:
        async with Mesh() as mesh:
            cert = credentials(mesh.ca, SLEEP)
            response = await mesh.first_response(cert=cert)
            assert response.type_url == CLUSTER_TYPE and response.resources
            assert (mesh.nodes[-1].namespace, mesh.nodes[-1].service_account) == ("demo", "sleep")
            response = await mesh.first_response(token="t-sleep", namespace="demo")
            assert response.resources
            assert mesh.nodes[-1].namespace == "demo"
            assert mesh.front.accepted == 2 and not mesh.server.refused

    asyncio.run(scenario())


def test_unauthenticated_and_other_workloads_streams_are_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with Mesh() as mesh:
            for attempt, expected in (
                (mesh.first_response(), grpc.StatusCode.UNAUTHENTICATED),
                (mesh.first_response(token="guess"), grpc.StatusCode.UNAUTHENTICATED),
                (
                    mesh.first_response(cert=credentials(mesh.ca, SLEEP), namespace="prod"),
                    grpc.StatusCode.PERMISSION_DENIED,
                ),
                (
                    mesh.first_response(target=f"127.0.0.1:{mesh.front.backend_port}"),
                    grpc.StatusCode.UNAUTHENTICATED,
                ),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await attempt
                assert refused.value.code() == expected
            assert mesh.server.refused == {"unauthenticated": 3, "wrong_node": 1}
            assert (await mesh.first_response(token="t-sleep")).resources  # others still served

    asyncio.run(scenario())
    assert "ADS: refused node proxy-1: no client certificate and no bootstrap token" in caplog.text
    assert "claims namespace 'prod', authenticated as spiffe://cluster.local/ns/demo/sa/sleep" in (
        caplog.text
    )
    assert "did not come through the TLS port" in caplog.text


def test_bad_clients_are_refused_at_the_tls_port(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with Mesh() as mesh:
            mesh.front.handshake_timeout = 0.5
            other = CertificateAuthority.create(TD, NOW)
            with pytest.raises(grpc.aio.AioRpcError):  # a certificate from another CA
                await mesh.first_response(cert=credentials(other, SLEEP))
            with pytest.raises(grpc.aio.AioRpcError):  # plaintext gRPC
                await mesh.first_response(target=f"127.0.0.1:{mesh.port}")
            for data in (b"\x00garbage\xff" * 10, b""):  # garbage; nothing at all (slow)
                reader, writer = await asyncio.open_connection("127.0.0.1", mesh.port)
                writer.write(data)
                await asyncio.wait_for(reader.read(), 5)  # closed (after an alert, maybe)
                writer.close()
            refused = dict(mesh.front.refused)
            assert refused.pop("untrusted_certificate", 0) >= 1, mesh.front.refused
            assert refused.pop("not_tls", 0) >= 2, mesh.front.refused
            assert refused.pop("handshake_timeout", 0) >= 1, mesh.front.refused
            # a client that trusts another root does not accept the control plane
            with pytest.raises(grpc.aio.AioRpcError):
                await mesh.first_response(token="t-sleep", root=other.root_pem.encode())
            assert (await mesh.first_response(token="t-sleep")).resources

    asyncio.run(scenario())
    assert "ADS: refused 127.0.0.1:" in caplog.text and ": not_tls (" in caplog.text
    assert ": handshake_timeout (" in caplog.text


def test_the_proxys_xds_client_with_its_token_then_its_certificate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def follow(mesh: Mesh, tls: XdsTls) -> Snapshot:
        applied: list[Snapshot] = []

        async def apply(snapshot: Snapshot) -> None:
            applied.append(snapshot)

        target = f"127.0.0.1:{mesh.port}"
        convert = resources_to_snapshot(to_snapshot)
        client = XdsClient(target, ProxyNode("proxy-1"), convert, apply, tls=tls)
        task = asyncio.create_task(client.run())
        await asyncio.wait_for(client.changed.wait(), 10)
        client.stop()
        await task
        return applied[0]

    async def scenario() -> None:
        async with Mesh() as mesh:
            caplog.set_level("INFO", "metamesh.xds.server")
            first = await follow(mesh, XdsTls(mesh.root, lambda: None, token="t-sleep"))
            cert = credentials(mesh.ca, SLEEP)
            later = await follow(mesh, XdsTls(mesh.root, lambda: cert, token="t-sleep"))
            assert first.clusters and later.clusters == first.clusters
            assert mesh.nodes[-1].namespace == "demo" and not mesh.server.refused

    asyncio.run(scenario())
    assert f"ADS: node proxy-1 is {SLEEP} (token)" in caplog.text
    assert f"ADS: node proxy-1 is {SLEEP} (certificate)" in caplog.text


def test_openssl_sees_the_control_planes_certificate(tmp_path: Path) -> None:
    """A real TLS client (Python's ssl, OpenSSL) verifies the port against the mesh root and
    the dialled address; the certificate names the control plane's SPIFFE id."""

    async def scenario() -> dict[str, Any]:
        async with Mesh() as mesh:
            context = ssl.create_default_context(cadata=mesh.ca.root_pem)
            context.set_alpn_protocols(["h2"])
            _, writer = await asyncio.open_connection(
                "127.0.0.1", mesh.port, ssl=context, server_hostname="127.0.0.1"
            )
            cert: dict[str, Any] = writer.get_extra_info("peercert")
            writer.close()
            return cert

    cert = asyncio.run(scenario())
    sans = cert["subjectAltName"]
    assert ("IP Address", "127.0.0.1") in sans
    assert ("URI", "spiffe://cluster.local/ns/metamesh-system/sa/metamesh-control-plane") in sans
