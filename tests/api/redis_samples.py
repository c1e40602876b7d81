"""RedisService / RedisDestination manifests for the API tests, and one sample per field that
is accepted but not applied (merged into tests/api/test_unsupported.py's SAMPLES)."""

from __future__ import annotations

from typing import Any

from metamesh.api import redis
from tests.api.conftest import Docs, Edit, set_path

REDIS_HOST = "redis.ns.svc.cluster.local"


def redis_service() -> dict[str, Any]:
    return {
        "apiVersion": "redis.aeraki.io/v1alpha1",
        "kind": "RedisService",
        "metadata": {"name": "redis", "namespace": "ns"},
        "spec": {
            "host": [REDIS_HOST],
            "redis": [
                {"match": {"key": {"prefix": "a:"}}, "route": {"host": "redis-a"}},
                {"route": {"host": REDIS_HOST}},
            ],
        },
    }


def redis_destination() -> dict[str, Any]:
    return {
        "apiVersion": "redis.aeraki.io/v1alpha1",
        "kind": "RedisDestination",
        "metadata": {"name": "redis", "namespace": "ns"},
        "spec": {"host": REDIS_HOST},
    }


def redis_services() -> dict[str, Any]:
    """The ServiceEntry declaring the Redis hosts the samples name."""
    return {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "ServiceEntry",
        "metadata": {"name": "redis", "namespace": "ns"},
        "spec": {
            "hosts": [REDIS_HOST, "redis-a.ns.svc.cluster.local"],
            "ports": [{"number": 6379, "name": "tcp-redis", "protocol": "TCP"}],
            "resolution": "STATIC",
            "endpoints": [{"address": "127.0.20.9"}],
        },
    }


def redis_edit(key: str, path: str, value: Any) -> Edit:
    """Like ``edit``, adding the RedisService (``rs``) or RedisDestination (``rd``) first."""

    def apply(docs: Docs) -> None:
        docs.setdefault("redis-se", redis_services())
        if key not in docs:
            docs[key] = redis_service() if key == "rs" else redis_destination()
        set_path(docs, key, path, value)

    return apply


SETTINGS = "spec.settings"
POOL = "spec.trafficPolicy.connectionPool.redis"
SECRET = {"file": "/etc/secrets/redis/password"}

REDIS_SAMPLES: dict[Any, tuple[list[Edit], str]] = {
    (redis.RedisSettings, "max_buffer_size_before_flush"): (
        [redis_edit("rs", f"{SETTINGS}.maxBufferSizeBeforeFlush", 1024)],
        f"{SETTINGS}.maxBufferSizeBeforeFlush",
    ),
    (redis.RedisSettings, "buffer_flush_timeout"): (
        [redis_edit("rs", f"{SETTINGS}.bufferFlushTimeout", "3ms")],
        f"{SETTINGS}.bufferFlushTimeout",
    ),
    (redis.RedisSettings, "max_upstream_unknown_connections"): (
        [redis_edit("rs", f"{SETTINGS}.maxUpstreamUnknownConnections", 10)],
        f"{SETTINGS}.maxUpstreamUnknownConnections",
    ),
    (redis.RedisSettings, "enable_hashtagging"): (
        [redis_edit("rs", f"{SETTINGS}.enableHashtagging", True)],
        f"{SETTINGS}.enableHashtagging",
    ),
    (redis.RedisSettings, "enable_redirection"): (
        [redis_edit("rs", f"{SETTINGS}.enableRedirection", True)],
        f"{SETTINGS}.enableRedirection",
    ),
    (redis.SecretAuth, "name"): (
        [redis_edit("rs", f"{SETTINGS}.auth.secret", {**SECRET, "name": "redis-pw"})],
        f"{SETTINGS}.auth.secret.name",
    ),
    (redis.SecretAuth, "password_field"): (
        [redis_edit("rd", f"{POOL}.auth.secret", {**SECRET, "passwordField": "token"})],
        f"{POOL}.auth.secret.passwordField",
    ),
    (redis.SecretAuth, "username_field"): (
        [redis_edit("rd", f"{POOL}.auth.secret", {**SECRET, "usernameField": "user"})],
        f"{POOL}.auth.secret.usernameField",
    ),
    (redis.RedisPoolSettings, "discovery_endpoints"): (
        [redis_edit("rd", f"{POOL}.discoveryEndpoints", ["127.0.0.1:7000"])],
        f"{POOL}.discoveryEndpoints",
    ),
}
