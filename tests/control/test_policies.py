"""Traffic policies through the control plane: table tests of the xDS they become, and round
trips model -> xDS -> proxy snapshot asserting the proxy's own config fields."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from google.protobuf import json_format

from metamesh.codecs.message import ErrorKind
from metamesh.control.model import MeshModel
from metamesh.control.to_proxy import (
    XdsConversionError,
    to_cluster,
    to_outlier_detection,
    to_route,
    to_snapshot,
)
from metamesh.control.translate import translate
from metamesh.proxy import config as cfg
from tests.control.cases import model_of, service_entry

KV = "kv.ns.svc.cluster.local"
ALL = f"outbound|7000||{KV}"
EXACT, PREFIX, PRESENT, REGEX = (
    cfg.MatchKind.EXACT,
    cfg.MatchKind.PREFIX,
    cfg.MatchKind.PRESENT,
    cfg.MatchKind.SAFE_REGEX,
)


def as_dict(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


def snapshot(model: MeshModel) -> cfg.Snapshot:
    r = translate(model)
    return to_snapshot(r.listeners.values(), r.clusters.values(), r.endpoints, r.routes.values())


def filters_json(model: MeshModel, listener: str = "127.0.10.9_7000") -> list[dict[str, Any]]:
    value = as_dict(translate(model).listeners[listener])["filter_chains"][0]["filters"][0]
    out: list[dict[str, Any]] = value["typed_config"]["value"]["metaProtocolFilters"]
    return out


def destination_rule(policy: str) -> str:
    return f"""---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: kv, namespace: ns}}
spec:
  host: kv
  trafficPolicy: {policy}
"""


def router(spec: str) -> str:
    return f"""---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: kv, namespace: ns}}
