"""RedisService / RedisDestination: Aeraki YAML loads, and the validation rules name fields."""

from __future__ import annotations

from typing import Any

import yaml

from metamesh.api import load_text, validate
from metamesh.api.redis import RedisDestination, RedisService
from tests.api.redis_samples import redis_destination, redis_service, redis_services

AERAKI_E2E = """
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisService
metadata: {name: redis-cluster, namespace: redis}
spec:
  host: [redis-cluster.redis.svc.cluster.local]
  settings:
    opTimeout: 1m
    auth: {plain: {password: testredis123!}}
  redis:
  - match: {key: {prefix: cluster, removePrefix: true}}
    route: {host: external-redis.redis.svc.cluster.local, port: 6379}
    mirror:
    - route: {host: redis-single.redis.svc.cluster.local}
      percentage: {value: 50}
      excludeReadCommands: true
  - route: {host: redis-single.redis.svc.cluster.local}
  faults:
  - {type: DELAY, delay: 0.1s, percentage: {value: 10}, commands: [GET]}
  - {type: ERROR, percentage: {value: 5}}
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisDestination
metadata: {name: external-redis, namespace: redis}
spec:
  host: external-redis.redis.svc.cluster.local
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 50, connectTimeout: 1s}
      redis:
        auth:
          secret: {file: /etc/redis/password}
"""


def problems(*docs: dict[str, Any]) -> list[str]:
    text = yaml.safe_dump_all(list(docs), sort_keys=False)
    return [p.format() for p in validate(load_text(text, "r.yaml"))]


def test_aeraki_resources_load_with_their_field_names() -> None:
    se = redis_services()
    se["spec"]["hosts"] = [
        f"{name}.redis.svc.cluster.local"
        for name in ("redis-cluster", "external-redis", "redis-single")
    ]
    se["metadata"]["namespace"] = "redis"
    loaded = load_text(AERAKI_E2E + "---\n" + yaml.safe_dump(se), "redis.yaml")
    assert loaded.problems == []
    (rs,) = loaded.of_kind(RedisService)
    (rd,) = loaded.of_kind(RedisDestination)
    route = rs.spec.redis[0]
    assert route.match and route.match.key and route.match.key.remove_prefix
    assert route.mirror[0].exclude_read_commands and route.mirror[0].percentage
    assert rs.spec.settings and rs.spec.settings.op_timeout == 60.0
    assert [f.type for f in rs.spec.faults] == ["DELAY", "ERROR"]
    pool = rd.spec.traffic_policy.connection_pool  # type: ignore[union-attr]
    assert pool and pool.redis and pool.redis.auth and pool.redis.auth.secret
    assert pool.redis.auth.secret.file == "/etc/redis/password"
    assert validate(loaded) == []


def test_routes_need_a_host_and_prefixes_are_unique() -> None:
    rs = redis_service()
    rs["spec"]["redis"].append({"match": {"key": {"prefix": "a:"}}, "route": {"host": "redis-a"}})
    rs["spec"]["redis"].append({"route": {}})
    found = problems(redis_services(), rs)
    assert any("spec.redis[2]: a second route for prefix 'a:' (routes[0]" in p for p in found)
    assert any("spec.redis[3].route.host: a route needs a destination host" in p for p in found)
    assert any("spec.redis[3]: a second catch-all route (routes[1]" in p for p in found)


def test_auth_is_one_of_secret_or_plain_and_a_secret_needs_a_file() -> None:
    rs = redis_service()
    rs["spec"]["settings"] = {"auth": {"secret": {"name": "pw"}}}
    (error,) = problems(rs)
    assert "spec.settings.auth" in error and "set secret.file" in error
    rd = redis_destination()
    both = {"plain": {"password": "a"}, "secret": {"file": "/x"}}
    rd["spec"]["trafficPolicy"] = {"connectionPool": {"redis": {"auth": both}}}
    (error,) = problems(rd)
    assert "set only one of secret, plain" in error


def test_delay_fault_needs_a_delay_and_bad_enums_are_refused() -> None:
    rs = redis_service()
    rs["spec"]["faults"] = [{"type": "DELAY"}]
    assert any("a DELAY fault needs a delay" in p for p in problems(rs))
    rs["spec"]["faults"] = [{"type": "ABORT"}]
    assert any("spec.faults[0].type" in p for p in problems(rs))
    rd = redis_destination()
    rd["spec"]["host"] = ""
    assert any("spec.host: a RedisDestination needs a host" in p for p in problems(rd))


def test_hosts_must_be_redis_services_and_ports_redis_ports() -> None:
    rs = redis_service()
    rs["spec"]["redis"][0]["route"]["port"] = 7777
    rs["spec"]["redis"].append(
        {
            "match": {"key": {"prefix": "m:"}},
            "route": {"host": "nowhere"},
            "mirror": [{"route": {"host": "x"}}],
        }
    )
    found = problems(redis_services(), rs, {**redis_destination(), "spec": {"host": "elsewhere"}})
    assert any(
        "error: RedisService ns/redis: spec.redis[0].route.port: port 7777 is not a Redis port" in p
        for p in found
    ), found
    assert any(
        "spec.redis[2].route.host: no ServiceEntry declares host 'nowhere' with a tcp-redis port"
        in p
        for p in found
    )
    assert any(
        "spec.redis[2].mirror[0].route.host: no ServiceEntry declares host 'x'" in p for p in found
    )
    assert any(
        "warning: RedisDestination ns/redis: spec.host: no ServiceEntry declares host 'elsewhere'"
        in p
        for p in found
    )
    lonely = problems(redis_service())
    assert any("warning: RedisService ns/redis: spec.host[0]: no ServiceEntry" in p for p in lonely)


def test_a_read_policy_applies_only_where_some_target_is_a_cluster() -> None:
    rs = redis_service()
    rs["spec"]["settings"] = {"readPolicy": "REPLICA"}
    rd = redis_destination()
    warning = "spec.settings.readPolicy: not applied: readPolicy REPLICA reads from replicas"
    assert any(warning in p for p in problems(redis_services(), rs, rd))
    rd["spec"]["trafficPolicy"] = {"connectionPool": {"redis": {"mode": "CLUSTER"}}}
    assert not any("readPolicy" in p for p in problems(redis_services(), rs, rd))
    rs["spec"]["settings"] = {"readPolicy": "MASTER"}  # what a cluster-less service does anyway
    assert not any("readPolicy" in p for p in problems(redis_services(), rs))
