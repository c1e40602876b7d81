"""Scoped, incremental pushes over real gRPC: Sidecar-scoped nodes, shared encodings, deltas.

The ADS server runs with :class:`~metamesh.control.scoped.ScopedTranslator` (as the control
plane does); grpc.aio clients on 127.0.0.1 play two proxies in different namespaces.
"""

from __future__ import annotations

import asyncio

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from metamesh.control.model import MeshModel
from metamesh.control.scoped import ScopedTranslator
from metamesh.control.translate import CLUSTER_TYPE, LISTENER_TYPE, ProxyNode, translate
from metamesh.xds.encoded import delta_response, encoded, sotw_response
from metamesh.xds.server import AdsServer
from tests.control.test_scope import entry, model, sidecar
from tests.xds.test_server import Client

A = "a.ns-a.svc.cluster.local"
B = "b.ns-b.svc.cluster.local"


def mesh(a_address: str = "127.0.10.1") -> MeshModel:
    return model(
        entry("a", "ns-a", a_address)
        + entry("a2", "ns-a", "127.0.10.3")
        + entry("b", "ns-b", "127.0.10.2")
        + sidecar("istio-system", "[./*]")
    )


def hosts(response: discovery_pb2.DiscoveryResponse) -> set[str]:
    return {cluster_pb2.Cluster.FromString(r.value).name.split("|")[3] for r in response.resources}


async def sotw_scenario() -> None:
    server = AdsServer(ScopedTranslator(), mesh(), quiet=0.01, max_delay=0.05)
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        a, b = Client(channel, "pa", "ns-a"), Client(channel, "pb", "ns-b")
        a.send(CLUSTER_TYPE)
        b.send(CLUSTER_TYPE)
        cds_a, cds_b = await a.recv(), await b.recv()
        assert hosts(cds_a) == {A, "a2.ns-a.svc.cluster.local"} and hosts(cds_b) == {B}
        a.send(CLUSTER_TYPE, version_info=cds_a.version_info, response_nonce=cds_a.nonce)
        b.send(CLUSTER_TYPE, version_info=cds_b.version_info, response_nonce=cds_b.nonce)
        a.send(LISTENER_TYPE)
        lds = await a.recv()
        assert {any_listener.type_url for any_listener in lds.resources} == {
            "type.googleapis.com/envoy.config.listener.v3.Listener"
        }
        a.send(LISTENER_TYPE, version_info=lds.version_info, response_nonce=lds.nonce)
        # a's first service changes subsets' address: only ns-a's proxy hears of it,
        # and its listener type only (clusters and endpoints are unchanged)
        server.set_model(mesh(a_address="127.0.10.9"))
        pushed = await a.recv()
        assert pushed.type_url == LISTENER_TYPE and pushed.version_info == "2"
        with_new = [r for r in pushed.resources if b"127.0.10.9" in r.value]
        assert len(with_new) == 1
        try:
            await asyncio.wait_for(b.call.read(), 0.5)
            raise AssertionError("ns-b's proxy got a push for a change it cannot see")
        except TimeoutError:
            pass
        a.outbox.put_nowait(None)
        b.outbox.put_nowait(None)
    await server.stop()


def test_nodes_in_two_namespaces_get_their_scope_and_only_their_changes() -> None:
    asyncio.run(sotw_scenario())


async def delta_scenario() -> None:
    server = AdsServer(ScopedTranslator(), mesh(), quiet=0.01, max_delay=0.05)
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        a = Client(channel, "pa", "ns-a", delta=True)
        a.send_delta(LISTENER_TYPE)
        first = await a.recv()
        assert sorted(r.name for r in first.resources) == ["127.0.10.1_7000", "127.0.10.3_7000"]
        a.send_delta(LISTENER_TYPE, response_nonce=first.nonce)
        server.set_model(mesh(a_address="127.0.10.9"))
        pushed = await a.recv()
        assert [r.name for r in pushed.resources] == ["127.0.10.9_7000"]  # a2's is not resent
        assert list(pushed.removed_resources) == ["127.0.10.1_7000"]
        a.outbox.put_nowait(None)
    await server.stop()


def test_delta_sends_only_the_changed_resources() -> None:
    asyncio.run(delta_scenario())


def test_encoded_responses_are_the_messages_protobuf_would_build() -> None:
    resources = translate(mesh(), ProxyNode("n", "ns-a"))
    table = encoded(resources, CLUSTER_TYPE)
    assert encoded(resources, CLUSTER_TYPE) is table  # shared by every stream
    sotw = sotw_response("7", CLUSTER_TYPE, "3", table.sotw_body(table.names))
    expected = discovery_pb2.DiscoveryResponse(version_info="7", type_url=CLUSTER_TYPE, nonce="3")
    for cluster in resources.clusters.values():
        packed = any_pb2.Any()
        packed.Pack(cluster, deterministic=True)
        expected.resources.append(packed)
    assert discovery_pb2.DiscoveryResponse.FromString(sotw.SerializeToString()) == expected
    name = table.names[0]
    delta = delta_response("7", CLUSTER_TYPE, "4", [table.delta_entry(name)], ["gone"])
    parsed = discovery_pb2.DeltaDiscoveryResponse.FromString(delta.SerializeToString())
    assert list(parsed.removed_resources) == ["gone"] and parsed.nonce == "4"
    (only,) = parsed.resources
    assert (only.name, only.version) == (name, table.versions[name])
    assert only.resource.value == resources.clusters[name].SerializeToString(deterministic=True)


def test_delta_through_the_shared_table_difference_equals_a_full_comparison() -> None:
    from metamesh.control.translate import ENDPOINT_TYPE, ROUTE_TYPE
    from metamesh.xds.delta import DeltaStreamState

    node = ProxyNode("n", "ns-a")
    models = [mesh(), mesh("127.0.10.9"), mesh("127.0.10.9"), mesh("127.0.10.1")]
    fast, full = DeltaStreamState("fast"), DeltaStreamState("full")
    first = translate(models[0], node)
    for state in (fast, full):
        state.set_snapshot("1", first)
        for url in (CLUSTER_TYPE, LISTENER_TYPE):
            state.on_request(discovery_pb2.DeltaDiscoveryRequest(type_url=url))
        for url, table in ((ENDPOINT_TYPE, first.endpoints), (ROUTE_TYPE, first.routes)):
            subscribe = [*table, "missing"]
            state.on_request(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=url, resource_names_subscribe=subscribe
                )
            )
    for version, each in enumerate(models[1:], start=2):
        resources = translate(each, node)
        for delta in full._delta.values():
            delta.synced = None  # compare every name
        got = [
            ([r.name for r in x.resources], list(x.removed_resources))
            for x in fast.set_snapshot(str(version), resources)
        ]
        want = [
            ([r.name for r in x.resources], list(x.removed_resources))
            for x in full.set_snapshot(str(version), resources)
        ]
        assert got == want
        assert all(d.synced is not None for d in fast._delta.values())
