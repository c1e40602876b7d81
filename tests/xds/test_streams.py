"""The SotW protocol state machine: nonces, ACK/NACK, subscriptions, ordering."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from metamesh.control.translate import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    translate,
)
from metamesh.xds.server import Debouncer
from metamesh.xds.streams import StreamState
from tests.control.cases import DUBBO, THRIFT, example_model

V1 = f"outbound|9090|v1|{THRIFT}"


def request(
    type_url: str, names: tuple[str, ...] = (), nonce: str = "", version: str = "", error: str = ""
) -> object:
    req = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), response_nonce=nonce, version_info=version
    )
    if error:
        req.error_detail.message = error
    return req


def names_of(response: object) -> list[str]:
    out = []
    for packed in response.resources:  # type: ignore[attr-defined]
        cluster = cluster_pb2.Cluster()
        if packed.Unpack(cluster):
            out.append(cluster.name)
    return out


def started() -> StreamState:
    state = StreamState("n")
    assert state.set_snapshot("1", translate(example_model())) == []  # nothing subscribed
    return state


def test_wildcard_cds_then_ack() -> None:
    state = started()
    (response,) = state.on_request(request(CLUSTER_TYPE))
    assert (response.version_info, response.nonce) == ("1", "1")
    assert len(response.resources) == 6
    assert state.on_request(request(CLUSTER_TYPE, nonce="1", version="1")) == []
    assert state.status(CLUSTER_TYPE).acked_version == "1"


def test_eds_by_name_and_resubscription() -> None:
    state = started()
    (response,) = state.on_request(request(ENDPOINT_TYPE, (V1, "unknown")))
    assert len(response.resources) == 1 and state.status(ENDPOINT_TYPE).sent_names == (V1,)
    (again,) = state.on_request(request(ENDPOINT_TYPE, (V1, f"outbound|9090||{THRIFT}"), "1", "1"))
    assert len(again.resources) == 2 and again.nonce == "2"


def test_stale_nonce_is_ignored() -> None:
    state = started()
    state.on_request(request(CLUSTER_TYPE))
    assert state.on_request(request(CLUSTER_TYPE, nonce="99", version="0", error="x")) == []
    status = state.status(CLUSTER_TYPE)
    assert status.acked_version == "" and status.nack_error == ""


def test_nack_is_recorded_and_not_retried() -> None:
    seen = []
    state = StreamState("n", on_nack=lambda *args: seen.append(args))
    resources = translate(example_model())
    state.set_snapshot("1", resources)
    state.on_request(request(CLUSTER_TYPE))
    assert state.on_request(request(CLUSTER_TYPE, nonce="1", error="bad cluster")) == []
    status = state.status(CLUSTER_TYPE)
    assert (status.nack_version, status.nack_error, status.acked_version) == (
        "1",
        "bad cluster",
        "",
    )
    assert seen == [("n", CLUSTER_TYPE, "1", "bad cluster")]
    assert state.set_snapshot("2", resources) == []  # same content: not resent
    assert status.view()["nack"] == {"version": "1", "error": "bad cluster"}


def test_snapshot_change_pushes_changed_types_in_cds_eds_lds_rds_order() -> None:
    state = started()
    for type_url, names in (
        (ROUTE_TYPE, (f"{DUBBO}_20880",)),
        (LISTENER_TYPE, ()),
        (ENDPOINT_TYPE, (V1,)),
        (CLUSTER_TYPE, ()),
    ):
        (response,) = state.on_request(request(type_url, names))
        state.on_request(request(type_url, names, response.nonce, response.version_info))
    model = example_model()
    assert state.set_snapshot("2", translate(model)) == []  # unchanged content
    smaller = translate(type(model)({THRIFT: model.services[THRIFT]}))
    pushed = state.set_snapshot("3", smaller)
    # clusters and listeners shrink; the watched EDS (thrift) and RDS (dubbo) names:
    assert [r.type_url for r in pushed] == [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    assert pushed[-1].resources == [] and all(r.version_info == "3" for r in pushed)


def test_request_before_first_snapshot_is_answered_when_it_arrives() -> None:
    state = StreamState("n")
    assert state.on_request(request(CLUSTER_TYPE)) == []
    (response,) = state.set_snapshot("1", translate(example_model()))
    assert response.type_url == CLUSTER_TYPE and names_of(response)


def test_debouncer_coalesces_and_caps_delay() -> None:
    d = Debouncer(quiet=1.0, max_delay=3.0)
    assert d.deadline() is None and not d.take(0.0)
    d.submit(10.0)
    d.submit(10.5)
    assert d.deadline() == 11.5 and not d.take(11.4) and d.take(11.5)
    assert d.deadline() is None
    for t in (20.0, 20.9, 21.8, 22.7):
        d.submit(t)
    assert d.deadline() == 23.0  # max_delay since the first change, not quiet after the last


def test_an_updated_cluster_has_its_unchanged_endpoints_resent() -> None:
    state = started()
    for type_url, names in ((CLUSTER_TYPE, ()), (ENDPOINT_TYPE, (V1,))):
        (response,) = state.on_request(request(type_url, names))
        state.on_request(request(type_url, names, response.nonce, response.version_info))
    resources = translate(example_model())
    by_type = {url: dict(table) for url, table in resources.by_type.items()}
    by_type[CLUSTER_TYPE][V1] = cluster_pb2.Cluster(name=V1)
    cds, eds = state.set_snapshot("2", type(resources)(by_type))
    assert (cds.type_url, eds.type_url, eds.version_info, len(eds.resources)) == (
        CLUSTER_TYPE,
        ENDPOINT_TYPE,
        "2",
        1,
    )
    # a cluster that did not change does not drag its endpoints along
    assert state.set_snapshot("3", type(resources)(by_type)) == []
