"""The ADS server over real gRPC on 127.0.0.1, driven by grpc.aio client stubs (SotW and delta)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from metamesh.control.model import MeshModel
from metamesh.control.translate import CLUSTER_TYPE, ENDPOINT_TYPE, translate
from metamesh.xds.server import AdsServer, node_identity
from tests.control.cases import DUBBO, THRIFT, example_model


def node(node_id: str, namespace: str | None = None) -> Any:
    n = base_pb2.Node(id=node_id)
    if namespace:
        n.metadata.update({"NAMESPACE": namespace, "LABELS": {"app": "x"}})
    return n


class Client:
    """One ADS stream: ``send`` requests, ``recv`` responses (``delta`` picks the method)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        node_id: str,
        namespace: str | None = None,
        *,
        delta: bool = False,
    ):
        self.node = node(node_id, namespace)
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self.call = method(self._requests())

    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            item = await self.outbox.get()
            if item is None:
                return
            yield item

    def send(self, type_url: str, names: tuple[str, ...] = (), **kw: Any) -> None:
        req = discovery_pb2.DiscoveryRequest(
            node=self.node, type_url=type_url, resource_names=list(names), **kw
        )
        self.outbox.put_nowait(req)

    def send_delta(self, type_url: str, subscribe: tuple[str, ...] = (), **kw: Any) -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(
            node=self.node, type_url=type_url, resource_names_subscribe=list(subscribe), **kw
        )
        self.outbox.put_nowait(req)

    async def recv(self) -> Any:
        return await asyncio.wait_for(self.call.read(), 5)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 5 s")


async def scenario() -> None:
    server = AdsServer(translate, example_model(), quiet=0.05, max_delay=0.2)
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        meshwide = Client(channel, "a")
        meshwide.send(CLUSTER_TYPE)
        cds = await meshwide.recv()
        assert (cds.type_url, cds.version_info, len(cds.resources)) == (CLUSTER_TYPE, "1", 6)
        meshwide.send(CLUSTER_TYPE, version_info="1", response_nonce=cds.nonce)
        meshwide.send(ENDPOINT_TYPE, (f"outbound|9090|v1|{THRIFT}",))
        eds = await meshwide.recv()
        assert eds.type_url == ENDPOINT_TYPE and len(eds.resources) == 1
        meshwide.send(
            ENDPOINT_TYPE,
            (f"outbound|9090|v1|{THRIFT}",),
            version_info="0",
            response_nonce=eds.nonce,
            error_detail={"message": "rejected on purpose"},
        )

        # a second node, in another namespace, has its own stream and snapshot
        other = Client(channel, "b", namespace="elsewhere")
        other.send(CLUSTER_TYPE)
        assert len((await other.recv()).resources) == 6

        # a burst of model changes becomes one push with one new version
        model = example_model()
        for _ in range(5):
            server.set_model(MeshModel({THRIFT: model.services[THRIFT]}))
        pushed = await meshwide.recv()
        assert (pushed.type_url, pushed.version_info, len(pushed.resources)) == (
            CLUSTER_TYPE,
            "2",
            3,
        )
        meshwide.send(CLUSTER_TYPE, version_info="2", response_nonce=pushed.nonce)
        assert (await other.recv()).version_info == "2"
        await until(lambda: server.acked_version("a", CLUSTER_TYPE) == "2")
        status = server.status()["a"]
        assert status[ENDPOINT_TYPE]["nack"] == {"version": "1", "error": "rejected on purpose"}
        assert server.nacks() == [("a", ENDPOINT_TYPE, "1", "rejected on purpose")]
        meshwide.outbox.put_nowait(None)
        other.outbox.put_nowait(None)
    await server.stop()


def test_ads_over_grpc() -> None:
    asyncio.run(scenario())


def test_node_identity_from_metadata_and_istio_id() -> None:
    identity = node_identity(node("n1", "ns"))
    assert (identity.node_id, identity.namespace, identity.labels) == ("n1", "ns", (("app", "x"),))
    istio = node_identity(base_pb2.Node(id="sidecar~10.0.0.1~pod-1.shop~shop.svc.cluster.local"))
    assert (istio.namespace, istio.instance_ips) == ("shop", ("10.0.0.1",))
    assert node_identity(base_pb2.Node(id="plain")).namespace is None


