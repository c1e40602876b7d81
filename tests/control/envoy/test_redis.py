"""RedisService / RedisDestination -> Envoy's ``redis_proxy`` listeners and clusters (table tests).

The real Envoy loading these (and serving real redis-server backends through them) is
``test_redis_envoy.py``; here each field's place in Envoy's config is checked.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.redis_proxy.v3 import redis_proxy_pb2

from metamesh.api import load_text, validate
from metamesh.api.redis import RedisDestination, RedisService
from metamesh.control.envoy.findings import Findings
from metamesh.control.envoy.redis import (
    REDIS_CLUSTER_TYPE,
    REDIS_PROXY_FILTER,
    envoy_redis_findings,
    redis_resources,
)
from metamesh.control.model import build_model
from metamesh.xds.resources import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ProxyNode

RedisProxy = redis_proxy_pb2.RedisProxy
MAIN = "outbound|6379||redis.ns.svc.cluster.local"
A = "outbound|6380||redis-a.ns.svc.cluster.local"

SERVICES = """
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: redis, namespace: ns}
spec:
  hosts: [redis.ns.svc.cluster.local]
  addresses: [127.0.30.1]
  ports: [{number: 6379, name: tcp-redis, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {tcp-redis: 7000}}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: redis-a, namespace: ns}
