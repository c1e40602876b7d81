"""The two sides of the mesh in xDS: workloads found from node metadata, inbound listeners with
PeerAuthentication's transport, clusters with DestinationRule / auto mTLS, and the proxy's
read-back of those standard Envoy fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format

from metamesh.control.inbound import inbound_ports, node_matches
from metamesh.control.model import MeshSettings, with_settings
from metamesh.control.to_proxy import XdsConversionError, to_cluster, to_listener, to_snapshot
from metamesh.control.translate import translate
from metamesh.xds.resources import ProxyNode
from tests.control.cases import model_of

HOST = "hello.server-ns.svc.cluster.local"
MESH = """\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: hello, namespace: server-ns}
spec:
  hosts: [hello.server-ns.svc.cluster.local]
  addresses: [127.0.10.1]
  ports: [{number: 9090, name: tcp-metaprotocol-thrift-hello}]
  resolution: STATIC
  workloadSelector: {labels: {app: hello}}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {name: hello-1, namespace: server-ns}
spec:
  address: 127.0.31.2
  ports: {tcp-metaprotocol-thrift-hello: 20001}
  labels: {app: hello, version: v1}
  serviceAccount: server
---
apiVersion: metamesh.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {name: only-sleep, namespace: server-ns}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/client-ns/sa/sleep]}}]
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {name: hello, namespace: server-ns}
spec:
  hosts: [hello.server-ns.svc.cluster.local]
  localRateLimit:
    tokenBucket: {fillInterval: 60s, maxTokens: 10, tokensPerFill: 10}