async def delta_scenario() -> None:
    server = AdsServer(translate, example_model(), quiet=0.05, max_delay=0.2)
    port = await server.start()
    v1, v2 = f"outbound|9090|v1|{THRIFT}", f"outbound|9090|v2|{THRIFT}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = Client(channel, "d", delta=True)
        client.send_delta(CLUSTER_TYPE)
        cds = await client.recv()
        assert (cds.type_url, cds.system_version_info, len(cds.resources)) == (CLUSTER_TYPE, "1", 6)
        held = {r.name: r.version for r in cds.resources}
        client.send_delta(CLUSTER_TYPE, response_nonce=cds.nonce)
        client.send_delta(ENDPOINT_TYPE, (v1,))
        eds = await client.recv()
        assert [r.name for r in eds.resources] == [v1]
        client.send_delta(
            ENDPOINT_TYPE,
            (v2,),
            response_nonce=eds.nonce,
            error_detail={"message": "rejected on purpose"},
        )
        assert [r.name for r in (await client.recv()).resources] == [v2]

        # one model change: the dubbo clusters leave, thrift's are unchanged
        model = example_model()
        server.set_model(MeshModel({THRIFT: model.services[THRIFT]}))
        pushed = await client.recv()
        assert (pushed.type_url, pushed.system_version_info) == (CLUSTER_TYPE, "2")
        assert list(pushed.resources) == [] and len(pushed.removed_resources) == 3
        assert all(DUBBO in name for name in pushed.removed_resources)
        client.send_delta(CLUSTER_TYPE, response_nonce=pushed.nonce)
        await until(lambda: server.acked_version("d", CLUSTER_TYPE) == "2")
        status = server.status()["d"]
        assert status[CLUSTER_TYPE]["delta"] is True
        assert status[ENDPOINT_TYPE]["nack"] == {"version": "1", "error": "rejected on purpose"}
        assert server.nacks() == [("d", ENDPOINT_TYPE, "1", "rejected on purpose")]
        client.outbox.put_nowait(None)

        # a reconnect that declares what it holds gets only the removals
        again = Client(channel, "d", delta=True)
        again.send_delta(CLUSTER_TYPE, initial_resource_versions=held)
        resync = await again.recv()
        assert list(resync.resources) == [] and list(resync.removed_resources) == list(
            pushed.removed_resources
        )
        again.outbox.put_nowait(None)
    await server.stop()


def test_delta_ads_over_grpc() -> None:
    asyncio.run(delta_scenario())


async def hostile_scenario(caplog: Any) -> None:
    server = AdsServer(translate, example_model(), quiet=0.05, max_delay=0.2)
    port = await server.start()
    forged = "evil\n2026-12-05 12:00:00 INFO metamesh: all good"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = Client(channel, forged)
        client.send(CLUSTER_TYPE)
        cds = await client.recv()
        for i in range(20):  # 20 NACKs of 256 KB each, on the same node and type
            client.send(
                CLUSTER_TYPE,
                version_info="0",
                response_nonce=cds.nonce,
                error_detail={"message": f"{i}\n" + "x" * 256 * 1024},
            )
        await until(lambda: "19\\n" in caplog.text)
        client.outbox.put_nowait(None)
    await server.stop()
    [(node_id, type_url, _, error)] = server.nacks()  # only the latest per node and type
    assert node_id == forged and type_url == CLUSTER_TYPE
    assert error.startswith("19\n") and len(error) < 5000  # bounded
    nack_lines = [r.getMessage() for r in caplog.records if "NACK" in r.getMessage()]
    assert len(nack_lines) == 20
    for line in nack_lines:
        assert "\n" not in line and len(line) < 1200  # escaped, truncated
        assert "evil\\n2026-12-05" in line


def test_nacks_are_bounded_and_client_text_is_escaped_in_logs(caplog: Any) -> None:
    """A client cannot grow the server's memory with NACKs or forge log lines."""
    caplog.set_level("WARNING", logger="metamesh")
    asyncio.run(hostile_scenario(caplog))