spec:
  hosts: [kv]
{spec}
"""


# --- DestinationRule ---------------------------------------------------------------------

POOL = """
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 250ms}
      http: {http1MaxPendingRequests: 5, http2MaxRequests: 20, maxRequestsPerConnection: 7}
    loadBalancer: {simple: RANDOM}"""


def test_connection_pool_becomes_circuit_breakers_timeout_and_requests_per_connection() -> None:
    model = model_of(service_entry() + destination_rule(POOL))
    cluster = as_dict(translate(model).clusters[ALL])
    assert cluster["circuit_breakers"] == {
        "thresholds": [{"max_connections": 10, "max_pending_requests": 5, "max_requests": 20}]
    }
    assert (cluster["connect_timeout"], cluster["max_requests_per_connection"]) == ("0.250s", 7)
    assert cluster["lb_policy"] == "RANDOM"
    proxy = snapshot(model).clusters[ALL]
    assert proxy.circuit_breakers == cfg.CircuitBreakers(10, 5, 20)
    assert (proxy.connect_timeout, proxy.lb_policy) == (0.25, cfg.LbPolicy.RANDOM)
    assert proxy.max_requests_per_connection == 7


@pytest.mark.parametrize(
    ("simple", "envoy", "proxy"),
    [
        ("ROUND_ROBIN", "ROUND_ROBIN", cfg.LbPolicy.ROUND_ROBIN),
        ("LEAST_CONN", "LEAST_REQUEST", cfg.LbPolicy.LEAST_REQUEST),
        ("LEAST_REQUEST", "LEAST_REQUEST", cfg.LbPolicy.LEAST_REQUEST),
        ("RANDOM", "RANDOM", cfg.LbPolicy.RANDOM),
    ],
)
def test_simple_load_balancer(simple: str, envoy: str, proxy: cfg.LbPolicy) -> None:
    model = model_of(service_entry() + destination_rule(f"{{loadBalancer: {{simple: {simple}}}}}"))
    assert as_dict(translate(model).clusters[ALL]).get("lb_policy", "ROUND_ROBIN") == envoy
    assert snapshot(model).clusters[ALL].lb_policy is proxy


def test_consistent_hash_becomes_ring_hash_and_route_hash_policy() -> None:
    policy = "{loadBalancer: {consistentHash: {httpHeaderName: user, minimumRingSize: 64}}}"
    model = model_of(service_entry() + destination_rule(policy))
    resources = translate(model)
    cluster = as_dict(resources.clusters[ALL])
    assert (cluster["lb_policy"], cluster["ring_hash_lb_config"]) == (
        "RING_HASH",
        {"minimum_ring_size": "64"},
    )
    snap = snapshot(model)
    assert snap.clusters[ALL].lb_policy is cfg.LbPolicy.RING_HASH
    # without a MetaRouter the default route carries no hash policy; with one it does
    model = model_of(
        service_entry()
        + destination_rule(policy)
        + router("  routes: [{name: r, route: [{destination: {host: kv}}]}]")
    )
    (route,) = snapshot(model).route_configs[f"{KV}_7000"].routes
    assert route.route.hash_policy == ("user",)


@pytest.mark.parametrize(
    ("outlier", "envoy", "proxy"),
    [
        (
            "{consecutiveErrors: 3, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 50}",
            {
                "consecutive_5xx": 3,
                "enforcing_consecutive_5xx": 100,
                "interval": "1s",
                "base_ejection_time": "2s",
                "max_ejection_percent": 50,
            },
            cfg.OutlierDetection(3, 1.0, 2.0, 50.0),
        ),
        (
            "{consecutive5xxErrors: 4}",
            {"consecutive_5xx": 4, "enforcing_consecutive_5xx": 100},
            cfg.OutlierDetection(4, 10.0, 30.0, 10.0),
        ),
        (
            "{consecutiveGatewayErrors: 2, baseEjectionTime: 1s}",
            {
                "enforcing_consecutive_5xx": 0,
                "consecutive_gateway_failure": 2,
                "enforcing_consecutive_gateway_failure": 100,
                "base_ejection_time": "1s",
            },
            cfg.OutlierDetection(2, 10.0, 1.0, 10.0),
        ),
        (
            "{consecutive5xxErrors: 6, consecutiveGatewayErrors: 2}",
            {
                "consecutive_5xx": 6,
                "enforcing_consecutive_5xx": 100,
                "consecutive_gateway_failure": 2,
                "enforcing_consecutive_gateway_failure": 100,
            },
            cfg.OutlierDetection(2, 10.0, 30.0, 10.0),
        ),
        (
            "{consecutive5xxErrors: 0}",  # Istio: 0 switches the check off
            {"consecutive_5xx": 0, "enforcing_consecutive_5xx": 0},
            None,
        ),
    ],
)
def test_outlier_detection(
    outlier: str, envoy: dict[str, Any], proxy: cfg.OutlierDetection | None
) -> None:
    model = model_of(service_entry() + destination_rule(f"{{outlierDetection: {outlier}}}"))
    assert as_dict(translate(model).clusters[ALL])["outlier_detection"] == envoy
    assert snapshot(model).clusters[ALL].outlier_detection == proxy


def test_envoy_outlier_defaults_and_local_origin_threshold() -> None:
    cluster = cluster_pb2.Cluster(name="c")
    cluster.outlier_detection.SetInParent()
    assert to_outlier_detection(cluster.outlier_detection) == cfg.OutlierDetection()
    cluster.outlier_detection.split_external_local_origin_errors = True
    cluster.outlier_detection.consecutive_local_origin_failure.value = 2
    assert to_cluster(cluster, None).outlier_detection == cfg.OutlierDetection(2)


# --- route extensions --------------------------------------------------------------------

ROUTES = """  routes:
  - name: slow
    match: {attributes: {method: {exact: slow}}}
    route: [{destination: {host: kv}}]
    timeout: 1500ms
    retries:
      attempts: 3
      perTryTimeout: 200ms
      retryOn: [connect-failure, error-response]
      backoff: {baseInterval: 10ms, maxInterval: 100ms}
      retryNonIdempotent: true
  - name: chaos
    route: [{destination: {host: kv}}]
    fault:
      delay: {fixedDelay: 50ms, percentage: {value: 25}}
      abort: {percentage: {value: 30}}