"""
SERVER = ProxyNode(
    "server-1", "server-ns", (("app", "hello"), ("version", "v1")), "server", (), False
)
CLIENT = ProxyNode("sleep-1", "client-ns", (("app", "sleep"),), "sleep")


def peer(name: str, namespace: str, spec: str) -> str:
    return (
        f"---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )


def dr(tls: str) -> str:
    return (
        "---\napiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\n"
        "metadata: {name: hello, namespace: server-ns}\n"
        f"spec: {{host: {HOST}, trafficPolicy: {{tls: {tls}}}}}\n"
    )


def as_dict(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


def mode_of(extra: str, node: ProxyNode = SERVER) -> str:
    (port,) = inbound_ports(model_of(MESH + extra), node)[0]
    return port.tls_mode


def test_node_metadata_finds_the_workload_by_labels_or_address() -> None:
    model = model_of(MESH)
    service = model.services[HOST]
    (endpoint,) = service.endpoints
    assert endpoint.service_account == "server" and service.has_workloads
    assert node_matches(SERVER, service, endpoint)
    by_ip = ProxyNode("s", "server-ns", (), None, ("127.0.31.2",))
    assert node_matches(by_ip, service, endpoint)
    assert not node_matches(ProxyNode("s", "other-ns", SERVER.labels, "server"), service, endpoint)
    assert not node_matches(ProxyNode("s", "server-ns", SERVER.labels, "sleep"), service, endpoint)
    assert not node_matches(ProxyNode("s", "server-ns", (("app", "x"),)), service, endpoint)
    assert not node_matches(CLIENT, service, endpoint)


def test_inbound_listener_cluster_and_route_for_the_server_node() -> None:
    resources = translate(model_of(MESH), SERVER)
    cluster = f"inbound|9090||{HOST}"
    assert list(resources.listeners) == ["inbound_127.0.31.2_20001"]  # outbound: not asked for
    assert list(resources.clusters) == [cluster]
    assert list(resources.routes) == [cluster]
    assert as_dict(resources.clusters[cluster])["load_assignment"]["endpoints"] == [
        {
            "lb_endpoints": [
                {
                    "endpoint": {
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 20001}}
                    }
                }
            ]
        }
    ]
    listener = as_dict(resources.listeners["inbound_127.0.31.2_20001"])
    assert listener["traffic_direction"] == "INBOUND"
    assert listener["address"]["socket_address"] == {"address": "127.0.31.2", "port_value": 20001}
    value = listener["filter_chains"][0]["filters"][0]["typed_config"]["value"]
    assert value["statPrefix"] == cluster and value["rds"]["routeConfigName"] == cluster
    names = [f["name"] for f in value["metaProtocolFilters"]]
    assert names == [
        "metamesh.filters.rbac",
        "aeraki.meta_protocol.filters.local_ratelimit",
        "aeraki.meta_protocol.filters.router",
    ]
    snapshot = to_snapshot(
        resources.listeners.values(),
        resources.clusters.values(),
        resources.endpoints,
        resources.routes.values(),
    )
    (read,) = snapshot.listeners.values()
    assert (read.address, read.port, read.tls_mode, read.service) == (
        "127.0.31.2",
        20001,
        "PERMISSIVE",  # no PeerAuthentication: Istio's default
        HOST,
    )
    assert snapshot.route_configs[cluster].routes[0].route.cluster == cluster


def test_the_client_side_routes_only_and_connects_with_auto_mtls() -> None:
    resources = translate(model_of(MESH), CLIENT)
    assert list(resources.listeners) == ["127.0.10.1_9090"]  # no inbound: sleep fronts nothing
    value = as_dict(resources.listeners["127.0.10.1_9090"])["filter_chains"][0]["filters"][0]
    filters = value["typed_config"]["value"]["metaProtocolFilters"]
    assert filters == [{"name": "aeraki.meta_protocol.filters.router"}]  # policies: inbound
    cluster = resources.clusters[f"outbound|9090||{HOST}"]
    # Istio's auto mTLS shape: TLS for the endpoints marked tlsMode: istio, plaintext otherwise
    istio, disabled = as_dict(cluster)["transport_socket_matches"]
    assert (istio["name"], istio["match"]) == ("tlsMode-istio", {"tlsMode": "istio"})
    assert (disabled["name"], disabled["match"]) == ("tlsMode-disabled", {})
    assert disabled["transport_socket"]["name"] == "envoy.transport_sockets.raw_buffer"
    assert not cluster.HasField("transport_socket")
    socket = istio["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    context = socket["typed_config"]
    assert context["@type"].endswith("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext")
    assert context["sni"] == f"outbound_.9090_._.{HOST}"
    common = context["common_tls_context"]
    assert [s["name"] for s in common["tls_certificate_sds_secret_configs"]] == ["default"]
    combined = common["combined_validation_context"]
    assert combined["validation_context_sds_secret_config"]["name"] == "ROOTCA"
    assert combined["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/server-ns/sa/server"}}
    ]
    assignment = resources.endpoints[f"outbound|9090||{HOST}"]
    metadata = as_dict(assignment)["endpoints"][0]["lb_endpoints"][0]["metadata"]
    assert metadata["filter_metadata"]["envoy.transport_socket_match"] == {"tlsMode": "istio"}
    read = to_cluster(cluster, assignment)
    assert read.tls_mode == "ISTIO_MUTUAL"
    assert read.tls_subject_alt_names == ("spiffe://cluster.local/ns/server-ns/sa/server",)
    assert read.tls_endpoint_match == (("tlsMode", "istio"),)
    (endpoint,) = read.endpoints
    assert endpoint.transport_match == (("tlsMode", "istio"),) and read.tls_for(endpoint)


def test_auto_mtls_is_per_endpoint_in_a_mixed_cluster() -> None:
    plain = (
        "---\napiVersion: networking.istio.io/v1beta1\nkind: WorkloadEntry\n"
        "metadata: {name: legacy, namespace: server-ns}\n"
        "spec: {address: 127.0.31.9, ports: {tcp-metaprotocol-thrift-hello: 20009}, "
        "labels: {app: hello}}\n"  # no serviceAccount: no proxy of its own
    )
    resources = translate(model_of(MESH + plain), CLIENT)
    name = f"outbound|9090||{HOST}"
    read = to_cluster(resources.clusters[name], resources.endpoints[name])
    tls = {(e.address, read.tls_for(e)) for e in read.endpoints}
    assert tls == {("127.0.31.2", True), ("127.0.31.9", False)}


def has_tls(cluster: Any) -> bool:
    return cluster.HasField("transport_socket") or len(cluster.transport_socket_matches) > 0


def test_trust_domain_and_root_namespace_are_settings() -> None:
    model = with_settings(model_of(MESH), MeshSettings("mesh-root", "example.org"))
    cluster = translate(model, CLIENT).clusters[f"outbound|9090||{HOST}"]
    assert to_cluster(cluster, None).tls_subject_alt_names == (
        "spiffe://example.org/ns/server-ns/sa/server",
    )
    text = MESH + peer("default", "mesh-root", "{mtls: {mode: STRICT}}")
    model = with_settings(model_of(text), MeshSettings("mesh-root"))
    assert inbound_ports(model, SERVER)[0][0].tls_mode == "STRICT"
    assert mode_of(peer("default", "mesh-root", "{mtls: {mode: STRICT}}")) == "PERMISSIVE"


@pytest.mark.parametrize(
    ("policies", "mode"),
    [
        ("", "PERMISSIVE"),
        (peer("default", "istio-system", "{mtls: {mode: STRICT}}"), "STRICT"),
        (peer("default", "istio-system", "{mtls: {mode: UNSET}}"), "PERMISSIVE"),
        (
            peer("default", "istio-system", "{mtls: {mode: STRICT}}")
            + peer("ns", "server-ns", "{mtls: {mode: DISABLE}}"),
            "DISABLE",
        ),
        (
            peer("default", "istio-system", "{mtls: {mode: STRICT}}")
            + peer("ns", "server-ns", "{mtls: {mode: UNSET}}"),
            "STRICT",
        ),
        (
            peer("ns", "server-ns", "{mtls: {mode: STRICT}}")
            + peer(
                "w",
                "server-ns",
                "{selector: {matchLabels: {app: hello}}, mtls: {mode: PERMISSIVE}}",
            ),
            "PERMISSIVE",
        ),
        (  # a workload policy of another app, or of another namespace, does not apply
            peer("ns", "server-ns", "{mtls: {mode: STRICT}}")
            + peer(
                "w", "server-ns", "{selector: {matchLabels: {app: other}}, mtls: {mode: DISABLE}}"
            )
            + peer(
                "x", "client-ns", "{selector: {matchLabels: {app: hello}}, mtls: {mode: DISABLE}}"
            ),
            "STRICT",
        ),
        (  # port level: the workload's port, overriding its policy's mode
            peer(
                "w",
                "server-ns",
                "{selector: {matchLabels: {app: hello}}, mtls: {mode: STRICT}, "
                "portLevelMtls: {20001: {mode: DISABLE}}}",
            ),
            "DISABLE",
        ),
        (
            peer(
                "w",
                "server-ns",
                "{selector: {matchLabels: {app: hello}}, mtls: {mode: STRICT}, "
                "portLevelMtls: {'9090': {mode: DISABLE}}}",  # the service port: not this one
            ),
            "STRICT",
        ),
        (  # UNSET at the workload and the port level inherit the namespace's
            peer("ns", "server-ns", "{mtls: {mode: DISABLE}}")
            + peer(
                "w",
                "server-ns",
                "{selector: {matchLabels: {app: hello}}, portLevelMtls: {20001: {mode: UNSET}}}",
            ),
            "DISABLE",
        ),
    ],
)
def test_peer_authentication_resolves_as_istio(policies: str, mode: str) -> None:
    assert mode_of(policies) == mode


@pytest.mark.parametrize(
    ("mode", "chains", "read"),
    [
        ("STRICT", [("tls", True)], "STRICT"),
        ("PERMISSIVE", [("tls", True), ("raw_buffer", False)], "PERMISSIVE"),
        ("DISABLE", [("", False)], ""),
    ],
)
def test_inbound_transport_follows_the_mode(
    mode: str, chains: list[tuple[str, bool]], read: str
) -> None:
    text = MESH + peer("default", "istio-system", f"{{mtls: {{mode: {mode}}}}}")
    listener = translate(model_of(text), SERVER).listeners["inbound_127.0.31.2_20001"]
    got = [
        (c.filter_chain_match.transport_protocol, c.HasField("transport_socket"))
        for c in listener.filter_chains
    ]
    assert got == chains
    inspector = [f.name for f in listener.listener_filters]
    assert inspector == (["envoy.filters.listener.tls_inspector"] if mode == "PERMISSIVE" else [])
    for chain in listener.filter_chains:
        if chain.HasField("transport_socket"):
            context = tls_pb2.DownstreamTlsContext()
            chain.transport_socket.typed_config.Unpack(context)
            assert context.require_client_certificate.value
            common = context.common_tls_context
            assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
            root = common.combined_validation_context.validation_context_sds_secret_config
            assert root.name == "ROOTCA"
    assert to_listener(listener).tls_mode == read
    # and the client follows a DISABLE server to plaintext (Istio's auto mTLS)
    client = translate(model_of(text), CLIENT).clusters[f"outbound|9090||{HOST}"]
    assert has_tls(client) == (mode != "DISABLE")


def test_destination_rule_tls_modes_reach_the_cluster() -> None:
    def cluster(tls: str) -> Any:
        resources = translate(model_of(MESH + dr(tls)), CLIENT)
        return resources.clusters[f"outbound|9090||{HOST}"]

    assert not has_tls(cluster("{mode: DISABLE}"))
    istio = to_cluster(cluster("{mode: ISTIO_MUTUAL}"), None)
    assert istio.tls_mode == "ISTIO_MUTUAL"
    assert istio.tls_subject_alt_names == ("spiffe://cluster.local/ns/server-ns/sa/server",)
    fixed = to_cluster(
        cluster("{mode: ISTIO_MUTUAL, subjectAltNames: ['spiffe://cluster.local/ns/a/sa/b']}"),
        None,
    )
    assert fixed.tls_subject_alt_names == ("spiffe://cluster.local/ns/a/sa/b",)
    mutual = cluster(
        "{mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem,"
        " sni: hello.example, subjectAltNames: [hello.example]}"
    )
    context = as_dict(mutual)["transport_socket"]["typed_config"]
    assert context["sni"] == "hello.example"
    (certificate,) = context["common_tls_context"]["tls_certificates"]
    assert certificate == {
        "certificate_chain": {"filename": "/c.pem"},
        "private_key": {"filename": "/k.pem"},
    }
    validation = context["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": "/ca.pem"}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "hello.example"}}
    ]
    read = to_cluster(mutual, None)
    assert (read.tls_mode, read.tls_sni, read.tls_files) == (
        "MUTUAL",
        "hello.example",
        ("/c.pem", "/k.pem", "/ca.pem"),
    )
    simple = to_cluster(cluster("{mode: SIMPLE, caCertificates: /ca.pem}"), None)
    assert (simple.tls_mode, simple.tls_files) == ("SIMPLE", ("", "", "/ca.pem"))


def test_port_level_and_subset_tls_are_more_specific() -> None:
    text = MESH + (
        "---\napiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\n"
        "metadata: {name: hello, namespace: server-ns}\n"
        f"spec:\n  host: {HOST}\n"
        "  trafficPolicy:\n    tls: {mode: DISABLE}\n"
        "    portLevelSettings: [{port: {number: 9090}, tls: {mode: ISTIO_MUTUAL}}]\n"
        "  subsets:\n  - name: v1\n    labels: {version: v1}\n"
        "    trafficPolicy: {tls: {mode: SIMPLE}}\n"
    )
    resources = translate(model_of(text), CLIENT)
    assert to_cluster(resources.clusters[f"outbound|9090||{HOST}"], None).tls_mode == (
        "ISTIO_MUTUAL"
    )
    assert to_cluster(resources.clusters[f"outbound|9090|v1|{HOST}"], None).tls_mode == "SIMPLE"


def test_a_service_without_workloads_keeps_its_policies_outbound_in_plaintext() -> None:
    text = MESH.replace(
        "  workloadSelector: {labels: {app: hello}}\n",
        (
            "  endpoints: [{address: 127.0.0.1, ports: {tcp-metaprotocol-thrift-hello: 20001},"
            " labels: {app: hello}}]\n"
        ),
    )
    resources = translate(model_of(text), CLIENT)
    value = as_dict(resources.listeners["127.0.10.1_9090"])["filter_chains"][0]["filters"][0]
    names = [f["name"] for f in value["typed_config"]["value"]["metaProtocolFilters"]]
    assert names[0] == "metamesh.filters.rbac" and names[-1].endswith("router")
    assert not has_tls(resources.clusters[f"outbound|9090||{HOST}"])
    assert inbound_ports(model_of(text), SERVER) == ([], [])


def test_an_endpoint_on_the_apps_address_gets_no_inbound_and_says_why() -> None:
    text = MESH.replace("address: 127.0.31.2", "address: 127.0.0.1")
    ports, problems = inbound_ports(model_of(text), SERVER)
    assert ports == []
    assert problems == [
        f"{HOST}: endpoint 127.0.0.1:20001 is the app's own address; give the workload "
        "another loopback address for its proxy"
    ]


def test_tls_the_proxy_cannot_run_is_a_nack_naming_the_resource() -> None:
    listener = translate(model_of(MESH), SERVER).listeners["inbound_127.0.31.2_20001"]
    one_way = listener_pb2.Listener()
    one_way.CopyFrom(listener)
    context = tls_pb2.DownstreamTlsContext()
    context.common_tls_context.tls_certificate_sds_secret_configs.add(name="default")
    one_way.filter_chains[0].transport_socket.typed_config.Pack(context)
    with pytest.raises(XdsConversionError, match=r"inbound_127\.0\.31\.2_20001.*mutual TLS"):
        to_listener(one_way)
    other = listener_pb2.Listener()
    other.CopyFrom(listener)
    other.filter_chains[0].transport_socket.CopyFrom(
        base_pb2.TransportSocket(name="envoy.transport_sockets.alts")
    )
    with pytest.raises(XdsConversionError, match="alts"):
        to_listener(other)


def test_a_node_without_namespace_is_the_one_hop_router() -> None:
    # metamesh up, or proxy --xds without --namespace: no workload identity, so the policies
    # stay on its outbound listener and no auto mutual TLS (it has no certificate to offer)
    resources = translate(model_of(MESH), ProxyNode("metamesh-up"))
    assert list(resources.listeners) == ["127.0.10.1_9090"]
    value = as_dict(resources.listeners["127.0.10.1_9090"])["filter_chains"][0]["filters"][0]
    names = [f["name"] for f in value["typed_config"]["value"]["metaProtocolFilters"]]
    assert names == [
        "metamesh.filters.rbac",
        "aeraki.meta_protocol.filters.local_ratelimit",
        "aeraki.meta_protocol.filters.router",
    ]
    assert not has_tls(resources.clusters[f"outbound|9090||{HOST}"])
    explicit = translate(model_of(MESH + dr("{mode: ISTIO_MUTUAL}")), ProxyNode("metamesh-up"))
    assert explicit.clusters[f"outbound|9090||{HOST}"].HasField("transport_socket")


def test_the_xds_proxy_warns_once_about_identity_rules_on_a_plaintext_inbound_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from metamesh.control.embedded import warn_identity_rules

    def snapshot(mode: str) -> Any:
        text = MESH + peer("default", "istio-system", f"{{mtls: {{mode: {mode}}}}}")
        r = translate(model_of(text), SERVER)
        return to_snapshot(
            r.listeners.values(), r.clusters.values(), r.endpoints, r.routes.values()
        )

    warned: set[tuple[str, str]] = set()
    warn_identity_rules(snapshot("STRICT"), warned)
    assert not caplog.records  # mutual TLS: the principal is verified
    for _ in range(2):
        warn_identity_rules(snapshot("DISABLE"), warned)
    (record,) = caplog.records
    assert record.getMessage() == (
        "listener inbound_127.0.31.2_20001: ALLOW policy 'server-ns/only-sleep' has a source "
        "with principals/namespaces, which can never match on a plaintext listener (no peer "
        "identity is verified there)"
    )


def test_the_control_plane_translates_under_its_settings(tmp_path: Path) -> None:
    # control-plane --root-namespace / --trust-domain reach what every node gets
    import asyncio

    from metamesh.control.embedded import start_control_plane

    (tmp_path / "mesh.yaml").write_text(
        MESH + peer("default", "mesh-root", "{mtls: {mode: STRICT}}")
    )

    async def nodes() -> tuple[Any, Any]:
        settings = MeshSettings("mesh-root", "example.org")
        ads, _source, _port = await start_control_plane(
            tmp_path, "127.0.0.1", 0, "default", mesh=settings
        )
        try:
            return ads.snapshot_for(CLIENT), ads.snapshot_for(SERVER)
        finally:
            await ads.stop(0)

    client, server = asyncio.run(nodes())
    cluster = to_cluster(client.clusters[f"outbound|9090||{HOST}"], None)
    assert cluster.tls_subject_alt_names == ("spiffe://example.org/ns/server-ns/sa/server",)
    assert to_listener(server.listeners["inbound_127.0.31.2_20001"]).tls_mode == "STRICT"


def test_service_entry_subject_alt_names_are_the_auto_mtls_sans() -> None:
    named = MESH.replace(
        "  workloadSelector: {labels: {app: hello}}\n",
        "  workloadSelector: {labels: {app: hello}}\n"
        "  subjectAltNames: [spiffe://cluster.local/ns/server-ns/sa/hello-v2]\n",
    )
    cluster = translate(model_of(named), CLIENT).clusters[f"outbound|9090||{HOST}"]
    assert to_cluster(cluster, None).tls_subject_alt_names == (
        "spiffe://cluster.local/ns/server-ns/sa/hello-v2",
    )
    fixed = dr("{mode: ISTIO_MUTUAL, subjectAltNames: ['spiffe://cluster.local/ns/a/sa/b']}")
    cluster = translate(model_of(named + fixed), CLIENT).clusters[f"outbound|9090||{HOST}"]
    assert to_cluster(cluster, None).tls_subject_alt_names == ("spiffe://cluster.local/ns/a/sa/b",)


def test_a_policy_reaches_only_the_workloads_it_selects() -> None:
    v2 = (
        "---\napiVersion: networking.istio.io/v1beta1\nkind: WorkloadEntry\n"
        "metadata: {name: hello-2, namespace: server-ns}\n"
        "spec: {address: 127.0.31.3, ports: {tcp-metaprotocol-thrift-hello: 20001}, "
        "labels: {app: hello, version: v2}, serviceAccount: server}\n"
    )
    text = (
        MESH.replace(
            "spec:\n  action: ALLOW",
            "spec:\n  selector: {matchLabels: {version: v1}}\n  action: ALLOW",
        )
        + v2
    )
    model = model_of(text)

    def filters(node: ProxyNode, name: str) -> list[str]:
        listener = as_dict(translate(model, node).listeners[name])
        value = listener["filter_chains"][0]["filters"][0]["typed_config"]["value"]
        return [f["name"] for f in value["metaProtocolFilters"]]

    node_v2 = ProxyNode("server-2", "server-ns", (("app", "hello"), ("version", "v2")), "server")
    assert filters(SERVER, "inbound_127.0.31.2_20001")[0] == "metamesh.filters.rbac"
    assert "metamesh.filters.rbac" not in filters(node_v2, "inbound_127.0.31.3_20001")


def test_a_mesh_workload_on_the_apps_address_is_a_validation_warning() -> None:
    from metamesh.api import load_text, validate

    text = MESH.replace("address: 127.0.31.2", "address: 127.0.0.1")
    (problem,) = [p for p in validate(load_text(text, "m.yaml")) if "mesh workload" in p.message]
    assert (problem.severity, problem.kind, problem.field_path) == (
        "warning",
        "WorkloadEntry",
        "spec.address",
    )
    assert not [p for p in validate(load_text(MESH, "m.yaml")) if "mesh workload" in p.message]
