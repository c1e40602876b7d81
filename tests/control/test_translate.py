"""Table tests: the exact xDS resources the translation produces."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from metamesh.control.translate import ProxyNode, translate
from tests.control.cases import DUBBO, THRIFT, example_model, model_of, service_entry

KV = "kv.ns.svc.cluster.local"


def as_dict(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


def test_example_resource_names() -> None:
    resources = translate(example_model())
    assert list(resources.listeners) == ["127.0.10.1_9090", "127.0.10.2_20880"]
    assert list(resources.clusters) == [
        f"outbound|20880|v1|{DUBBO}",
        f"outbound|20880|v2|{DUBBO}",
        f"outbound|20880||{DUBBO}",
        f"outbound|9090|v1|{THRIFT}",
        f"outbound|9090|v2|{THRIFT}",
        f"outbound|9090||{THRIFT}",
    ]
    assert list(resources.endpoints) == list(resources.clusters)
    assert list(resources.routes) == [f"{DUBBO}_20880", f"{THRIFT}_9090"]


def test_example_thrift_listener_is_aeraki_meta_protocol_proxy() -> None:
    listener = as_dict(translate(example_model()).listeners["127.0.10.1_9090"])
    assert listener == {
        "name": "127.0.10.1_9090",
        "address": {"socket_address": {"address": "127.0.10.1", "port_value": 9090}},
        "traffic_direction": "OUTBOUND",
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.meta_protocol_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                            "type_url": "type.googleapis.com/aeraki.meta_protocol_proxy.v1alpha"
                            ".MetaProtocolProxy",
                            "value": {
                                "statPrefix": f"outbound|9090||{THRIFT}",
                                "applicationProtocol": "thrift",
                                "codec": {"name": "aeraki.meta_protocol.codec.thrift"},
                                "rds": {
                                    "routeConfigName": f"{THRIFT}_9090",
                                    "configSource": {"ads": {}, "resourceApiVersion": "V3"},
                                },
                                "metaProtocolFilters": [
                                    {"name": "aeraki.meta_protocol.filters.router"}
                                ],
                            },
                        },
                    }
                ]
            }
        ],
    }


def test_example_dubbo_listener_carries_local_rate_limit_first() -> None:
    listener = as_dict(translate(example_model()).listeners["127.0.10.2_20880"])
    value = listener["filter_chains"][0]["filters"][0]["typed_config"]["value"]
    limit, router = value["metaProtocolFilters"]
    assert router == {"name": "aeraki.meta_protocol.filters.router"}
    assert limit["name"] == "aeraki.meta_protocol.filters.local_ratelimit"
    assert limit["config"]["conditions"] == [
        {
            "match": {"metadata": [{"name": "method", "exactMatch": "sayHello"}]},
            "tokenBucket": {"maxTokens": 100, "tokensPerFill": 100, "fillInterval": "1s"},
        }
    ]


def test_example_clusters() -> None:
    clusters = translate(example_model()).clusters
    eds = {"eds_config": {"ads": {}, "resource_api_version": "V3"}}
    assert as_dict(clusters[f"outbound|9090|v1|{THRIFT}"]) == {
        "name": f"outbound|9090|v1|{THRIFT}",
        "type": "EDS",
        "eds_cluster_config": eds,
        "connect_timeout": "0.500s",
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {"thresholds": [{"max_connections": 64}]},
        "outlier_detection": {
            "enforcing_consecutive_5xx": 0,
            "consecutive_gateway_failure": 5,
            "enforcing_consecutive_gateway_failure": 100,
            "interval": "10s",
            "base_ejection_time": "30s",
            "max_ejection_percent": 50,
        },
    }
    assert as_dict(clusters[f"outbound|20880|v2|{DUBBO}"]) == {
        "name": f"outbound|20880|v2|{DUBBO}",
        "type": "EDS",
        "eds_cluster_config": eds,
        "connect_timeout": "1s",
        "lb_policy": "RING_HASH",
        "circuit_breakers": {"thresholds": [{"max_connections": 16, "max_requests": 1000}]},
        "outlier_detection": {
            "consecutive_5xx": 5,
            "enforcing_consecutive_5xx": 100,
            "interval": "5s",
            "base_ejection_time": "30s",
        },
    }


def test_example_endpoints_selected_by_subset_labels() -> None:
    endpoints = translate(example_model()).endpoints

    def addresses(name: str) -> list[tuple[str, int, dict[str, Any]]]:
        cla = as_dict(endpoints[name])
        assert cla["cluster_name"] == name
        return [
            (
                e["endpoint"]["address"]["socket_address"]["address"],
                e["endpoint"]["address"]["socket_address"]["port_value"],
                e["metadata"]["filter_metadata"]["envoy.lb"],
            )
            for group in cla["endpoints"]
            for e in group["lb_endpoints"]
        ]

    v1 = {"app": "thrift-sample-server", "version": "v1"}
    v2 = {"app": "thrift-sample-server", "version": "v2"}
    assert addresses(f"outbound|9090||{THRIFT}") == [
        ("127.0.20.1", 19090, v1),
        ("127.0.20.2", 19090, v2),
    ]
    assert addresses(f"outbound|9090|v2|{THRIFT}") == [("127.0.20.2", 19090, v2)]
    assert [a for a, _, _ in addresses(f"outbound|20880|v1|{DUBBO}")] == ["127.0.20.3"]


def test_example_dubbo_routes_in_aeraki_http_shape() -> None:
    config = as_dict(translate(example_model()).routes[f"{DUBBO}_20880"])
    v1, v2 = f"outbound|20880|v1|{DUBBO}", f"outbound|20880|v2|{DUBBO}"
    assert config == {
        "name": f"{DUBBO}_20880",
        "virtual_hosts": [
            {
                "name": "dummy",
                "domains": ["*"],
                "routes": [
                    {
                        "name": "say-hello-to-v1",
                        "match": {
                            "prefix": "/",
                            "headers": [
                                {
                                    "name": "interface",
                                    "exact_match": "org.apache.dubbo.samples.basic.api.DemoService",
                                },
                                {"name": "method", "exact_match": "sayHello"},
                            ],
                        },
                        "route": {"cluster": v1},
                        "request_headers_to_add": [
                            {"header": {"key": "routed-by", "value": "metamesh"}}
                        ],
                    },
                    {
                        "name": "split",
                        "match": {"prefix": "/"},
                        "route": {
                            "weighted_clusters": {
                                "clusters": [
                                    {"name": v1, "weight": 20},
                                    {"name": v2, "weight": 80},
                                ],
                                "total_weight": 100,
                            },
                            "timeout": "2s",
                            "retry_policy": {
                                "retry_on": "connect-failure,reset",
                                "num_retries": 2,
                                "per_try_timeout": "0.500s",
                            },
                        },
                    },
                ],
            }
        ],
    }


ROUTER = """---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {name: kv, namespace: ns}
spec:
  hosts: [kv]
  routes:
  - name: r
    match:
      attributes:
        method: {prefix: get}
        user: {regex: "u[0-9]+"}
        trace: {}
        star: {regex: "*"}
    route: [{destination: {host: kv, subset: v2}}]
    mirror: {host: kv, subset: v1}
    mirrorPercentage: {value: 12.5}
    responseMutation: [{key: served-by, value: kv}]
    retries: {attempts: 1, retryOn: [timeout], backoff: {maxInterval: 1s}, retryNonIdempotent: true}
    fault:
      delay: {fixedDelay: 100ms, percentage: {value: 50}}
      abort: {errorKind: over_limit, message: busy}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: kv, namespace: ns}
