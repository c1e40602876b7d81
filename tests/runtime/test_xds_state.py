"""The proxy's ADS state machine without sockets: against the server's own sans-IO StreamState.

``pump`` moves requests from :class:`ClientState` into :class:`StreamState` and responses
back until both sides are quiet, exactly what the two gRPC adapters do, so subscription,
ACK/NACK and consistency rules are checked message by message.
"""

from __future__ import annotations

from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from udpa.type.v1 import typed_struct_pb2

from metamesh.control.model import MeshModel
from metamesh.control.to_proxy import to_snapshot
from metamesh.control.translate import translate
from metamesh.proxy.config import Snapshot
from metamesh.runtime.xds_client import check_snapshot
from metamesh.runtime.xds_state import ClientState, resources_to_snapshot
from metamesh.xds.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    ProxyNode,
)
from metamesh.xds.streams import StreamState
from tests.control.cases import THRIFT, example_model, model_of, service_entry

CONVERT = resources_to_snapshot(to_snapshot)


def pump(
    client: ClientState, server: StreamState, requests: list[Any]
) -> tuple[list[Snapshot], list[str]]:
    """Exchange messages until quiet; the snapshots the client produced and its NACKs."""
    snapshots: list[Snapshot] = []
    nacks: list[str] = []
    responses: list[Any] = []
    for _ in range(100):
        for request in requests:
            responses.extend(server.on_request(request))
        requests = []
        if not responses:
            return snapshots, nacks
        for response in responses:
            outcome = client.on_response(response)
            requests.extend(outcome.requests)
            if outcome.snapshot is not None:
                snapshots.append(outcome.snapshot)
            if outcome.nack is not None:
                nacks.append(outcome.nack)
        responses = []
    raise AssertionError("the exchange never went quiet")


def connected(model: MeshModel) -> tuple[ClientState, StreamState, list[Snapshot]]:
    client = ClientState(ProxyNode("p1", "meta-thrift", (("app", "x"),)), CONVERT, check_snapshot)
    server = StreamState("p1")
    server.set_snapshot("1", translate(model))
    snapshots, nacks = pump(client, server, client.start_stream())
    assert not nacks
    return client, server, snapshots


def test_initial_sync_gives_one_complete_snapshot_and_acks_everything() -> None:
    client, server, snapshots = connected(example_model())
    final = snapshots[-1]
    assert set(final.listeners) == {"127.0.10.1_9090", "127.0.10.2_20880"}
    assert all(c.endpoints for c in final.clusters.values())
    assert {t: server.status(t).acked_version for t in server.types} == {
        CLUSTER_TYPE: "1",
        ENDPOINT_TYPE: "1",
        LISTENER_TYPE: "1",
        ROUTE_TYPE: "1",
    }
    # every snapshot handed out was complete: no listener without its routes
    for snapshot in snapshots:
        for listener in snapshot.listeners.values():
            assert listener.route_config_name in snapshot.route_configs
    assert server.status(ENDPOINT_TYPE).names == frozenset(client.eds_clusters())


def test_node_metadata_carries_namespace_and_labels() -> None:
    client = ClientState(ProxyNode("p1", "ns", (("app", "x"),)), CONVERT)
    first = client.start_stream()[0]
    assert first.node.id == "p1"
    assert first.node.metadata["NAMESPACE"] == "ns"
    assert dict(first.node.metadata["LABELS"]) == {"app": "x"}
    assert [r.type_url for r in client.start_stream()] == [CLUSTER_TYPE, LISTENER_TYPE]


def test_workload_metadata_round_trips_to_the_servers_node_identity() -> None:
    from metamesh.xds.server import node_identity

    node = ProxyNode(
        "p2",
        "server-ns",
        (("app", "server"),),
        service_account="server",
        instance_ips=("127.0.31.2", "10.0.0.7"),
        outbound=False,
    )
    message = ClientState(node, CONVERT).start_stream()[0].node
    assert message.metadata["SERVICE_ACCOUNT"] == "server"
    assert message.metadata["INSTANCE_IPS"] == "127.0.31.2,10.0.0.7"  # Istio's spelling
    assert message.metadata["METAMESH_OUTBOUND"] == "false"
    assert node_identity(message) == node
    plain = ClientState(ProxyNode("p3", "ns"), CONVERT).start_stream()[0].node
    assert set(plain.metadata.keys()) == {"NAMESPACE"}
    assert node_identity(plain) == ProxyNode("p3", "ns")


def test_cluster_without_endpoints_is_not_applied_until_eds_arrives() -> None:
    model = model_of(service_entry())
    client, server, _ = connected(model)
    bigger = model_of(
        service_entry() + "---\n" + service_entry(host="kv2", addresses="[127.0.10.8]")
    )
    resources = translate(bigger)
    # hand the client only the new CDS: the new EDS clusters have no assignment yet
    cds = response(CLUSTER_TYPE, "2", "n1", resources.clusters.values())
    outcome = client.on_response(cds)
    assert outcome.snapshot is None and outcome.nack is None
    eds_request = [r for r in outcome.requests if r.type_url == ENDPOINT_TYPE]
    assert "outbound|7000||kv2.ns.svc.cluster.local" in eds_request[0].resource_names
    # the real server then serves the rest, and the client converges
    requests = list(outcome.requests)
    for pushed in server.set_snapshot("2", resources):
        requests.extend(client.on_response(pushed).requests)
    snapshots, nacks = pump(client, server, requests)
    assert not nacks
    assert set(snapshots[-1].listeners) == {"127.0.10.9_7000", "127.0.10.8_7000"}