spec:
  hosts: [redis-a.ns.svc.cluster.local]
  addresses: [127.0.30.2]
  ports: [{number: 6380, name: tcp-redis-a, protocol: TCP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {tcp-redis-a: 7001}}
  - {address: 127.0.0.2, ports: {tcp-redis-a: 7002}}
"""

SERVICE = """
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisService
metadata: {name: redis, namespace: ns}
spec:
  host: [redis]
  settings:
    opTimeout: 2s
    caseInsensitive: true
    enableCommandStats: true
    enableHashtagging: true
    maxBufferSizeBeforeFlush: 1024
    bufferFlushTimeout: 3ms
    auth: {plain: {username: app, password: down}}
  redis:
  - route: {host: redis}
    mirror:
    - {route: {host: redis-a}, percentage: {value: 25}, excludeReadCommands: true}
  - match: {key: {prefix: "User:", removePrefix: true}}
    route: {host: redis-a}
  - match: {key: {prefix: "U"}}
    route: {host: redis-a, port: 6380}
  faults:
  - {type: ERROR, percentage: {value: 30}, commands: [GET, hgetall]}
  - {type: DELAY, delay: 50ms, percentage: {value: 10}}
"""


def resources(extra: str = "") -> dict[str, dict[str, Any]]:
    loaded = load_text(SERVICES + extra, "mesh.yaml")
    assert [p.format() for p in validate(loaded) if p.is_error] == []
    return redis_resources(build_model(loaded), ProxyNode(data_plane="envoy"))


def proxy_of(tables: dict[str, dict[str, Any]], name: str = "127.0.30.1_6379") -> Any:
    listener = tables[LISTENER_TYPE][name]
    (chain,) = listener.filter_chains
    (network_filter,) = chain.filters
    assert network_filter.name == REDIS_PROXY_FILTER
    proxy = RedisProxy()
    assert network_filter.typed_config.Unpack(proxy)
    return proxy


def test_without_redis_service_everything_goes_to_the_own_cluster_with_aerakis_timeout() -> None:
    tables = resources()
    proxy = proxy_of(tables)
    assert proxy.stat_prefix == MAIN
    assert proxy.prefix_routes.catch_all_route.cluster == MAIN
    assert list(proxy.prefix_routes.routes) == []
    assert proxy.settings.op_timeout.seconds == 60
    assert not proxy.settings.enable_redirection
    assert proxy.downstream_auth_passwords == []
    assert set(tables[LISTENER_TYPE]) == {"127.0.30.1_6379", "127.0.30.2_6380"}
    assert set(tables[CLUSTER_TYPE]) == {MAIN, A}
    cla = tables[ENDPOINT_TYPE][A]
    got = [e.endpoint.address.socket_address for g in cla.endpoints for e in g.lb_endpoints]
    assert [(s.address, s.port_value) for s in got] == [("127.0.0.1", 7001), ("127.0.0.2", 7002)]


def test_routes_mirrors_faults_settings_and_downstream_auth() -> None:
    proxy = proxy_of(resources(SERVICE))
    routes = proxy.prefix_routes
    assert routes.case_insensitive
    assert [(r.prefix, r.remove_prefix, r.cluster) for r in routes.routes] == [
        ("User:", True, A),
        ("U", False, A),
    ]
    catch_all = routes.catch_all_route
    assert catch_all.cluster == MAIN
    (mirror,) = catch_all.request_mirror_policy
    assert mirror.cluster == A and mirror.exclude_read_commands
    assert mirror.runtime_fraction.default_value.numerator == 250_000
    assert mirror.runtime_fraction.default_value.denominator == 2  # MILLION
    error, delay = proxy.faults
    assert error.fault_type == RedisProxy.RedisFault.ERROR
    assert list(error.commands) == ["get", "hgetall"]
    assert error.fault_enabled.default_value.numerator == 300_000
    assert delay.fault_type == RedisProxy.RedisFault.DELAY and list(delay.commands) == []
    assert delay.delay.ToMilliseconds() == 50
    settings = proxy.settings
    assert settings.op_timeout.ToMilliseconds() == 2000
    assert settings.enable_command_stats and settings.enable_hashtagging
    assert settings.max_buffer_size_before_flush == 1024
    assert settings.buffer_flush_timeout.ToMilliseconds() == 3
    ((password,), user) = proxy.downstream_auth_passwords, proxy.downstream_auth_username
    assert password.inline_string == "down" and user.inline_string == "app"


def test_secret_files_are_read_by_envoy_and_upstream_auth_rides_on_the_cluster() -> None:
    extra = """
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisService
metadata: {name: redis, namespace: ns}
spec:
  host: [redis]
  settings: {auth: {secret: {file: /run/down-pw}}}
  redis:
  - match: {key: {prefix: "a:"}}
    route: {host: redis-a}
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisDestination
metadata: {name: redis-a, namespace: ns}
spec:
  host: redis-a
  trafficPolicy:
    connectionPool:
      tcp: {connectTimeout: 700ms}
      redis: {auth: {secret: {file: /run/up-pw}}}
"""
    tables = resources(extra)
    proxy = proxy_of(tables)
    (password,) = proxy.downstream_auth_passwords
    assert password.filename == "/run/down-pw"
    assert not proxy.prefix_routes.HasField("catch_all_route")  # no catch-all: none invented
    cluster = tables[CLUSTER_TYPE][A]
    assert cluster.connect_timeout.ToMilliseconds() == 700
    options = redis_proxy_pb2.RedisProtocolOptions()
    assert cluster.typed_extension_protocol_options[REDIS_PROXY_FILTER].Unpack(options)
    assert options.auth_password.filename == "/run/up-pw"
    loaded = load_text(SERVICES + extra, "mesh.yaml")
    for kind, path in (
        (RedisService, ("spec", "settings", "auth", "secret", "file")),
        (RedisDestination, ("spec", "trafficPolicy", "connectionPool", "redis", "auth")),
    ):
        (resource,) = loaded.of_kind(kind)
        (finding,) = [m for p, m in envoy_redis_findings(resource) if p[: len(path)] == path]
        assert "trailing newline" in finding and "redis_proxy" in finding


CLUSTER_MODE = """
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisService
metadata: {name: redis, namespace: ns}
spec:
  host: [redis]
  settings: {readPolicy: PREFER_REPLICA}
  redis:
  - match: {key: {prefix: "c:"}}
    route: {host: redis-a}
  - route: {host: redis}
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisDestination
metadata: {name: redis-a, namespace: ns}
spec:
  host: redis-a
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 4}
      redis: {mode: CLUSTER%s}
