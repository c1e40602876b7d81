"""Round trip: model -> xDS -> the proxy's config snapshot."""

from __future__ import annotations

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from google.protobuf import any_pb2, struct_pb2
from xds.type.v3 import typed_struct_pb2

from metamesh.control.to_proxy import (
    XdsConversionError,
    route_extensions,
    to_listener,
    to_matcher,
    to_snapshot,
)
from metamesh.control.translate import XdsResources, translate
from metamesh.proxy import config as cfg
from tests.control.cases import DUBBO, THRIFT, example_model

V1, V2 = f"outbound|20880|v1|{DUBBO}", f"outbound|20880|v2|{DUBBO}"


def snapshot_of(resources: XdsResources) -> cfg.Snapshot:
    return to_snapshot(
        resources.listeners.values(),
        resources.clusters.values(),
        resources.endpoints,
        resources.routes.values(),
        version="7",
    )


def test_example_round_trip() -> None:
    snap = snapshot_of(translate(example_model()))
    assert snap.version == "7"
    assert snap.listeners["127.0.10.2_20880"] == cfg.Listener(
        name="127.0.10.2_20880",
        address="127.0.10.2",
        port=20880,
        codec="aeraki.meta_protocol.codec.dubbo",
        route_config_name=f"{DUBBO}_20880",
        stat_prefix=f"outbound|20880||{DUBBO}",
        filters=(
            "aeraki.meta_protocol.filters.local_ratelimit",
            "aeraki.meta_protocol.filters.router",
        ),
        filter_configs=(
            (
                "aeraki.meta_protocol.filters.local_ratelimit",
                cfg.LocalRateLimitConfig(
                    conditions=(
                        (
                            (cfg.MetadataMatcher("method", cfg.MatchKind.EXACT, "sayHello"),),
                            cfg.TokenBucket(100, 100, 1.0),
                        ),
                    )
                ),
            ),
        ),
    )
    assert snap.clusters[V2] == cfg.Cluster(
        name=V2,
        endpoints=(
            cfg.Endpoint(
                "127.0.20.4", 20880, 1, (("app", "dubbo-sample-provider"), ("version", "v2"))
            ),
        ),
        lb_policy=cfg.LbPolicy.RING_HASH,
        circuit_breakers=cfg.CircuitBreakers(max_connections=16, max_requests=1000),
        connect_timeout=1.0,
        outlier_detection=cfg.OutlierDetection(5, 5.0, 30.0, 10.0),
    )
    thrift = snap.clusters[f"outbound|9090||{THRIFT}"]
    assert [(e.address, e.port) for e in thrift.endpoints] == [
        ("127.0.20.1", 19090),
        ("127.0.20.2", 19090),
    ]
    assert thrift.lb_policy is cfg.LbPolicy.LEAST_REQUEST
    # consecutiveGatewayErrors only: the gateway threshold is the enforced one
    assert thrift.outlier_detection == cfg.OutlierDetection(5, 10.0, 30.0, 50.0)
    assert snap.route_configs[f"{DUBBO}_20880"] == cfg.RouteConfiguration(
        name=f"{DUBBO}_20880",
        routes=(
            cfg.Route(
                name="say-hello-to-v1",
                match=(
                    cfg.MetadataMatcher(
                        "interface",
                        cfg.MatchKind.EXACT,
                        "org.apache.dubbo.samples.basic.api.DemoService",
                    ),
                    cfg.MetadataMatcher("method", cfg.MatchKind.EXACT, "sayHello"),
                ),
                route=cfg.RouteAction(cluster=V1),
                request_mutation=(("routed-by", "metamesh"),),
            ),
            cfg.Route(
                name="split",
                match=(),
                route=cfg.RouteAction(
                    weighted_clusters=(cfg.WeightedCluster(V1, 20), cfg.WeightedCluster(V2, 80)),
                    timeout=2.0,
                    retry_policy=cfg.RetryPolicy(
                        num_retries=2, retry_on=("connect-failure", "reset"), per_try_timeout=0.5
                    ),
                ),
            ),
        ),
    )


