"""Aeraki's ``redis.aeraki.io/v1alpha1`` RedisService and RedisDestination.

A **RedisService** holds the rules of a Redis host that clients call (a ServiceEntry port
named ``tcp-redis*``): ``redis`` routes by key prefix to a destination ``host``/``port``
(optionally cutting the prefix off, ``removePrefix``; a route without ``match`` is the
catch-all), each with mirrors (``percentage``, ``excludeReadCommands``); ``faults`` (DELAY or
ERROR for a share of the requests, optionally only some commands); ``settings`` (``opTimeout``,
``caseInsensitive``, the downstream password ``auth``, ...).

A **RedisDestination** says how to talk to a Redis host: its connection pool (Istio's TCP
settings) and ``redis`` settings: the upstream password (``auth``) and ``mode`` (``PROXY``
or ``CLUSTER``: the host's endpoints are Redis Cluster nodes; requests go to the node that
owns their key's slot, learned from and following ``MOVED``/``ASK``).

Field names and nesting follow Aeraki's protos (``redis/v1alpha1/*.proto``), so Aeraki YAML
loads unchanged. ``Auth.secret`` names a Kubernetes Secret in Aeraki; metamesh reads no
Secrets, so it adds ``secret.file``: a file whose content (trailing newline stripped) is the
password, the way a mounted Secret appears in a pod (``/etc/secrets/redis/password``).

The field registries for :mod:`metamesh.api.unsupported` are kept here (:data:`APPLIED`,
:data:`UNSUPPORTED`), next to the models they describe.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from metamesh.api.base import Resource, SpecModel
from metamesh.api.duration import Duration
from metamesh.api.istio import TcpSettings

REDIS_VERSIONS = ("redis.aeraki.io/v1alpha1",)


class PlainAuth(SpecModel):
    username: str = ""
    password: str = ""


class SecretAuth(SpecModel):
    name: str = ""
    password_field: str = ""
    username_field: str = ""
    #: metamesh extension: the file holding the password (a mounted Secret's key).
    file: str = ""


class Auth(SpecModel):
    """Aeraki's oneof: ``secret`` or ``plain``."""

    secret: SecretAuth | None = None
    plain: PlainAuth | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Auth:
        if self.secret is not None and self.plain is not None:
            raise ValueError("set only one of secret, plain")
        if self.secret is not None and not self.secret.file:
            raise ValueError(
                "secret: metamesh reads no Kubernetes Secrets; set secret.file to the file "
                "holding the password (a mounted Secret's key), or use plain"
            )
        return self


class Percent(SpecModel):
    value: float = Field(default=0.0, ge=0.0, le=100.0)


class RedisSettings(SpecModel):
    case_insensitive: bool = False
    op_timeout: Duration | None = None
    enable_command_stats: bool = False
    max_buffer_size_before_flush: int | None = Field(default=None, ge=0)
    buffer_flush_timeout: Duration | None = None
    max_upstream_unknown_connections: int | None = Field(default=None, ge=0)
    enable_hashtagging: bool = False
    enable_redirection: bool = False
    read_policy: Literal["MASTER", "PREFER_MASTER", "REPLICA", "PREFER_REPLICA", "ANY"] | None = (
        None
    )
    auth: Auth | None = None

    @property
    def reads_replicas(self) -> bool:
        """Whether ``readPolicy`` lets reads go to replicas (set, and not ``MASTER``)."""
        return self.read_policy not in (None, "MASTER")


class KeyMatch(SpecModel):
    prefix: str = ""
    remove_prefix: bool = False


class RouteMatch(SpecModel):
    key: KeyMatch | None = None


class RedisDestinationRef(SpecModel):
    """A route's target: a host (a ServiceEntry's) and its port (0: its first Redis port)."""

    host: str = ""
    port: int = Field(default=0, ge=0, le=65535)


class Mirror(SpecModel):
    route: RedisDestinationRef | None = None
    percentage: Percent | None = None
    exclude_read_commands: bool = False


class RedisRoute(SpecModel):
    match: RouteMatch | None = None
    route: RedisDestinationRef | None = None
    mirror: list[Mirror] = Field(default_factory=list)


class Fault(SpecModel):
    type: Literal["DELAY", "ERROR"] = "ERROR"
    percentage: Percent | None = None
    delay: Duration | None = None
    commands: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _delay_needs_duration(self) -> Fault:
        if self.type == "DELAY" and not self.delay:
            raise ValueError("a DELAY fault needs a delay")
        return self