spec:
  host: kv
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: user}}}
"""


def test_hand_made_route_matchers_mirror_hash_and_extensions() -> None:
    (route,) = as_dict(translate(model_of(service_entry() + ROUTER)).routes[f"{KV}_7000"])[
        "virtual_hosts"
    ][0]["routes"]
    assert route["match"]["headers"] == [
        {"name": "method", "prefix_match": "get"},
        {"name": "user", "safe_regex_match": {"google_re2": {}, "regex": "u[0-9]+"}},
        {"name": "trace", "present_match": True},
        {"name": "star", "present_match": True},
    ]
    assert route["route"] == {
        "cluster": f"outbound|7000|v2|{KV}",
        "hash_policy": [{"header": {"header_name": "user"}}],
        "request_mirror_policies": [
            {
                "cluster": f"outbound|7000|v1|{KV}",
                "runtime_fraction": {
                    "default_value": {"numerator": 125000, "denominator": "MILLION"}
                },
            }
        ],
        "retry_policy": {
            "retry_on": "timeout",
            "num_retries": 1,
            "retry_back_off": {"base_interval": "0.025s", "max_interval": "1s"},
        },
    }
    assert route["response_headers_to_add"] == [{"header": {"key": "served-by", "value": "kv"}}]
    assert route["metadata"] == {
        "filter_metadata": {
            "metamesh": {
                "retryNonIdempotent": True,
                "fault": {
                    "delay": {"fixedDelay": "0.1s", "percentage": 50.0},
                    "abort": {"errorKind": "over_limit", "message": "busy", "percentage": 100.0},
                },
            }
        }
    }


def test_host_without_router_routes_everything_to_default_cluster() -> None:
    resources = translate(model_of(service_entry()))
    assert as_dict(resources.routes[f"{KV}_7000"])["virtual_hosts"][0]["routes"] == [
        {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": f"outbound|7000||{KV}"}}
    ]
    assert list(resources.clusters) == [f"outbound|7000||{KV}"]
    cla = as_dict(resources.endpoints[f"outbound|7000||{KV}"])
    weights = [
        (e["endpoint"]["address"]["socket_address"]["port_value"], e["load_balancing_weight"])
        for e in cla["endpoints"][0]["lb_endpoints"]
    ]
    assert weights == [(7000, 1), (7001, 3)]


def test_non_metaprotocol_ports_and_invisible_services_produce_nothing() -> None:
    assert not any(translate(model_of(service_entry(port_name="http-web"))).by_type.values())
    private = model_of(service_entry(extra="  exportTo: ['.']"))
    assert translate(private, ProxyNode("n", namespace="ns")).listeners
    assert not translate(private, ProxyNode("n", namespace="other")).listeners


@pytest.mark.parametrize("resolution", ["DNS", "DNS_ROUND_ROBIN"])
def test_dns_resolution_gives_strict_dns_cluster_with_inline_endpoints(resolution: str) -> None:
    text = service_entry().replace("resolution: STATIC", f"resolution: {resolution}")
    resources = translate(model_of(text))
    cluster = as_dict(resources.clusters[f"outbound|7000||{KV}"])
    assert cluster["type"] == "STRICT_DNS"
    assert len(cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 2
    assert not resources.endpoints


def test_translation_is_deterministic() -> None:
    assert translate(example_model()) == translate(example_model())
