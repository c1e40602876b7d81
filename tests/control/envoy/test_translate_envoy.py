"""The Envoy back end as a pure function: table tests of what an Envoy node is sent.

The resources a real Envoy loads and routes with are checked in ``test_acks.py`` and the
side-by-side tests; here each mapping rule of docs/envoy.md is pinned on the messages
themselves, with the findings for what Envoy cannot do.
"""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.network.dubbo_proxy.v3 import dubbo_proxy_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.thrift_proxy.v3 import thrift_proxy_pb2
from google.protobuf import json_format, struct_pb2

from metamesh.api import load_text
from metamesh.control.envoy import envoy_findings
from metamesh.control.envoy.validate import envoy_report, parse_path
from metamesh.control.translate import translate
from metamesh.xds.resources import DUBBO_ROUTE_TYPE, THRIFT_ROUTE_TYPE, ProxyNode
from metamesh.xds.server import node_identity
from tests.control.cases import EXAMPLES, model_of
from tests.control.envoy.test_acks import POLICIES

ENVOY = ProxyNode("envoy-1", data_plane="envoy")
WORKLOAD = ProxyNode(
    "envoy-2", "server-ns", (("app", "hello"), ("version", "v1")), "server", data_plane="envoy"
)
THRIFT_HOST = "hello.server-ns.svc.cluster.local"
DUBBO_HOST = "org.apache.dubbo.demo.demoservice"


