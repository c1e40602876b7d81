"""The proxy's configuration snapshot: immutable, Envoy-v3-shaped, swapped as a whole.

A :class:`Snapshot` holds every listener, cluster and route configuration the data plane needs.
The classes are frozen, slotted dataclasses that follow Envoy's v3 resources (``Listener``,
``Cluster`` with ``ClusterLoadAssignment`` and circuit-breaker thresholds, Aeraki's MetaProtocol
``RouteConfiguration``), with field names in Envoy's snake_case, so the static YAML loader
(:mod:`metamesh.proxy.config_yaml`) and a later xDS client can both produce the same objects.

Nothing here is mutated after construction: the runtime builds a new snapshot and hands it to the
core, which swaps its compiled tables in one assignment. In-flight requests keep the route they
matched; open connections are never closed by a swap.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from metamesh.codecs.message import ErrorKind


class LbPolicy(enum.Enum):
    """Envoy's ``Cluster.LbPolicy`` names (the subset metamesh implements)."""

    ROUND_ROBIN = "ROUND_ROBIN"
    RANDOM = "RANDOM"
    LEAST_REQUEST = "LEAST_REQUEST"
    RING_HASH = "RING_HASH"


class MatchKind(enum.Enum):
    """How a metadata matcher compares (Envoy ``HeaderMatcher`` variants)."""

    EXACT = "exact"
    PREFIX = "prefix"
    SAFE_REGEX = "safe_regex"
    PRESENT = "present"


@dataclass(frozen=True, slots=True)
class MetadataMatcher:
    """One condition on a request's metadata key; ``invert`` negates it (``invert_match``)."""

    name: str
    kind: MatchKind
    value: str = ""
    invert: bool = False


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    name: str
    weight: int


@dataclass(frozen=True, slots=True)
class RequestMirrorPolicy:
    """Send a copy of the request to ``cluster`` for ``percent`` of requests (0-100)."""

    cluster: str
    percent: float = 100.0