class RedisServiceSpec(SpecModel):
    host: list[str] = Field(default_factory=list)
    settings: RedisSettings | None = None
    redis: list[RedisRoute] = Field(default_factory=list)
    faults: list[Fault] = Field(default_factory=list)


class RedisService(Resource):
    API_VERSIONS = REDIS_VERSIONS
    KIND = "RedisService"

    spec: RedisServiceSpec


class RedisPoolSettings(SpecModel):
    mode: Literal["PROXY", "CLUSTER"] = "PROXY"
    auth: Auth | None = None
    discovery_endpoints: list[str] = Field(default_factory=list)


class ConnectionPool(SpecModel):
    tcp: TcpSettings | None = None
    redis: RedisPoolSettings | None = None


class RedisTrafficPolicy(SpecModel):
    connection_pool: ConnectionPool | None = None


class RedisDestinationSpec(SpecModel):
    host: str = ""
    traffic_policy: RedisTrafficPolicy | None = None


class RedisDestination(Resource):
    API_VERSIONS = REDIS_VERSIONS
    KIND = "RedisDestination"

    spec: RedisDestinationSpec

    @property
    def cluster_mode(self) -> bool:
        """Whether it says ``connectionPool.redis.mode: CLUSTER``."""
        policy = self.spec.traffic_policy
        pool = policy.connection_pool if policy is not None else None
        return pool is not None and pool.redis is not None and pool.redis.mode == "CLUSTER"


# --- field registries (see metamesh.api.unsupported) --------------------------------------


def _set(value: Any) -> bool:
    return value not in (None, False, "", [], {}, 0)


_ENVOY_BUFFERING = (
    "metamesh writes each turn of its event loop at once; Envoy's request buffering knobs "
    "have no equivalent"
)

#: (model, field) -> why it is accepted but not applied.
UNSUPPORTED: Mapping[tuple[type[BaseModel], str], tuple[str, Any]] = {
    (RedisSettings, "max_buffer_size_before_flush"): (_ENVOY_BUFFERING, _set),
    (RedisSettings, "buffer_flush_timeout"): (_ENVOY_BUFFERING, _set),
    (RedisSettings, "max_upstream_unknown_connections"): (
        "a redirection to a node that is not one of the cluster's endpoints reaches the client",
        _set,
    ),
    (RedisSettings, "enable_hashtagging"): (
        "hashtags are always honoured in CLUSTER mode and never used otherwise",
        _set,
    ),
    (RedisSettings, "enable_redirection"): (
        "MOVED/ASK are followed in CLUSTER mode (RedisDestination) only",
        _set,
    ),
    (SecretAuth, "name"): ("Kubernetes Secrets are not read: secret.file is used", _set),
    (SecretAuth, "password_field"): ("Kubernetes Secrets are not read: the file is used", _set),
    (SecretAuth, "username_field"): (
        "Kubernetes Secrets are not read: only a password comes from secret.file",
        _set,
    ),
    (RedisPoolSettings, "discovery_endpoints"): (
        "the ServiceEntry's endpoints are the cluster's nodes (no CLUSTER SLOTS discovery)",
        _set,
    ),
}

#: model -> the fields the translation acts on.
APPLIED: Mapping[type[BaseModel], frozenset[str]] = {
    RedisService: frozenset({"api_version", "kind", "metadata", "spec"}),
    RedisDestination: frozenset({"api_version", "kind", "metadata", "spec"}),
    PlainAuth: frozenset({"username", "password"}),
    SecretAuth: frozenset({"file"}),
    Auth: frozenset({"secret", "plain"}),
    Percent: frozenset({"value"}),
    # read_policy: in cluster mode (api/redis_rules.py warns where it cannot apply)
    RedisSettings: frozenset(
        {"case_insensitive", "op_timeout", "auth", "enable_command_stats", "read_policy"}
    ),
    KeyMatch: frozenset({"prefix", "remove_prefix"}),
    RouteMatch: frozenset({"key"}),
    RedisDestinationRef: frozenset({"host", "port"}),
    Mirror: frozenset({"route", "percentage", "exclude_read_commands"}),
    RedisRoute: frozenset({"match", "route", "mirror"}),
    Fault: frozenset({"type", "percentage", "delay", "commands"}),
    RedisServiceSpec: frozenset({"host", "settings", "redis", "faults"}),
    RedisPoolSettings: frozenset({"auth", "mode"}),
    ConnectionPool: frozenset({"tcp", "redis"}),
    RedisTrafficPolicy: frozenset({"connection_pool"}),
    RedisDestinationSpec: frozenset({"host", "traffic_policy"}),
}
