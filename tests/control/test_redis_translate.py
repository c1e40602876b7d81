"""Redis ports, RedisService and RedisDestination -> xDS -> the proxy's config (table tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from metamesh.api import load_text, validate
from metamesh.control.model import build_model
from metamesh.control.to_proxy import XdsConversionError, to_snapshot
from metamesh.control.translate import translate
from metamesh.proxy import config as cfg

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
  endpoints: [{address: 127.0.0.1, ports: {tcp-redis-a: 7001}}]
"""


def snapshot(extra: str = "") -> cfg.Snapshot:
    loaded = load_text(SERVICES + extra, "mesh.yaml")
    assert [p.format() for p in validate(loaded) if p.is_error] == []
    x = translate(build_model(loaded))
    return to_snapshot(x.listeners.values(), x.clusters.values(), x.endpoints, x.routes.values())


def routes(snap: cfg.Snapshot) -> list[cfg.Route]:
    return list(snap.route_configs["redis.ns.svc.cluster.local_6379"].routes)


def test_a_redis_port_without_redis_service_routes_everything_to_its_own_cluster() -> None:
    snap = snapshot()
    listener = snap.listeners["127.0.30.1_6379"]
    assert listener.codec == "aeraki.meta_protocol.codec.redis" and listener.codec_options == ()
    (route,) = routes(snap)
    assert route.match == () and route.route.cluster == "outbound|6379||redis.ns.svc.cluster.local"
    cluster = snap.clusters["outbound|6379||redis.ns.svc.cluster.local"]
    assert [(e.address, e.port) for e in cluster.endpoints] == [("127.0.0.1", 7000)]
    assert cluster.protocol_options == ()


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
    auth: {plain: {username: app, password: down}}
  redis:
  - route: {host: redis}
    mirror:
    - {route: {host: redis-a}, percentage: {value: 25}, excludeReadCommands: true}
    - {route: {host: redis-a, port: 6380}}
  - match: {key: {prefix: "User:", removePrefix: true}}
    route: {host: redis-a}
  faults:
  - {type: ERROR, percentage: {value: 30}, commands: [GET, hgetall]}
  - {type: DELAY, delay: 0.25s, percentage: {value: 10}}
"""


def test_redis_service_routes_mirrors_faults_and_settings() -> None:
    snap = snapshot(SERVICE)
    listener = snap.listeners["127.0.30.1_6379"]
    assert dict(listener.codec_options) == {
        "auth_password": "down",
        "auth_username": "app",
        "case_insensitive": "true",
        "route_prefixes": "User:",
    }
    assert listener.filters == (
        "metamesh.filters.command_stats",
        "aeraki.meta_protocol.filters.router",
    )
    assert snapshot().listeners["127.0.30.1_6379"].filters == (
        "aeraki.meta_protocol.filters.router",
    )
    got = routes(snap)
    names = [r.name for r in got]
    # prefix routes first, the catch-all last; command faults before the general fault;
    # writes (every mirror) before the rest (mirrors without excludeReadCommands)
    assert names == [
        "redis-1-fault-0",
        "redis-1",
        "redis-0-writes-fault-0",
        "redis-0-writes",
        "redis-0-fault-0",
        "redis-0",
    ]
    prefix = got[1]
    assert prefix.match == (cfg.MetadataMatcher("key", cfg.MatchKind.PREFIX, "user:"),)
    assert prefix.route.cluster == "outbound|6380||redis-a.ns.svc.cluster.local"
    assert prefix.request_mutation == (("redis-remove-prefix", "User:"),)
    assert prefix.route.timeout == 2.0
    assert prefix.fault == cfg.FaultInjection(delay=cfg.FaultDelay(0.25, 10.0))
    command_fault = got[0]
    assert command_fault.match[1] == cfg.MetadataMatcher(
        "command", cfg.MatchKind.SAFE_REGEX, "^(get|hgetall)$"
    )
    assert command_fault.fault == cfg.FaultInjection(
        abort=cfg.FaultAbort(message="Error", percent=30.0)
    )
    writes = got[3]
    assert writes.match == (cfg.MetadataMatcher("access", cfg.MatchKind.EXACT, "write"),)
    mirror_a = "outbound|6380||redis-a.ns.svc.cluster.local"
    assert writes.route.request_mirror_policies == (
        cfg.RequestMirrorPolicy(mirror_a, 25.0),
        cfg.RequestMirrorPolicy(mirror_a, 100.0),
    )
    assert got[5].route.request_mirror_policies == (cfg.RequestMirrorPolicy(mirror_a, 100.0),)
    assert got[5].match == ()


def test_redis_destination_pool_and_upstream_auth_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    snap = snapshot(
        f"""
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisDestination
metadata: {{name: redis-a, namespace: ns}}
spec:
  host: redis-a
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: 3, connectTimeout: 0.5s}}
      redis: {{auth: {{secret: {{file: {secret}}}}}}}