"""


def test_route_timeout_retries_and_fault_reach_the_proxy() -> None:
    slow, chaos = (
        snapshot(model_of(service_entry() + router(ROUTES))).route_configs[f"{KV}_7000"].routes
    )
    assert slow.route.timeout == 1.5
    assert slow.route.retry_policy == cfg.RetryPolicy(
        num_retries=3,
        retry_on=("connect-failure", "error-response"),
        per_try_timeout=0.2,
        backoff_base=0.01,
        backoff_max=0.1,
        retry_non_idempotent=True,
    )
    assert slow.fault is None and chaos.route.retry_policy is None and chaos.route.timeout is None
    assert chaos.fault == cfg.FaultInjection(
        delay=cfg.FaultDelay(0.05, 25.0),
        abort=cfg.FaultAbort(ErrorKind.FAULT_ABORT, "fault injected", 30.0),
    )


def test_plain_envoy_retry_policy_defaults_and_unknown_conditions() -> None:
    route = rc.Route(name="r")
    route.route.cluster = "c"
    route.route.retry_policy.retry_on = ""
    assert to_route(route, "x").route.retry_policy == cfg.RetryPolicy()
    route.route.retry_policy.retry_on = "5xx,reset"
    with pytest.raises(XdsConversionError, match="retry_on 5xx not supported"):
        to_route(route, "x")


# --- rate limits -------------------------------------------------------------------------

LOCAL = """  localRateLimit:
    tokenBucket: {maxTokens: 5, tokensPerFill: 5, fillInterval: 10s}
    conditions:
    - match: {attributes: {method: {prefix: put}}}
      tokenBucket: {maxTokens: 2, tokensPerFill: 1, fillInterval: 500ms}
"""

GLOBAL = """  globalRateLimit:
    match: {attributes: {method: {exact: get}}}
    domain: kv
    requestTimeout: 50ms
    denyOnFail: true
    rateLimitService: outbound|8081||rls.ns.svc.cluster.local
    descriptors: [{property: user, descriptorKey: user_id}]
"""

RLS = """---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: rls, namespace: ns}
spec:
  hosts: [rls]
  addresses: [127.0.10.10]
  ports: [{number: 8081, name: grpc-rls}]
  resolution: STATIC
  endpoints: [{address: 127.0.30.9}]
"""


def test_local_rate_limit_is_aeraki_local_ratelimit_and_reaches_the_proxy() -> None:
    model = model_of(service_entry() + router(LOCAL))
    limit, router_filter = filters_json(model)
    assert router_filter == {"name": "aeraki.meta_protocol.filters.router"}
    assert limit == {
        "name": "aeraki.meta_protocol.filters.local_ratelimit",
        "config": {
            "@type": "type.googleapis.com/aeraki.meta_protocol_proxy.filters.local_ratelimit"
            ".v1alpha.LocalRateLimit",
            "statPrefix": KV,
            "tokenBucket": {"maxTokens": 5, "tokensPerFill": 5, "fillInterval": "10s"},
            "conditions": [
                {
                    "match": {"metadata": [{"name": "method", "prefixMatch": "put"}]},
                    "tokenBucket": {"maxTokens": 2, "tokensPerFill": 1, "fillInterval": "0.5s"},
                }
            ],
        },
    }
    listener = snapshot(model).listeners["127.0.10.9_7000"]
    assert listener.filter_config("aeraki.meta_protocol.filters.local_ratelimit") == (
        cfg.LocalRateLimitConfig(
            token_bucket=cfg.TokenBucket(5, 5, 10.0),
            conditions=(
                ((cfg.MetadataMatcher("method", PREFIX, "put"),), cfg.TokenBucket(2, 1, 0.5)),
            ),
        )
    )


def test_global_rate_limit_is_aeraki_ratelimit_with_its_service_cluster() -> None:
    model = model_of(service_entry() + router(GLOBAL) + RLS)
    resources = translate(model)
    limit, _ = filters_json(model)
    assert limit == {
        "name": "aeraki.meta_protocol.filters.ratelimit",
        "config": {
            "@type": "type.googleapis.com/aeraki.meta_protocol_proxy.filters.ratelimit.v1alpha"
            ".RateLimit",
            "match": {"metadata": [{"name": "method", "exactMatch": "get"}]},
            "domain": "kv",
            "timeout": "0.05s",
            "failureModeDeny": True,
            "rateLimitService": {
                "grpcService": {
                    "envoyGrpc": {"clusterName": "outbound|8081||rls.ns.svc.cluster.local"}
                },
                "transportApiVersion": "V3",
            },
            "descriptors": [{"property": "user", "descriptorKey": "user_id"}],
        },
    }
    rls = "outbound|8081||rls.ns.svc.cluster.local"
    cluster = as_dict(resources.clusters[rls])
    options = cluster["typed_extension_protocol_options"]
    assert options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
        "explicit_http_config"
    ] == {"http2_protocol_options": {}}
    snap = snapshot(model)
    assert [(e.address, e.port) for e in snap.clusters[rls].endpoints] == [("127.0.30.9", 8081)]
    assert snap.listeners["127.0.10.9_7000"].filter_config(
        "aeraki.meta_protocol.filters.ratelimit"
    ) == cfg.GlobalRateLimitConfig(
        domain="kv",
        match=(cfg.MetadataMatcher("method", EXACT, "get"),),
        descriptors=(("user_id", "user"),),
        timeout=0.05,
        failure_mode_deny=True,
        rate_limit_service=rls,
    )


# --- authorization -----------------------------------------------------------------------


def meta_policy(name: str, spec: str, namespace: str = "ns") -> str:
    return f"""---