"""


def test_cluster_mode_is_envoys_redis_cluster_seeded_with_the_endpoints() -> None:
    tables = resources(CLUSTER_MODE % "")
    cluster = tables[CLUSTER_TYPE][A]
    assert cluster.cluster_type.name == REDIS_CLUSTER_TYPE
    assert cluster.lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED
    assert not cluster.HasField("eds_cluster_config")
    seeds = [
        e.endpoint.address.socket_address.port_value
        for g in cluster.load_assignment.endpoints
        for e in g.lb_endpoints
    ]
    assert seeds == [7001, 7002]
    assert A not in tables[ENDPOINT_TYPE] and MAIN in tables[ENDPOINT_TYPE]
    proxy = proxy_of(tables)
    assert proxy.settings.enable_redirection  # metamesh follows MOVED/ASK in CLUSTER mode
    assert proxy.settings.read_policy == RedisProxy.ConnPoolSettings.PREFER_REPLICA


def test_discovery_endpoints_seed_the_cluster_and_what_envoy_cannot_do_is_a_warning() -> None:
    extra = CLUSTER_MODE % ", discoveryEndpoints: ['127.0.0.9:7100', 'nonsense']"
    tables = resources(extra)
    cluster = tables[CLUSTER_TYPE][A]
    (seed,) = [
        e.endpoint.address.socket_address for e in cluster.load_assignment.endpoints[0].lb_endpoints
    ]
    assert (seed.address, seed.port_value) == ("127.0.0.9", 7100)
    loaded = load_text(SERVICES + extra, "mesh.yaml")
    (rd,) = loaded.of_kind(RedisDestination)
    found = dict(envoy_redis_findings(rd))
    pool = ("spec", "trafficPolicy", "connectionPool")
    assert "redis_proxy" in found[(*pool, "tcp", "maxConnections")]
    assert "nonsense" in found[(*pool, "redis", "discoveryEndpoints")]


def test_a_node_without_outbound_or_not_seeing_the_service_gets_nothing() -> None:
    loaded = load_text(SERVICES, "mesh.yaml")
    model = build_model(loaded)
    assert redis_resources(model, ProxyNode(outbound=False))[LISTENER_TYPE] == {}


def test_a_listen_address_override_moves_the_listener_not_its_name() -> None:
    loaded = load_text(SERVICES, "mesh.yaml")
    tables = redis_resources(build_model(loaded), ProxyNode(), lambda a: "127.0.99.1")
    listener = tables[LISTENER_TYPE]["127.0.30.1_6379"]
    assert listener.address.socket_address.address == "127.0.99.1"
    assert listener.address.socket_address.port_value == 6379


def test_listeners_moved_onto_one_address_and_port_keep_the_first_and_say_so() -> None:
    loaded = load_text(SERVICES.replace("number: 6380", "number: 6379"), "mesh.yaml")
    notes = Findings()
    tables = redis_resources(build_model(loaded), ProxyNode(), lambda a: "127.0.99.1", notes)
    assert list(tables[LISTENER_TYPE]) == ["127.0.30.1_6379"]
    (finding,) = notes
    assert finding.resource == "Listener 127.0.30.2_6379" and "127.0.99.1:6379" in finding.message


def test_a_redis_service_without_routes_to_a_cluster_mode_host_follows_redirections() -> None:
    extra = """
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisService
metadata: {name: redis, namespace: ns}
spec:
  host: [redis]
  settings: {opTimeout: 1s}
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisDestination
metadata: {name: redis, namespace: ns}
spec:
  host: redis
  trafficPolicy: {connectionPool: {redis: {mode: CLUSTER}}}
"""
    proxy = proxy_of(resources(extra))
    assert proxy.prefix_routes.catch_all_route.cluster == MAIN
    assert proxy.settings.enable_redirection and proxy.settings.op_timeout.seconds == 1