"""
    )
    cluster = snap.clusters["outbound|6380||redis-a.ns.svc.cluster.local"]
    assert cluster.protocol_options == (("auth_password", "from-file"),)
    assert cluster.circuit_breakers.max_connections == 3 and cluster.connect_timeout == 0.5


def test_an_unreadable_password_file_is_a_conversion_error_naming_the_cluster() -> None:
    with pytest.raises(XdsConversionError, match=r"redis-a.*cannot read password file /non"):
        snapshot(
            """
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisDestination
metadata: {name: redis-a, namespace: ns}
spec:
  host: redis-a
  trafficPolicy: {connectionPool: {redis: {auth: {secret: {file: /nonexistent/pw}}}}}
"""
        )


def test_the_longest_prefix_route_comes_first() -> None:
    snap = snapshot(
        """
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisService
metadata: {name: redis, namespace: ns}
spec:
  host: [redis]
  redis:
  - {route: {host: redis}}
  - {match: {key: {prefix: "a"}}, route: {host: redis}}
  - {match: {key: {prefix: "ab:"}}, route: {host: redis-a}}
  - {match: {key: {prefix: "a:"}}, route: {host: redis-a}}
"""
    )
    assert [r.match[0].value if r.match else "" for r in routes(snap)] == ["ab:", "a:", "a", ""]
    options = dict(snap.listeners["127.0.30.1_6379"].codec_options)
    assert options["route_prefixes"].split("\n") == ["a", "ab:", "a:"]


def test_a_read_policy_reaches_the_listener_and_makes_the_clusters_connections_readonly() -> None:
    cluster_a = """
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisDestination
metadata: {name: redis-a, namespace: ns}
spec:
  host: redis-a
  trafficPolicy: {connectionPool: {redis: {mode: CLUSTER}}}
"""
    reading = """
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisService
metadata: {name: redis, namespace: ns}
spec:
  host: [redis]
  settings: {readPolicy: PREFER_REPLICA}
  redis: [{route: {host: redis-a}}]
"""
    snap = snapshot(cluster_a + reading)
    options = dict(snap.listeners["127.0.30.1_6379"].codec_options)
    assert options["mode"] == "CLUSTER" and options["read_policy"] == "PREFER_REPLICA"
    cluster = snap.clusters["outbound|6380||redis-a.ns.svc.cluster.local"]
    assert cluster.protocol_options == (("mode", "CLUSTER"), ("readonly", "true"))
    # no listener reading from replicas: the cluster's connections stay as they were
    snap = snapshot(cluster_a + reading.replace("PREFER_REPLICA", "MASTER"))
    assert "read_policy" not in dict(snap.listeners["127.0.30.1_6379"].codec_options)
    cluster = snap.clusters["outbound|6380||redis-a.ns.svc.cluster.local"]
    assert cluster.protocol_options == (("mode", "CLUSTER"),)