apiVersion: metamesh.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {{name: {name}, namespace: {namespace}}}
spec:
{spec}
"""


DENY_PUT = meta_policy(
    "deny-put",
    """  action: DENY
  rules:
  - from: [{source: {ipBlocks: [127.0.0.2/32]}}]
    to: [{operation: {attributes: {method: [{exact: put}, {prefix: del}]}}}]""",
)
ALLOW_V2 = meta_policy(
    "allow-v2",
    """  selector: {matchLabels: {version: v2}}
  rules:
  - to: [{operation: {attributes: {method: {}}, notAttributes: {user: {regex: "admin.*"}}}}]""",
)
DUBBO = """---
apiVersion: dubbo.aeraki.io/v1alpha1
kind: DubboAuthorizationPolicy
metadata: {name: dubbo, namespace: ns}
spec:
  action: ALLOW
  rules:
  - from: [{source: {notIpBlocks: [10.0.0.0/8]}}]
    to: [{operation: {interfaces: [org.demo.*], methods: [sayHello]}}]
"""


def test_authorization_policies_become_an_rbac_filter_first() -> None:
    model = model_of(service_entry() + DENY_PUT + ALLOW_V2 + DUBBO)
    rbac, router_filter = filters_json(model)
    assert router_filter == {"name": "aeraki.meta_protocol.filters.router"}
    assert rbac == {
        "name": "metamesh.filters.rbac",
        "config": {
            "@type": "type.googleapis.com/google.protobuf.Struct",
            "value": {
                "policies": [
                    {
                        "name": "ns/allow-v2",
                        "action": "ALLOW",
                        "rules": [
                            {
                                "to": [
                                    {
                                        "operation": {
                                            "attributes": {"method": [{}]},
                                            "notAttributes": {"user": [{"regex": "admin.*"}]},
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                    {
                        "name": "ns/deny-put",
                        "action": "DENY",
                        "rules": [
                            {
                                "from": [{"source": {"ipBlocks": ["127.0.0.2/32"]}}],
                                "to": [
                                    {
                                        "operation": {
                                            "attributes": {
                                                "method": [{"exact": "put"}, {"prefix": "del"}]
                                            }
                                        }
                                    }
                                ],
                            }
                        ],
                    },
                    {
                        "name": "ns/dubbo",
                        "action": "ALLOW",
                        "rules": [
                            {
                                "from": [{"source": {"notIpBlocks": ["10.0.0.0/8"]}}],
                                "to": [
                                    {
                                        "operation": {
                                            "attributes": {
                                                "interface": [{"prefix": "org.demo."}],
                                                "method": [{"exact": "sayHello"}],
                                            }
                                        }
                                    }
                                ],
                            }
                        ],
                    },
                ]
            },
        },
    }


def test_authorization_round_trip_to_the_proxy_rbac_config() -> None:
    model = model_of(service_entry() + DENY_PUT + ALLOW_V2)
    config = snapshot(model).listeners["127.0.10.9_7000"].filter_config("metamesh.filters.rbac")
    assert config == cfg.RbacConfig(
        (
            cfg.AuthzPolicy(
                "ns/allow-v2",
                "ALLOW",
                (
                    cfg.AuthzRule(
                        operations=(
                            cfg.AuthzOperation(
                                attributes=(("method", (cfg.MetadataMatcher("method", PRESENT),)),),
                                not_attributes=(
                                    ("user", (cfg.MetadataMatcher("user", REGEX, "admin.*"),)),
                                ),
                            ),
                        )
                    ),
                ),
            ),
            cfg.AuthzPolicy(
                "ns/deny-put",
                "DENY",
                (
                    cfg.AuthzRule(
                        sources=(cfg.AuthzSource(ip_blocks=("127.0.0.2/32",)),),
                        operations=(
                            cfg.AuthzOperation(
                                attributes=(
                                    (
                                        "method",
                                        (
                                            cfg.MetadataMatcher("method", EXACT, "put"),
                                            cfg.MetadataMatcher("method", PREFIX, "del"),
                                        ),
                                    ),
                                )
                            ),
                        ),
                    ),
                ),
            ),
        )
    )
    listener = snapshot(model).listeners["127.0.10.9_7000"]
    assert listener.filters == ("metamesh.filters.rbac", "aeraki.meta_protocol.filters.router")


@pytest.mark.parametrize(
    ("policy", "selected"),
    [
        (meta_policy("p", "  action: DENY"), True),  # no selector: every service of ns
        (meta_policy("p", "  selector: {matchLabels: {version: v2}}"), True),  # one endpoint
        (meta_policy("p", "  selector: {matchLabels: {version: v3}}"), False),
        (meta_policy("p", "  selector: {matchLabels: {}}"), True),
        (meta_policy("p", "  action: DENY", namespace="other"), False),
        (meta_policy("p", "  action: DENY", namespace="istio-system"), True),  # root: mesh-wide
    ],
)
def test_which_services_a_policy_selects(policy: str, selected: bool) -> None:
    model = model_of(service_entry() + policy)
    assert bool(model.services[KV].authorization) is selected
    names = [f["name"] for f in filters_json(model)]
    assert ("metamesh.filters.rbac" in names) is selected


def test_filter_order_rbac_local_global_router() -> None:
    model = model_of(service_entry() + router(LOCAL + GLOBAL) + RLS + DENY_PUT)
    assert [f["name"] for f in filters_json(model)] == [
        "metamesh.filters.rbac",
        "aeraki.meta_protocol.filters.local_ratelimit",
        "aeraki.meta_protocol.filters.ratelimit",
        "aeraki.meta_protocol.filters.router",
    ]
    listener = snapshot(model).listeners["127.0.10.9_7000"]
    assert [name for name, _ in listener.filter_configs] == list(listener.filters[:3])


def test_bad_filter_configs_are_rejected_with_the_field_named() -> None:
    resources = translate(model_of(service_entry() + router(LOCAL)))
    listener = resources.listeners["127.0.10.9_7000"]
    broken = type(listener)()
    broken.CopyFrom(listener)
    typed = broken.filter_chains[0].filters[0].typed_config
    from udpa.type.v1 import typed_struct_pb2

    struct = typed_struct_pb2.TypedStruct()
    typed.Unpack(struct)
    value = json_format.MessageToDict(struct.value)
    value["metaProtocolFilters"][0]["config"]["tokenBucket"]["fillInterval"] = "soon"
    struct.value.Clear()
    struct.value.update(value)
    typed.Pack(struct)
    with pytest.raises(XdsConversionError, match=r"config.tokenBucket.fillInterval: not a dur"):
        to_snapshot([broken], [], {}, [])


def test_an_re2_only_regex_in_a_policy_reaches_the_proxy() -> None:
    # RE2 syntax Python's re refuses (\pN: a Unicode class); validation accepts it, so the
    # proxy's read-back of the RBAC filter must not NACK it
    spec = """  action: DENY
  rules:
  - to: [{operation: {attributes: {method: {regex: "\\\\pN+"}}}}]"""
    model = model_of(service_entry() + meta_policy("digits", spec))
    config = snapshot(model).listeners["127.0.10.9_7000"].filter_config("metamesh.filters.rbac")
    assert isinstance(config, cfg.RbacConfig)
    (operation,) = config.policies[0].rules[0].operations
    assert operation.attributes == (("method", (cfg.MetadataMatcher("method", REGEX, r"\pN+"),)),)
