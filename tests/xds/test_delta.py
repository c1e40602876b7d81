"""The delta xDS state machine without sockets: versions, removals, subscriptions, ACK/NACK."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from metamesh.control.translate import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    translate,
)
from metamesh.xds.delta import DeltaStreamState, resource_version
from metamesh.xds.resources import XdsResources
from tests.control.cases import DUBBO, THRIFT, example_model

V1 = f"outbound|9090|v1|{THRIFT}"
V2 = f"outbound|9090|v2|{THRIFT}"
DUBBO_V1 = f"outbound|20880|v1|{DUBBO}"


def request(
    type_url: str,
    subscribe: tuple[str, ...] = (),
    unsubscribe: tuple[str, ...] = (),
    nonce: str = "",
    error: str = "",
    initial: dict[str, str] | None = None,
) -> Any:
    req = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if error:
        req.error_detail.message = error
    return req


def sent(response: Any) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}


def edited(resources: XdsResources, type_url: str, **changes: Any) -> XdsResources:
    """``resources`` with named entries replaced (a message) or deleted (None)."""
    by_type = {url: dict(table) for url, table in resources.by_type.items()}
    for name, message in changes.items():
        if message is None:
            del by_type[type_url][name]
        else:
            by_type[type_url][name] = message
    return XdsResources(MappingProxyType(by_type))


def slower(resources: XdsResources, name: str) -> Any:
    """A copy of cluster ``name`` with a different connect timeout."""
    cluster = type(resources.clusters[name])()
    cluster.CopyFrom(resources.clusters[name])
    cluster.connect_timeout.seconds += 7
    return cluster


def started() -> tuple[DeltaStreamState, XdsResources]:
    resources = translate(example_model())
    state = DeltaStreamState("n")
    assert state.set_snapshot("1", resources) == []  # nothing subscribed yet
    return state, resources


def subscribed_to_clusters() -> tuple[DeltaStreamState, XdsResources]:
    state, resources = started()
    (response,) = state.on_request(request(CLUSTER_TYPE))
    assert state.on_request(request(CLUSTER_TYPE, nonce=response.nonce)) == []
    return state, resources


def test_initial_wildcard_sends_every_cluster_with_content_versions_then_ack() -> None:
    state, resources = started()
    (response,) = state.on_request(request(CLUSTER_TYPE))
    assert (response.type_url, response.system_version_info, response.nonce) == (
        CLUSTER_TYPE,
        "1",
        "1",
    )
    assert sent(response) == {n: resource_version(m) for n, m in resources.clusters.items()}
    assert list(response.removed_resources) == []
    assert state.on_request(request(CLUSTER_TYPE, nonce="1")) == []
    view = state.status(CLUSTER_TYPE).view()
    assert (view["delta"], view["subscribed"], view["acked_version"]) == (True, ["*"], "1")


def test_explicit_wildcard_star_on_any_type() -> None:
    state, resources = started()
    (response,) = state.on_request(request(ROUTE_TYPE, ("*",)))
    assert set(sent(response)) == set(resources.routes)


def test_changing_one_cluster_sends_only_it() -> None:
    state, resources = subscribed_to_clusters()
    assert state.set_snapshot("2", translate(example_model())) == []  # same content
    changed = slower(resources, V1)
    (response,) = state.set_snapshot("3", edited(resources, CLUSTER_TYPE, **{V1: changed}))
    assert sent(response) == {V1: resource_version(changed)}
    assert sent(response)[V1] != resource_version(resources.clusters[V1])
    assert (response.system_version_info, list(response.removed_resources)) == ("3", [])


def test_deleting_a_cluster_lists_it_in_removed_resources() -> None:
    state, resources = subscribed_to_clusters()
    (response,) = state.set_snapshot("2", edited(resources, CLUSTER_TYPE, **{V2: None}))
    assert (list(response.resources), list(response.removed_resources)) == ([], [V2])
    assert V2 not in state.client_versions(CLUSTER_TYPE)
    # the removal is not repeated
    assert state.set_snapshot("3", edited(resources, CLUSTER_TYPE, **{V2: None})) == []


def test_eds_subscribe_unsubscribe_and_unknown_names() -> None:
    state, resources = started()
    (first,) = state.on_request(request(ENDPOINT_TYPE, (V1,)))
    assert list(sent(first)) == [V1]
    (more,) = state.on_request(request(ENDPOINT_TYPE, (V2, "nope"), nonce=first.nonce))
    assert list(sent(more)) == [V2] and list(more.removed_resources) == ["nope"]
    assert state.status(ENDPOINT_TYPE).acked_version == "1"
    assert state.on_request(request(ENDPOINT_TYPE, unsubscribe=(V1, "nope"))) == []
    assert state.status(ENDPOINT_TYPE).view()["subscribed"] == [V2]
    # V1 and V2 both change; only the still-subscribed V2 is pushed
    moved = {name: type(resources.endpoints[V1])(cluster_name=name) for name in (V1, V2)}
    (push,) = state.set_snapshot("2", edited(resources, ENDPOINT_TYPE, **moved))
    assert list(sent(push)) == [V2] and list(push.removed_resources) == []
    # re-subscribing V1 sends it again, even though its content is what was once sent
    (again,) = state.on_request(request(ENDPOINT_TYPE, (V1,)))
    assert list(sent(again)) == [V1]


def test_an_unchanged_resubscription_needs_no_answer() -> None:
    state, _ = started()
    state.on_request(request(ENDPOINT_TYPE, (V1,)))
    assert state.on_request(request(ENDPOINT_TYPE, (V1,))) == []


def test_nack_is_recorded_and_the_rejected_content_not_resent() -> None:
    seen: list[tuple[str, ...]] = []
    resources = translate(example_model())
    state = DeltaStreamState("n", on_nack=lambda *args: seen.append(args))
    state.set_snapshot("1", resources)
    (response,) = state.on_request(request(CLUSTER_TYPE))
    assert state.on_request(request(CLUSTER_TYPE, nonce="99", error="stale")) == []
    assert seen == []  # unknown nonce: ignored
    assert state.on_request(request(CLUSTER_TYPE, nonce=response.nonce, error="bad")) == []
    assert seen == [("n", CLUSTER_TYPE, "1", "bad")]
    status = state.status(CLUSTER_TYPE)
    assert status.view()["nack"] == {"version": "1", "error": "bad"}
    assert status.acked_version == ""
    assert state.set_snapshot("2", resources) == []  # same content: not retried
    changed = slower(resources, V1)
    (fixed,) = state.set_snapshot("3", edited(resources, CLUSTER_TYPE, **{V1: changed}))
    assert state.on_request(request(CLUSTER_TYPE, nonce=fixed.nonce)) == []
    assert (status.acked_version, status.view()["nack"]) == ("3", None)


def test_reconnect_with_initial_versions_sends_only_the_difference() -> None:
    resources = translate(example_model())
    held = {name: resource_version(m) for name, m in resources.clusters.items()}
    held[V1] = "an-old-version"
    held["outbound|1|gone|x"] = "whatever"
    state = DeltaStreamState("n")
    state.set_snapshot("7", resources)
    (response,) = state.on_request(request(CLUSTER_TYPE, initial=held))
    assert list(sent(response)) == [V1]
    assert list(response.removed_resources) == ["outbound|1|gone|x"]
    # an explicit subscription reconnects the same way
    eds = {V1: resource_version(resources.endpoints[V1]), V2: "old"}
    (endpoints,) = state.on_request(request(ENDPOINT_TYPE, (V1, V2), initial=eds))
    assert list(sent(endpoints)) == [V2]


def test_reconnect_with_nothing_changed_gets_an_empty_first_answer() -> None:
    resources = translate(example_model())
    held = {name: resource_version(m) for name, m in resources.listeners.items()}
    state = DeltaStreamState("n")
    state.set_snapshot("2", resources)
    (response,) = state.on_request(request(LISTENER_TYPE, initial=held))
    assert (list(response.resources), list(response.removed_resources)) == ([], [])
    assert state.status(LISTENER_TYPE).sent_names == tuple(sorted(held))


def test_snapshot_change_pushes_in_cds_eds_lds_rds_order() -> None:
    state, _ = started()
    for type_url, names in (
        (ROUTE_TYPE, (f"{DUBBO}_20880",)),
        (LISTENER_TYPE, ()),
        (ENDPOINT_TYPE, (DUBBO_V1,)),
        (CLUSTER_TYPE, ()),
    ):
        (response,) = state.on_request(request(type_url, names))
        state.on_request(request(type_url, nonce=response.nonce))
    model = example_model()
    pushed = state.set_snapshot("2", translate(type(model)({THRIFT: model.services[THRIFT]})))
    assert [r.type_url for r in pushed] == [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    assert all(list(r.resources) == [] for r in pushed)  # only removals
    assert list(pushed[1].removed_resources) == [DUBBO_V1]
    assert list(pushed[3].removed_resources) == [f"{DUBBO}_20880"]
    assert len(pushed[0].removed_resources) == 3 and len(pushed[2].removed_resources) == 1


def test_request_before_the_first_snapshot_is_answered_when_it_arrives() -> None:
    state = DeltaStreamState("n")
    assert state.on_request(request(CLUSTER_TYPE)) == []
    (response,) = state.set_snapshot("1", translate(example_model()))
    assert response.type_url == CLUSTER_TYPE and len(response.resources) == 6


def test_an_updated_cluster_has_its_unchanged_assignment_resent() -> None:
    state, resources = subscribed_to_clusters()
    (eds,) = state.on_request(request(ENDPOINT_TYPE, (V1, V2)))
    state.on_request(request(ENDPOINT_TYPE, nonce=eds.nonce))
    cds, again = state.set_snapshot(
        "2", edited(resources, CLUSTER_TYPE, **{V1: slower(resources, V1)})
    )
    assert (list(sent(cds)), again.type_url) == ([V1], ENDPOINT_TYPE)
    assert sent(again) == {V1: resource_version(resources.endpoints[V1])}