#: What a retry policy may retry on (metamesh's ``retryOn`` values).
RETRY_ON_VALUES: Final = ("connect-failure", "reset", "error-response", "timeout")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Envoy-shaped ``RouteAction.retry_policy`` (metamesh's retry conditions).

    ``num_retries`` extra attempts after the first; ``per_try_timeout`` bounds each attempt;
    the wait before retry *n* is drawn uniformly from ``[0, min(backoff_max, backoff_base *
    2**(n-1))]`` (Envoy's fully jittered exponential back-off). A request that already
    reached an upstream is only retried when ``retry_non_idempotent`` is set; a connect
    failure never reached one, so it is always safe to retry.
    """

    num_retries: int = 1
    retry_on: tuple[str, ...] = ("connect-failure", "reset")
    per_try_timeout: float | None = None
    backoff_base: float = 0.025
    backoff_max: float | None = None  # None: 10 x backoff_base, as in Envoy
    retry_non_idempotent: bool = False


@dataclass(frozen=True, slots=True)
class RouteAction:
    """Where a matched request goes: exactly one of ``cluster`` / ``weighted_clusters``.

    ``timeout`` (seconds, ``None`` = no limit) bounds the whole request, retries included;
    ``retry_policy`` says when a failed attempt is tried again.
    """

    cluster: str = ""
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    hash_policy: tuple[str, ...] = ()
    request_mirror_policies: tuple[RequestMirrorPolicy, ...] = ()
    timeout: float | None = None
    retry_policy: RetryPolicy | None = None


@dataclass(frozen=True, slots=True)
class FaultDelay:
    """Hold ``percent`` of the route's requests for ``fixed_delay`` seconds."""

    fixed_delay: float
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class FaultAbort:
    """Answer ``percent`` of the route's requests with a local ``kind`` error reply."""

    kind: ErrorKind = ErrorKind.FAULT_ABORT
    message: str = "fault injected"
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class FaultInjection:
    """metamesh's route-level fault injection (applied by ``metamesh.filters.fault``)."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """A MetaProtocol route: all matchers ANDed (none = match all), then the action."""

    name: str
    match: tuple[MetadataMatcher, ...]
    route: RouteAction
    request_mutation: tuple[tuple[str, str], ...] = ()
    response_mutation: tuple[tuple[str, str], ...] = ()
    fault: FaultInjection | None = None


@dataclass(frozen=True, slots=True)
class RouteConfiguration:
    name: str
    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int
    weight: int = 1
    labels: tuple[tuple[str, str], ...] = ()
    #: Envoy's ``envoy.transport_socket_match`` metadata (``tlsMode: istio`` for a mesh
    #: workload), which :attr:`Cluster.tls_endpoint_match` is matched against.
    transport_match: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class CircuitBreakers:
    """Envoy's default-priority thresholds (Envoy's defaults: 1024 each)."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Passive health checking (Envoy ``OutlierDetection``, consecutive-errors flavour).

    An endpoint that fails ``consecutive_errors`` requests in a row (error responses, resets,
    connect failures, per-try timeouts) is ejected for ``base_ejection_time`` x the number of
    times it has been ejected; that count drops by one for every ``interval`` the endpoint
    stays in service. At most ``max_ejection_percent`` of the endpoints are ejected at once,
    but always at least one may be (Envoy's rule).
    """

    consecutive_errors: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: float = 10.0


@dataclass(frozen=True, slots=True)
class Cluster:
    """An upstream cluster; ``name`` follows Istio: ``outbound|<port>|<subset>|<host>``."""

    name: str
    endpoints: tuple[Endpoint, ...]
    lb_policy: LbPolicy = LbPolicy.ROUND_ROBIN
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    connect_timeout: float = 5.0
    outlier_detection: OutlierDetection | None = None
    #: Requests one upstream connection carries before it is drained and replaced (Envoy's
    #: ``Cluster.max_requests_per_connection``); ``None`` or 0: unlimited.
    max_requests_per_connection: int | None = None
    #: Connections to the endpoints: "" plaintext, "ISTIO_MUTUAL" mutual TLS with the proxy's
    #: workload certificate, the peer verified against the mesh root; "SIMPLE" / "MUTUAL"
    #: TLS with :attr:`tls_files` (DestinationRule ``trafficPolicy.tls.mode``).
    tls_mode: str = ""
    #: The SNI sent ("" none) and the SANs the peer certificate must carry one of (URI or
    #: DNS names; empty: any, for ISTIO_MUTUAL any SPIFFE id of the trust domain).
    tls_sni: str = ""
    tls_subject_alt_names: tuple[str, ...] = ()
    #: SIMPLE / MUTUAL: (client certificate, private key, CA certificates) paths, "" unset.
    tls_files: tuple[str, str, str] = ("", "", "")
    #: TLS only to the endpoints whose ``transport_match`` has these pairs (Istio's auto
    #: mTLS: ``tlsMode: istio``); empty: to every endpoint.
    tls_endpoint_match: tuple[tuple[str, str], ...] = ()
    #: Protocol options for the codec of each upstream connection (Envoy's
    #: ``typed_extension_protocol_options``; Redis: ``auth_username``/``auth_password``),
    #: given to ``Codec.upstream_preamble``.
    protocol_options: tuple[tuple[str, str], ...] = ()

    @property
    def protocol_options_map(self) -> dict[str, str]:
        return dict(self.protocol_options)

    def tls_for(self, endpoint: Endpoint) -> bool:
        """Whether connections to ``endpoint`` use this cluster's TLS."""
        if not self.tls_mode:
            return False
        return all(pair in endpoint.transport_match for pair in self.tls_endpoint_match)

    @property
    def service(self) -> str:
        """Host part (after the last ``|``): Istio's ``destination_service``."""
        return self.name.rsplit("|", 1)[-1]

    @property
    def subset(self) -> str:
        """Subset part of an ``outbound|port|subset|host`` name, else ``""``."""
        parts = self.name.split("|")
        return parts[2] if len(parts) == 4 else ""


@dataclass(frozen=True, slots=True)
class Listener:
    """A MetaProtocol listener: address, codec and the route configuration it uses."""

    name: str
    address: str
    port: int
    codec: str
    route_config_name: str
    stat_prefix: str = ""
    filters: tuple[str, ...] = ("aeraki.meta_protocol.filters.router",)
    max_frame_size: int | None = None
    #: Typed configs of the filters in ``filters`` that take one: (filter name, config).
    filter_configs: tuple[tuple[str, object], ...] = ()
    #: MetaProtocolProxy ``idle_timeout`` (seconds): a client connection with no request in
    #: flight for this long is closed; 0 = never, ``None`` = the proxy's default
    #: (``ConnectionLimits.idle_timeout``, ``--idle-timeout``).
    idle_timeout: float | None = None
    #: Client connections held at once on this listener (0/``None``: no cap of its own; the
    #: process-wide ``--max-connections`` applies to all listeners together). At the cap a new
    #: client takes the place of this listener's client idle longest (proxy/client_cap.py).
    max_connections: int | None = None
    #: Client connections: "" plaintext, "STRICT" mutual TLS required, "PERMISSIVE" either
    #: (detected per connection). The certificate is the proxy's workload certificate.
    tls_mode: str = ""
    #: Options for this listener's codec, passed as ``options=`` to its factory (Redis:
    #: downstream ``auth_password``, ``case_insensitive``, ``mode``); empty for most codecs.
    codec_options: tuple[tuple[str, str], ...] = ()

    @property
    def service(self) -> str:
        """The service behind this listener, Istio's ``destination_service`` for requests that
        never reach a cluster: the host of an ``outbound|port||host`` stat prefix (as the
        control plane writes it), else the stat prefix itself ("" when there is none)."""
        return self.stat_prefix.rsplit("|", 1)[-1]

    def filter_config(self, name: str) -> object | None:
        """The config given for filter ``name``, or ``None``."""
        return next((c for n, c in self.filter_configs if n == name), None)


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """Envoy's ``TokenBucket``: starts full; ``tokens_per_fill`` every ``fill_interval`` s."""

    max_tokens: int
    tokens_per_fill: int
    fill_interval: float


@dataclass(frozen=True, slots=True)
class LocalRateLimitConfig:
    """Aeraki ``LocalRateLimit``: the first matching condition's bucket, else the default."""

    token_bucket: TokenBucket | None = None
    conditions: tuple[tuple[tuple[MetadataMatcher, ...], TokenBucket], ...] = ()


@dataclass(frozen=True, slots=True)
class AuthzSource:
    """A rule's ``from.source`` (Istio): every field that is set must match."""

    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthzOperation:
    """A rule's ``to.operation``: every ``attributes`` key matches one of its alternatives and
    no ``not_attributes`` alternative matches (matchers never inverted here)."""

    attributes: tuple[tuple[str, tuple[MetadataMatcher, ...]], ...] = ()
    not_attributes: tuple[tuple[str, tuple[MetadataMatcher, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class AuthzRule:
    """Matches when one ``sources`` entry and one ``operations`` entry match (empty = any)."""

    sources: tuple[AuthzSource, ...] = ()
    operations: tuple[AuthzOperation, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthzPolicy:
    """One MetaAuthorizationPolicy as the proxy runs it (``action`` ALLOW or DENY)."""

    name: str
    action: str
    rules: tuple[AuthzRule, ...] = ()


@dataclass(frozen=True, slots=True)
class RbacConfig:
    """``metamesh.filters.rbac``: the policies that select this listener's workload."""

    policies: tuple[AuthzPolicy, ...] = ()


@dataclass(frozen=True, slots=True)
class GlobalRateLimitConfig:
    """Aeraki ``RateLimit`` (global): ask a rate limit service, per request, with
    descriptors built from request metadata (``(descriptor_key, metadata property)``)."""

    domain: str
    match: tuple[MetadataMatcher, ...] = ()
    descriptors: tuple[tuple[str, str], ...] = ()
    timeout: float = 0.02
    failure_mode_deny: bool = False
    rate_limit_service: str = ""


def _frozen_map(items: Mapping[str, object] | None = None) -> Mapping[str, object]:
    return MappingProxyType(dict(items or {}))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the data plane runs on, indexed by name; replaced, never edited."""

    version: str = "0"
    listeners: Mapping[str, Listener] = field(default_factory=_frozen_map)  # type: ignore[arg-type]
    clusters: Mapping[str, Cluster] = field(default_factory=_frozen_map)  # type: ignore[arg-type]
    route_configs: Mapping[str, RouteConfiguration] = field(
        default_factory=_frozen_map  # type: ignore[arg-type]
    )

    @staticmethod
    def build(
        listeners: tuple[Listener, ...] | list[Listener],
        clusters: tuple[Cluster, ...] | list[Cluster],
        route_configs: tuple[RouteConfiguration, ...] | list[RouteConfiguration],
        version: str = "0",
    ) -> Snapshot:
        """A snapshot from resource lists (names must be unique per kind)."""
        return Snapshot(
            version=version,
            listeners=MappingProxyType({x.name: x for x in listeners}),
            clusters=MappingProxyType({x.name: x for x in clusters}),
            route_configs=MappingProxyType({x.name: x for x in route_configs}),
        )

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view (admin ``/config_dump``)."""
        from dataclasses import asdict

        def conv(obj: object) -> object:
            if isinstance(obj, enum.Enum):
                return obj.value
            if isinstance(obj, dict):
                return {k: conv(v) for k, v in obj.items()}
            if isinstance(obj, list | tuple):
                return [conv(v) for v in obj]
            return obj

        return {
            "version": self.version,
            "listeners": [conv(asdict(x)) for x in self.listeners.values()],
            "clusters": [conv(asdict(x)) for x in self.clusters.values()],
            "route_configs": [conv(asdict(x)) for x in self.route_configs.values()],
        }