def test_invalid_listener_is_nacked_and_the_last_good_tables_stay() -> None:
    client, _server, snapshots = connected(example_model())
    good = snapshots[-1]
    listener = next(iter(translate(example_model()).listeners.values()))
    broken = type(listener)()
    broken.CopyFrom(listener)
    del broken.filter_chains[:]
    outcome = client.on_response(response(LISTENER_TYPE, "2", "n9", [broken]))
    assert outcome.snapshot is None
    assert (
        outcome.nack is not None and "no envoy.filters.network.meta_protocol_proxy" in outcome.nack
    )
    (nack,) = outcome.requests
    assert nack.error_detail.message == outcome.nack
    assert nack.version_info == "1"  # still the version the proxy runs
    assert set(client.types[LISTENER_TYPE].accepted) == set(good.listeners)


def test_unknown_codec_fails_the_dry_run_and_is_nacked() -> None:
    client, _, _ = connected(model_of(service_entry()))
    resources = translate(model_of(service_entry()))
    listener = next(iter(resources.listeners.values()))
    text = listener.SerializeToString().replace(
        b"aeraki.meta_protocol.codec.thrift", b"aeraki.meta_protocol.codec.nosuch"
    )
    bad = type(listener).FromString(text)
    outcome = client.on_response(response(LISTENER_TYPE, "2", "n9", [bad]))
    assert outcome.nack is not None and "nosuch" in outcome.nack


def with_idle_timeout(listener: Any, value: str) -> Any:
    """``listener`` with ``idleTimeout: value`` added to its MetaProtocolProxy typed struct."""
    changed = type(listener)()
    changed.CopyFrom(listener)
    packed = changed.filter_chains[0].filters[0].typed_config
    typed = typed_struct_pb2.TypedStruct()
    packed.Unpack(typed)
    typed.value.update({"idleTimeout": value})
    packed.Pack(typed)
    return changed


def test_listener_idle_timeout_is_applied_and_a_bad_one_is_nacked() -> None:
    client, _, snapshots = connected(model_of(service_entry()))
    listener = next(iter(translate(model_of(service_entry())).listeners.values()))
    assert snapshots[-1].listeners[listener.name].idle_timeout is None
    outcome = client.on_response(
        response(LISTENER_TYPE, "2", "n8", [with_idle_timeout(listener, "45s")])
    )
    assert outcome.nack is None and outcome.snapshot is not None
    assert outcome.snapshot.listeners[listener.name].idle_timeout == 45.0
    outcome = client.on_response(
        response(LISTENER_TYPE, "3", "n9", [with_idle_timeout(listener, "soon")])
    )
    assert outcome.snapshot is None
    assert outcome.nack is not None and "MetaProtocolProxy.idleTimeout" in outcome.nack
    assert listener.name in outcome.nack


def test_reconnect_keeps_tables_and_resubscribes_names() -> None:
    client, _, snapshots = connected(example_model())
    requests = client.start_stream()
    by_type = {r.type_url: r for r in requests}
    assert set(by_type) == {CLUSTER_TYPE, LISTENER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE}
    assert by_type[CLUSTER_TYPE].version_info == "1" and not by_type[CLUSTER_TYPE].response_nonce
    assert THRIFT + "_9090" in by_type[ROUTE_TYPE].resource_names
    fresh = StreamState("p1")
    fresh.set_snapshot("7", translate(example_model()))
    again, nacks = pump(client, fresh, requests)
    assert not nacks
    assert again[-1].listeners == snapshots[-1].listeners


def push(client: ClientState, server: StreamState, version: str, model: MeshModel) -> Any:
    """The server adopts a new snapshot; the client handles its pushes until quiet."""
    requests: list[Any] = []
    snapshots: list[Snapshot] = []
    for pushed in server.set_snapshot(version, translate(model)):
        outcome = client.on_response(pushed)
        requests.extend(outcome.requests)
        snapshots += [outcome.snapshot] if outcome.snapshot is not None else []
    more, nacks = pump(client, server, requests)
    assert not nacks
    return snapshots + more


def test_route_change_alone_produces_a_new_snapshot() -> None:
    text = service_entry()
    client, server, first = connected(model_of(text))
    router = """
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {name: kv, namespace: ns}
spec:
  hosts: [kv.ns.svc.cluster.local]
  routes:
  - name: all-to-v2
    route: [{destination: {host: kv.ns.svc.cluster.local, subset: v2}}]
"""
    rule = """
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: kv, namespace: ns}
spec:
  host: kv.ns.svc.cluster.local
  subsets: [{name: v2, labels: {version: v2}}]
"""
    snapshots = push(client, server, "2", model_of(text + rule + router))
    (routes,) = snapshots[-1].route_configs.values()
    assert [r.name for r in routes.routes] == ["all-to-v2"]
    assert routes.routes[0].route.cluster == "outbound|7000|v2|kv.ns.svc.cluster.local"
    assert len(snapshots[-1].clusters["outbound|7000|v2|kv.ns.svc.cluster.local"].endpoints) == 1
    assert first[-1].route_configs != snapshots[-1].route_configs
    # every intermediate snapshot was consistent: routes only name clusters that exist
    for snapshot in snapshots:
        for route in routes.routes:
            if route.route.cluster in snapshot.clusters:
                continue
            assert snapshot.route_configs != snapshots[-1].route_configs


def response(type_url: str, version: str, nonce: str, messages: Any) -> Any:
    out = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url, nonce=nonce)
    for message in messages:
        packed = any_pb2.Any()
        packed.Pack(message)
        out.resources.append(packed)
    return out
