"""Model spelling and strictness: camelCase aliases, snake_case accepted, unknown keys named."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from metamesh.api import DestinationRule, MetaRouter, ServiceEntry, StringMatch
from metamesh.api.base import camel_alias
from metamesh.api.istio import OutlierDetection

SE: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1beta1",
    "kind": "ServiceEntry",
    "metadata": {"name": "a", "labels": {"app": "a"}, "annotations": {"x": "y"}, "uid": "123"},
    "spec": {"hosts": ["a.b"], "ports": [{"number": 1, "name": "tcp-x", "targetPort": 2}]},
    "status": {"anything": ["goes"]},
}


def test_camel_alias() -> None:
    assert camel_alias("export_to") == "exportTo"
    assert camel_alias("consecutive_5xx_errors") == "consecutive5xxErrors"
    assert camel_alias("http1_max_pending_requests") == "http1MaxPendingRequests"
    assert camel_alias("from_") == "from"


@pytest.mark.parametrize(
    "version",
    ["networking.istio.io/v1alpha3", "networking.istio.io/v1beta1", "networking.istio.io/v1"],
)
def test_istio_versions(version: str) -> None:
    se = ServiceEntry.model_validate({**SE, "apiVersion": version})
    assert se.spec.ports[0].target_port == 2
    assert se.namespace == "default"
    assert se.metadata.labels == {"app": "a"}


def test_snake_case_names_are_accepted_too() -> None:
    od = OutlierDetection.model_validate({"consecutive_5xx_errors": 3, "baseEjectionTime": "30s"})
    assert od.consecutive_5xx_errors == 3 and od.base_ejection_time == 30.0


def test_unknown_field_is_named() -> None:
    spec = {**SE["spec"], "hostz": ["x"]}
    with pytest.raises(ValidationError) as info:
        ServiceEntry.model_validate({**SE, "spec": spec})
    assert info.value.errors()[0]["loc"] == ("spec", "hostz")
    assert info.value.errors()[0]["type"] == "extra_forbidden"


def test_wrong_api_version() -> None:
    with pytest.raises(ValidationError, match="apiVersion"):
        ServiceEntry.model_validate({**SE, "apiVersion": "metaprotocol.aeraki.io/v1alpha1"})


def test_destination_rule_full_traffic_policy() -> None:
    policy = {
        "loadBalancer": {"simple": "LEAST_CONN"},
        "connectionPool": {
            "tcp": {"maxConnections": 10, "connectTimeout": "250ms"},
            "http": {
                "http1MaxPendingRequests": 1,
                "http2MaxRequests": 2,
                "maxRequestsPerConnection": 3,
                "maxRetries": 4,
                "idleTimeout": "1m",
            },
        },
        "outlierDetection": {
            "consecutiveErrors": 1,
            "consecutive5xxErrors": 2,
            "consecutiveGatewayErrors": 3,
            "interval": "10s",
            "baseEjectionTime": "1m",
            "maxEjectionPercent": 50,
            "minHealthPercent": 10,
        },
        "portLevelSettings": [{"port": {"number": 9090}, "loadBalancer": {"simple": "RANDOM"}}],
        "tls": {"mode": "ISTIO_MUTUAL", "sni": "x"},
    }
    dr = DestinationRule.model_validate(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "d", "namespace": "n"},
            "spec": {
                "host": "h",
                "trafficPolicy": policy,
                "subsets": [
                    {
                        "name": "v1",
                        "labels": {"version": "v1"},
                        "trafficPolicy": {
                            "loadBalancer": {"consistentHash": {"httpHeaderName": "method"}}
                        },
                    }
                ],
                "exportTo": ["."],
                "workloadSelector": {"matchLabels": {"app": "x"}},  # Istio type.v1beta1
            },
        }
    )
    tp = dr.spec.traffic_policy
    assert tp is not None and tp.connection_pool is not None and tp.connection_pool.tcp
    assert tp.connection_pool.tcp.connect_timeout == 0.25
    assert tp.outlier_detection is not None and tp.outlier_detection.consecutive_5xx_errors == 2
    assert dr.spec.hash_key("v1") == "method"
    assert dr.spec.hash_key(None) is None


@pytest.mark.parametrize(
    "hash_spec",
    [
        {"httpCookie": {"name": "c", "ttl": "10s"}},
        {"useSourceIp": True},
        {"httpQueryParameterName": "q"},
        {"httpHeaderName": "m", "ringHash": {"minimumRingSize": 1024}},
        {"httpHeaderName": "m", "maglev": {"tableSize": 65537}},
    ],
)
def test_consistent_hash_forms(hash_spec: dict[str, Any]) -> None:
    from metamesh.api.istio import ConsistentHash

    ConsistentHash.model_validate(hash_spec)


def test_consistent_hash_two_keys_rejected() -> None:
    from metamesh.api.istio import ConsistentHash

    with pytest.raises(ValidationError, match="only one of"):
        ConsistentHash.model_validate({"httpHeaderName": "m", "useSourceIp": True})


def test_bad_enums_are_rejected() -> None:
    with pytest.raises(ValidationError, match="DNS_ROUND_ROBIN"):
        ServiceEntry.model_validate({**SE, "spec": {"hosts": ["a"], "resolution": "dns"}})


def test_string_match_one_of() -> None:
    assert StringMatch().is_presence and StringMatch(regex="*").is_presence
    assert not StringMatch(exact="a").is_presence
    with pytest.raises(ValidationError, match="only one of"):
        StringMatch.model_validate({"exact": "a", "regex": "b"})


def test_plain_aeraki_meta_router_loads() -> None:
    router = MetaRouter.model_validate(
        {
            "apiVersion": "metaprotocol.aeraki.io/v1alpha1",
            "kind": "MetaRouter",
            "metadata": {"name": "r", "namespace": "meta"},
            "spec": {
                "hosts": ["org.apache.dubbo.samples.basic.api.demoservice"],
                "gateways": ["istio-system/gw"],
                "routes": [
                    {
                        "name": "v1",
                        "match": {"attributes": {"method": {"exact": "sayHello"}}},
                        "route": [
                            {
                                "destination": {
                                    "host": "h",
                                    "subset": "v1",
                                    "port": {"number": 20880},
                                }
                            }
                        ],
                        "mirror": {"host": "h", "subset": "v2"},
                        "mirrorPercentage": {"value": 50.0},
                        "requestMutation": [{"key": "foo", "value": "bar"}],
                        "responseMutation": [{"key": "k", "value": "v"}],
                    }
                ],
                "localRateLimit": {
                    "tokenBucket": {"maxTokens": 5, "tokensPerFill": 5, "fillInterval": "60s"},
                    "conditions": [
                        {
                            "match": {"attributes": {"method": {"exact": "sayHello"}}},
                            "tokenBucket": {
                                "maxTokens": 2,
                                "tokensPerFill": 2,
                                "fillInterval": "60s",
                            },
                        }
                    ],
                },
                "globalRateLimit": {
                    "match": {"attributes": {"method": {"exact": "sayHello"}}},
                    "domain": "production",
                    "requestTimeout": "1s",
                    "denyOnFail": True,
                    "rateLimitService": "outbound|8081||rate-limit-server.meta.svc.cluster.local",
                    "descriptors": [{"property": "method", "descriptorKey": "method"}],
                },
                "exportTo": ["meta", "default"],
            },
        }
    )
    route = router.spec.routes[0]
    assert route.mirror_percentage is not None and route.mirror_percentage.value == 50.0
    assert route.timeout is None and route.retries is None and route.fault is None
    assert router.spec.global_rate_limit is not None
    assert router.spec.global_rate_limit.request_timeout == 1.0


def test_models_are_frozen() -> None:
    se = ServiceEntry.model_validate(SE)
    with pytest.raises(ValidationError):
        se.spec.hosts = []


def test_null_values_mean_absent() -> None:
    router = MetaRouter.model_validate(
        {
            "apiVersion": "metaprotocol.aeraki.io/v1alpha1",
            "kind": "MetaRouter",
            "metadata": {"name": "r"},
            "spec": {"hosts": ["a"], "routes": None, "exportTo": None},
        }
    )
    assert router.spec.routes == [] and router.spec.export_to == []