def test_every_route_cluster_and_listener_reference_resolves() -> None:
    snap = snapshot_of(translate(example_model()))
    for listener in snap.listeners.values():
        assert listener.route_config_name in snap.route_configs
    for config in snap.route_configs.values():
        for route in config.routes:
            names = [route.route.cluster] if route.route.cluster else []
            names += [w.name for w in route.route.weighted_clusters]
            assert names and all(n in snap.clusters for n in names)


def test_extensions_read_back() -> None:
    resources = translate(example_model())
    split = resources.routes[f"{DUBBO}_20880"].virtual_hosts[0].routes[1]
    assert route_extensions(split) == {
        "timeout": 2.0,
        "retries": {"attempts": 2, "retryOn": ["connect-failure", "reset"], "perTryTimeout": 0.5},
    }


def test_matchers_string_match_present_and_invert() -> None:
    header = rc.HeaderMatcher(name="k", invert_match=True)
    header.string_match.prefix = "p"
    assert to_matcher(header, "x") == cfg.MetadataMatcher("k", cfg.MatchKind.PREFIX, "p", True)
    absent = rc.HeaderMatcher(name="k", present_match=False)
    assert to_matcher(absent, "x") == cfg.MetadataMatcher("k", cfg.MatchKind.PRESENT, "", True)
    with pytest.raises(XdsConversionError, match="range_match"):
        to_matcher(rc.HeaderMatcher(name="k", range_match={"start": 1, "end": 2}), "x")


def test_listener_with_xds_typed_struct_and_protocol_codec() -> None:
    value = struct_pb2.Struct()
    value.update({"protocol": {"codec": {"name": "thrift"}}, "routeConfig": {"name": "inline"}})
    packed = any_pb2.Any()
    packed.Pack(typed_struct_pb2.TypedStruct(type_url="t", value=value))
    listener = listener_pb2.Listener(name="l")
    listener.filter_chains.add().filters.add(
        name="envoy.filters.network.meta_protocol_proxy", typed_config=packed
    )
    converted = to_listener(listener)
    assert (converted.codec, converted.route_config_name) == ("thrift", "inline")


def _listener(proxy: dict[str, object]) -> listener_pb2.Listener:
    value = struct_pb2.Struct()
    value.update(proxy)
    packed = any_pb2.Any()
    packed.Pack(typed_struct_pb2.TypedStruct(type_url="t", value=value))
    listener = listener_pb2.Listener(name="l")
    listener.filter_chains.add().filters.add(
        name="envoy.filters.network.meta_protocol_proxy", typed_config=packed
    )
    return listener


def test_listener_idle_timeout_as_envoy_reads_it() -> None:
    base = {"codec": {"name": "thrift"}, "rds": {"routeConfigName": "r"}}
    assert to_listener(_listener(base)).idle_timeout is None
    assert to_listener(_listener({**base, "idleTimeout": "1.500s"})).idle_timeout == 1.5
    # 0s is off (absent: the proxy's default)
    assert to_listener(_listener({**base, "idleTimeout": "0s"})).idle_timeout == 0.0
    with pytest.raises(XdsConversionError, match=r"Listener 'l': MetaProtocolProxy.idleTimeout"):
        to_listener(_listener({**base, "idleTimeout": "later"}))
    with pytest.raises(XdsConversionError, match="is negative"):
        to_listener(_listener({**base, "idleTimeout": "-1s"}))


def test_listener_without_meta_protocol_filter_is_rejected() -> None:
    listener = listener_pb2.Listener(name="tcp")
    listener.filter_chains.add().filters.add(name="envoy.filters.network.tcp_proxy")
    with pytest.raises(XdsConversionError, match="Listener 'tcp': no envoy"):
        to_listener(listener)