def as_dict(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(message)
    return out


def findings() -> list[str]:
    return [str(f) for f in envoy_findings(model_of(POLICIES))]


def test_a_node_is_envoy_by_its_user_agent_or_its_metadata() -> None:
    node = base_pb2.Node(id="n", user_agent_name="envoy")
    assert node_identity(node).data_plane == "envoy"
    node.metadata.CopyFrom(struct_pb2.Struct())
    node.metadata.update({"METAMESH_DATA_PLANE": "metamesh"})
    assert node_identity(node).data_plane == "metamesh"
    other = base_pb2.Node(id="m", user_agent_name="metamesh")
    other.metadata.update({"METAMESH_DATA_PLANE": "envoy", "METAMESH_LISTEN_ADDRESS": "127.0.0.9"})
    assert (node_identity(other).data_plane, node_identity(other).listen_address) == (
        "envoy",
        "127.0.0.9",
    )
    assert node_identity(base_pb2.Node(id="x")).data_plane == "metamesh"


def test_thrift_listener_and_routes() -> None:
    resources = translate(model_of(POLICIES), ENVOY)
    listener = resources.listeners["127.0.93.1_9090"]
    names = [f.name for f in listener.filter_chains[0].filters]
    # no workload node: the server-side policies stay on the outbound listener, as metamesh's
    assert names == [
        "envoy.filters.network.rbac",
        "envoy.filters.network.rbac",
        "envoy.filters.network.thrift_proxy",
    ]
    proxy = thrift_proxy_pb2.ThriftProxy()
    listener.filter_chains[0].filters[2].typed_config.Unpack(proxy)
    assert proxy.trds.route_config_name == f"{THRIFT_HOST}_9090"
    assert proxy.transport == thrift_proxy_pb2.AUTO_TRANSPORT
    routes = as_dict(resources.of(THRIFT_ROUTE_TYPE)[f"{THRIFT_HOST}_9090"])["routes"]
    assert routes == [  # the regex-method route is left out
        {
            "match": {
                "methodName": "Calc:add",
                "headers": [{"name": "x-tenant", "prefixMatch": "be"}],
            },
            "route": {
                "cluster": f"outbound|9090||{THRIFT_HOST}",
                "requestMirrorPolicies": [
                    {
                        "cluster": f"outbound|9090||{THRIFT_HOST}",
                        "runtimeFraction": {
                            "defaultValue": {"numerator": 500000, "denominator": "MILLION"}
                        },
                    }
                ],
            },
        }
    ]
    assert f"outbound|9090||{THRIFT_HOST}" in resources.clusters


def test_dubbo_routes_one_configuration_per_meta_route() -> None:
    resources = translate(model_of(POLICIES), ENVOY)
    proxy = dubbo_proxy_pb2.DubboProxy()
    listener = resources.listeners["127.0.93.3_20880"]
    filters = listener.filter_chains[0].filters
    assert filters[-1].name == "envoy.filters.network.dubbo_proxy"  # after the RBAC filters
    filters[-1].typed_config.Unpack(proxy)
    assert proxy.drds.route_config_name == f"{DUBBO_HOST}_20880"
    table = as_dict(resources.of(DUBBO_ROUTE_TYPE)[f"{DUBBO_HOST}_20880"])
    grouped, split = table["routeConfig"]
    assert (grouped["interface"], grouped["version"], grouped["group"]) == (
        "org.apache.*",
        "1.0.0",
        "blue",
    )
    assert grouped["routes"][0]["match"] == {
        "method": {"name": {"safeRegex": {"regex": "say.*"}}},
        "headers": [{"name": "x-tenant", "presentMatch": True}],
    }
    assert grouped["routes"][0]["route"] == {"cluster": f"outbound|20880|v1|{DUBBO_HOST}"}
    assert split["interface"] == "*"
    assert split["routes"][0]["match"] == {"method": {"name": {"safeRegex": {"regex": ".*"}}}}
    assert split["routes"][0]["route"]["weightedClusters"]["clusters"] == [
        {"name": f"outbound|20880|v1|{DUBBO_HOST}", "weight": 30},
        {"name": f"outbound|20880|v2|{DUBBO_HOST}", "weight": 70},
    ]


def test_the_workload_node_gets_rbac_on_its_inbound_listener() -> None:
    resources = translate(model_of(POLICIES), WORKLOAD)
    inbound = resources.listeners["inbound_127.0.93.2_20001"]
    chain = inbound.filter_chains[0]
    assert chain.filter_chain_match.transport_protocol == "tls"  # STRICT
    # Envoy matches transport_protocol only after tls_inspector (the metamesh translation
    # adds it for PERMISSIVE only)
    assert [f.name for f in inbound.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    assert chain.transport_socket.name == "envoy.transport_sockets.tls"
    deny, allow = (rbac_pb2.RBAC(), rbac_pb2.RBAC())
    chain.filters[0].typed_config.Unpack(deny)
    chain.filters[1].typed_config.Unpack(allow)
    assert chain.filters[2].name == "envoy.filters.network.thrift_proxy"
    assert deny.rules.action == deny.rules.DENY and allow.rules.action == allow.rules.ALLOW
    # the DENY rule's operation cannot be matched on a connection: it denies all its sources
    no_admin = as_dict(deny.rules.policies["server-ns/no-admin/0"])
    assert no_admin["permissions"] == [{"any": True}]
    assert no_admin["principals"] == [
        {"notId": {"directRemoteIp": {"addressPrefix": "127.0.0.0", "prefixLen": 8}}}
    ]
    sleep = as_dict(allow.rules.policies["server-ns/only-sleep/0"])["principals"][0]["andIds"]
    assert sleep["ids"][1] == {
        "authenticated": {
            "principalName": {"exact": "spiffe://cluster.local/ns/client-ns/sa/sleep"}
        }
    }
    namespaces = as_dict(allow.rules.policies["server-ns/only-sleep/1"])["principals"][0]
    assert namespaces["andIds"]["ids"][1]["authenticated"]["principalName"] == {
        "safeRegex": {"regex": ".*/ns/client\\-[^/]*/.*"}
    }
    # the outbound listener of a service with workloads: the router only, as in metamesh
    outbound = resources.listeners["127.0.93.1_9090"]
    assert [f.name for f in outbound.filter_chains[0].filters] == [
        "envoy.filters.network.thrift_proxy"
    ]


def test_what_envoy_cannot_do_is_a_finding_naming_resource_field_and_data_plane() -> None:
    found = findings()
    expected = [
        "MetaRouter server-ns/hello: spec.routes[1].match.attributes.method: thrift_proxy "
        "matches the method name exactly or the service name exactly; this route is left out "
        "of Envoy's route table (data plane: envoy)",
        "MetaRouter server-ns/hello: spec.localRateLimit: Envoy has no per-request rate limit "
        "of this kind for this protocol (thrift_proxy: no local one; dubbo_proxy: none); Envoy "
        "nodes do not apply it (data plane: envoy)",
        "MetaRouter server-ns/demo: spec.routes[1].timeout: Envoy's dubbo_proxy has no field "
        "for it; Envoy nodes do not apply it (data plane: envoy)",
        "MetaRouter server-ns/demo: spec.routes[1].retries: Envoy's dubbo_proxy has no field "
        "for it; Envoy nodes do not apply it (data plane: envoy)",
        "MetaAuthorizationPolicy server-ns/no-admin: spec.rules[0].to: a network RBAC filter "
        "cannot match operations; this DENY rule denies every request of its sources on Envoy "
        "nodes (data plane: envoy)",
        "DestinationRule (host org.apache.dubbo.demo.demoservice): "
        "spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName: Envoy's dubbo_proxy "
        "routes have no hash policy: Envoy nodes do not hash on 'x-user' (data plane: envoy)",
    ]
    for line in expected:
        assert line in found, (line, found)
    # the route with the regex is not applied partly either: its timeout is not reported
    assert not [f for f in found if "spec.routes[1].timeout" in f and "hello" in f]


def test_validate_prints_the_findings_at_their_lines(tmp_path: Any) -> None:
    (tmp_path / "mesh.yaml").write_text(POLICIES)
    out = io.StringIO()
    assert envoy_report([str(tmp_path)], out, "default") == 0
    lines = out.getvalue().splitlines()
    timeout = [x for x in lines if "MetaRouter server-ns/demo: spec.routes[1].timeout" in x]
    number = POLICIES.splitlines().index("    timeout: 2s") + 1
    assert timeout and timeout[0].startswith(f"{tmp_path}/mesh.yaml:{number}: warning: ")
    assert lines[-1] == f"{len(lines) - 1} Envoy data-plane warnings"
    assert envoy_report([str(tmp_path)], io.StringIO(), "default", strict=True) == 1
    assert parse_path("spec.routes[0].match.attributes.x-y") == (
        "spec", "routes", 0, "match", "attributes", "x-y"
    )  # fmt: skip


def test_a_listen_address_rebinds_outbound_listeners_only() -> None:
    node = ProxyNode("e", "server-ns", WORKLOAD.labels, "server", data_plane="envoy",
                     listen_address="127.0.0.77")  # fmt: skip
    resources = translate(model_of(POLICIES), node)
    outbound = resources.listeners["127.0.93.1_9090"].address.socket_address
    inbound = resources.listeners["inbound_127.0.93.2_20001"].address.socket_address
    assert (outbound.address, outbound.port_value) == ("127.0.0.77", 9090)
    assert (inbound.address, inbound.port_value) == ("127.0.93.2", 20001)


def test_examples_load_for_envoy_without_errors() -> None:
    assert not load_text(POLICIES).problems


def test_the_validate_command_takes_the_data_plane() -> None:
    examples = str(EXAMPLES)
    plain = run_cli("validate", examples)
    assert plain.returncode == 0 and "data plane: envoy" not in plain.stdout
    envoy = run_cli("validate", "--data-plane", "envoy", "--strict", examples)
    assert envoy.returncode == 1, envoy.stderr  # --strict: the Envoy warnings fail it
    assert "dubbo.yaml:106: warning: MetaRouter meta-dubbo/dubbo-demoservice: spec.routes[1]." \
        "timeout: Envoy's dubbo_proxy has no field for it" in envoy.stdout  # fmt: skip


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "metamesh", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
