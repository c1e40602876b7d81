"""Static proxy configuration from YAML, validated with pydantic and turned into a Snapshot.

The file uses Envoy's v3 field names (snake_case) for the parts Envoy has, and Aeraki's
``MetaProtocolProxy`` fields for the MetaProtocol network filter, so what a user writes here is
what xDS will later deliver. Layout (see ``examples/proxy-static.yaml``)::

    version: "1"                       # optional, shown in /config_dump
    static_resources:
      listeners:
      - name: kv
        address: {socket_address: {address: 127.0.0.1, port_value: 19000}}
        meta_protocol_proxy:           # Aeraki MetaProtocolProxy
          stat_prefix: kv
          codec: {name: aeraki.meta_protocol.codec.dubbo}   # or protocol: {name, codec: {name}}
          route_config_name: kv-routes                      # or rds: {route_config_name: ...}
          meta_protocol_filters:       # in order; the router is the last one that runs
          - name: metamesh.filters.rbac
            config:                    # MetaAuthorizationPolicy specs (Istio semantics)
              policies:
              - name: no-put-from-10
                action: DENY
                rules: [{from: [{source: {ip_blocks: [10.0.0.0/8]}}],
                         to: [{operation: {attributes: {method: {exact: put}}}}]}]
          - name: aeraki.meta_protocol.filters.local_ratelimit
            config: {token_bucket: {max_tokens: 100, tokens_per_fill: 100, fill_interval: 1s},
                     conditions: [{match: {metadata: [{name: method, exact_match: put}]},
                                   token_bucket: {max_tokens: 10, fill_interval: 1s}}]}
          - name: aeraki.meta_protocol.filters.router
      clusters:
      - name: outbound|19000|v1|kv.example
        connect_timeout: 1s            # "250ms", "1.5s" or seconds as a number
        lb_policy: ROUND_ROBIN         # RANDOM, LEAST_REQUEST, RING_HASH
        outlier_detection: {consecutive_errors: 5, interval: 10s, base_ejection_time: 30s,
                            max_ejection_percent: 10}
        circuit_breakers: {thresholds: [{max_connections: 1024, max_pending_requests: 1024,
                                         max_requests: 1024}]}
        load_assignment:
          endpoints:
          - lb_endpoints:
            - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 20880}}}
              load_balancing_weight: 1
              metadata: {labels: {version: v1}}
      route_configs:
      - name: kv-routes
        routes:
        - name: by-method
          match: {metadata: [{name: method, exact_match: sayHello}]}  # prefix_match,
                 # safe_regex_match: {regex: ...}, present_match: true, string_match: {...},
                 # invert_match: true
          route:
            cluster: outbound|19000|v1|kv.example   # or weighted_clusters: {clusters: [...]}
            hash_policy: [user]
            request_mirror_policies:
            - cluster: outbound|19000|v2|kv.example
              runtime_fraction: {default_value: {numerator: 10, denominator: HUNDRED}}
            timeout: 2s                # whole request, retries included
            retry_policy: {num_retries: 2, retry_on: "connect-failure,reset,timeout",
                           per_try_timeout: 500ms, retry_back_off: {base_interval: 25ms},
                           retry_non_idempotent: false}
          fault: {delay: {fixed_delay: 1s, percentage: {numerator: 5}},
                  abort: {error_kind: unauthorized, message: denied, percentage: {numerator: 1}}}
          request_mutation: [{key: x-env, value: prod}]
          response_mutation: [{key: x-served-by, value: mesh}]

Unknown fields are errors (a typo must not silently become a default). Every error names the
file, the resource (kind, index and name) and the field path. Cross references (a route naming a
cluster that does not exist, a listener naming a missing route configuration, an unknown codec)
are checked after the schema.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from metamesh.api.authz import Rule as _AuthzRule
from metamesh.api.base import StringMatch
from metamesh.codecs.message import ErrorKind
from metamesh.proxy import config as cfg
from metamesh.proxy.codec_ref import resolve_codec
from metamesh.proxy.filters import (
    FAULT,
    GLOBAL_RATELIMIT,
    LOCAL_RATELIMIT,
    RBAC,
    UnknownFilterError,
    lookup_filter,
)


class ConfigError(ValueError):
    """The configuration file is invalid; the message names file, resource and field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SocketAddress(_Model):
    address: str
    port_value: int = Field(ge=0, le=65535)


class _Address(_Model):
    socket_address: _SocketAddress


class _Codec(_Model):
    name: str
    max_frame_size: int | None = Field(default=None, gt=0)


class _Protocol(_Model):
    name: str = ""
    codec: _Codec
    multiplexing: bool = True


class _Rds(_Model):
    route_config_name: str
    config_source: dict[str, Any] | None = None


class _Filter(_Model):
    name: str
    config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _known_with_valid_config(self) -> _Filter:
        try:
            lookup_filter(self.name)
        except UnknownFilterError as e:
            raise ValueError(str(e)) from None
        self.typed_config()
        return self

    def typed_config(self) -> object | None:
        """The filter's config as the proxy's dataclass (``None`` when it takes none)."""
        model = _FILTER_CONFIGS.get(self.name)
        if model is None or self.config is None:
            return None
        try:
            parsed = model.model_validate(self.config)
        except ValidationError as e:
            raise ValueError(
                "; ".join(
                    f"config.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
                    for err in e.errors()
                )
            ) from None
        return parsed.convert()


class _MetaProtocolProxy(_Model):
    stat_prefix: str = ""
    codec: _Codec | None = None
    application_protocol: str | None = None
    protocol: _Protocol | None = None
    route_config_name: str | None = None
    rds: _Rds | None = None
    meta_protocol_filters: list[_Filter] = []

    @model_validator(mode="after")
    def _one_codec_one_routes(self) -> _MetaProtocolProxy:
        if self.codec is None and self.protocol is None:
            raise ValueError("needs 'codec: {name: ...}' or 'protocol: {codec: {name: ...}}'")
        if (self.route_config_name is None) == (self.rds is None):
            raise ValueError("needs exactly one of 'route_config_name' or 'rds'")
        return self


class _Listener(_Model):
    name: str
    address: _Address
    meta_protocol_proxy: _MetaProtocolProxy


class _Thresholds(_Model):
    priority: Literal["DEFAULT", "HIGH"] = "DEFAULT"
    max_connections: int = Field(default=1024, ge=0)
    max_pending_requests: int = Field(default=1024, ge=0)
    max_requests: int = Field(default=1024, ge=0)


class _CircuitBreakers(_Model):
    thresholds: list[_Thresholds] = []


class _EndpointMetadata(_Model):
    labels: dict[str, str] = {}


class _Endpoint(_Model):
    address: _Address


class _LbEndpoint(_Model):
    endpoint: _Endpoint
    load_balancing_weight: int = Field(default=1, ge=1)
    metadata: _EndpointMetadata = _EndpointMetadata()


class _LocalityEndpoints(_Model):
    lb_endpoints: list[_LbEndpoint] = []
    locality: dict[str, str] | None = None


class _LoadAssignment(_Model):
    cluster_name: str | None = None
    endpoints: list[_LocalityEndpoints] = []


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")


def _parse_duration(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if m is None:
            raise ValueError(f"not a duration: {value!r} (use e.g. '1s', '250ms' or 0.5)")
        seconds = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return seconds


#: A duration field ("1s", "250ms" or seconds), checked where it stands so errors name it.
_Duration = Annotated[float, BeforeValidator(_parse_duration)]


class _OutlierDetection(_Model):
    consecutive_errors: int | None = Field(default=None, ge=1)
    consecutive_5xx: int | None = Field(default=None, ge=1)  # Envoy's name for the same
    interval: _Duration = 10.0
    base_ejection_time: _Duration = 30.0
    max_ejection_percent: float = Field(default=10.0, ge=0, le=100)

    @model_validator(mode="after")
    def _check(self) -> _OutlierDetection:
        if self.consecutive_errors is not None and self.consecutive_5xx is not None:
            raise ValueError("set only one of consecutive_errors, consecutive_5xx")
        _parse_duration(self.interval)
        _parse_duration(self.base_ejection_time)
        return self

    def convert(self) -> cfg.OutlierDetection:
        return cfg.OutlierDetection(
            consecutive_errors=self.consecutive_errors or self.consecutive_5xx or 5,
            interval=_parse_duration(self.interval),
            base_ejection_time=_parse_duration(self.base_ejection_time),
            max_ejection_percent=self.max_ejection_percent,
        )


class _Cluster(_Model):
    name: str = Field(min_length=1)
    connect_timeout: float | str = 5.0
    lb_policy: Literal["ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "RING_HASH"] = "ROUND_ROBIN"
    type: str | None = None
    circuit_breakers: _CircuitBreakers = _CircuitBreakers()
    load_assignment: _LoadAssignment = _LoadAssignment()
    outlier_detection: _OutlierDetection | None = None

    @model_validator(mode="after")
    def _check_timeout(self) -> _Cluster:
        _parse_duration(self.connect_timeout)
        return self


class _StringMatch(_Model):
    exact: str | None = None
    prefix: str | None = None
    safe_regex: _Regex | None = None


class _Regex(_Model):
    regex: str
    google_re2: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _compiles(self) -> _Regex:
        try:
            re.compile(self.regex)
        except re.error as e:
            raise ValueError(f"regex {self.regex!r} does not compile: {e}") from None
        return self


class _HeaderMatcher(_Model):
    name: str = Field(min_length=1)
    exact_match: str | None = None
    prefix_match: str | None = None
    safe_regex_match: _Regex | None = None
    present_match: bool | None = None
    string_match: _StringMatch | None = None
    invert_match: bool = False

    def to_matcher(self) -> cfg.MetadataMatcher:
        kinds: list[tuple[cfg.MatchKind, str]] = []
        if self.exact_match is not None:
            kinds.append((cfg.MatchKind.EXACT, self.exact_match))
        if self.prefix_match is not None:
            kinds.append((cfg.MatchKind.PREFIX, self.prefix_match))
        if self.safe_regex_match is not None:
            kinds.append((cfg.MatchKind.SAFE_REGEX, self.safe_regex_match.regex))
        if self.present_match is not None:
            if not self.present_match:
                raise ValueError("present_match: false is meaningless; use invert_match")
            kinds.append((cfg.MatchKind.PRESENT, ""))
        sm = self.string_match
        if sm is not None:
            if sm.exact is not None:
                kinds.append((cfg.MatchKind.EXACT, sm.exact))
            if sm.prefix is not None:
                kinds.append((cfg.MatchKind.PREFIX, sm.prefix))
            if sm.safe_regex is not None:
                kinds.append((cfg.MatchKind.SAFE_REGEX, sm.safe_regex.regex))
        if len(kinds) != 1:
            raise ValueError(
                "needs exactly one of exact_match, prefix_match, safe_regex_match, "
                "present_match, string_match.{exact,prefix,safe_regex}"
            )
        kind, value = kinds[0]
        return cfg.MetadataMatcher(self.name, kind, value, self.invert_match)

    @model_validator(mode="after")
    def _one_kind(self) -> _HeaderMatcher:
        self.to_matcher()
        return self


class _RouteMatch(_Model):
    metadata: list[_HeaderMatcher] = []


class _WeightedClusterEntry(_Model):
    name: str = Field(min_length=1)
    weight: int = Field(ge=0)


class _WeightedClusters(_Model):
    clusters: list[_WeightedClusterEntry] = Field(min_length=1)
    total_weight: int | None = None

    @model_validator(mode="after")
    def _positive_total(self) -> _WeightedClusters:
        if sum(c.weight for c in self.clusters) <= 0:
            raise ValueError("weights must add up to more than 0")
        return self


class _FractionalPercent(_Model):
    numerator: int = Field(ge=0)
    denominator: Literal["HUNDRED", "TEN_THOUSAND", "MILLION"] = "HUNDRED"

    def percent(self) -> float:
        scale = {"HUNDRED": 1.0, "TEN_THOUSAND": 100.0, "MILLION": 10000.0}[self.denominator]
        return min(100.0, self.numerator / scale)


class _RuntimeFraction(_Model):
    default_value: _FractionalPercent
    runtime_key: str | None = None


class _MirrorPolicy(_Model):
    cluster: str = Field(min_length=1)
    runtime_fraction: _RuntimeFraction | None = None


class _RetryBackOff(_Model):
    base_interval: _Duration = 0.025
    max_interval: _Duration | None = None


class _RetryPolicy(_Model):
    """Envoy's ``RetryPolicy`` with metamesh's conditions (comma-separated or a list)."""

    retry_on: str | list[str] = "connect-failure,reset"
    num_retries: int = Field(default=1, ge=0)
    per_try_timeout: _Duration | None = None
    retry_back_off: _RetryBackOff | None = None
    retry_non_idempotent: bool = False

    def conditions(self) -> tuple[str, ...]:
        items = self.retry_on.split(",") if isinstance(self.retry_on, str) else self.retry_on
        return tuple(x.strip() for x in items if x.strip())

    @model_validator(mode="after")
    def _check(self) -> _RetryPolicy:
        for c in self.conditions():
            if c not in cfg.RETRY_ON_VALUES:
                raise ValueError(
                    f"retry_on: unknown condition {c!r} (one of {', '.join(cfg.RETRY_ON_VALUES)})"
                )
        self.convert()
        return self

    def convert(self) -> cfg.RetryPolicy:
        back = self.retry_back_off or _RetryBackOff()
        base = _parse_duration(back.base_interval)
        limit = _parse_duration(back.max_interval) if back.max_interval is not None else None
        if limit is not None and limit < base:
            raise ValueError("retry_back_off: max_interval must be >= base_interval")
        per_try = self.per_try_timeout
        return cfg.RetryPolicy(
            num_retries=self.num_retries,
            retry_on=self.conditions(),
            per_try_timeout=_parse_duration(per_try) if per_try is not None else None,
            backoff_base=base,
            backoff_max=limit,
            retry_non_idempotent=self.retry_non_idempotent,
        )


class _RouteAction(_Model):
    cluster: str | None = None
    weighted_clusters: _WeightedClusters | None = None
    hash_policy: list[str] = Field(default=[], max_length=100)
    request_mirror_policies: list[_MirrorPolicy] = []
    timeout: _Duration | None = None
    retry_policy: _RetryPolicy | None = None

    @model_validator(mode="after")
    def _one_target(self) -> _RouteAction:
        if (self.cluster is None) == (self.weighted_clusters is None):
            raise ValueError("needs exactly one of 'cluster' or 'weighted_clusters'")
        if self.timeout is not None:
            _parse_duration(self.timeout)
        return self


class _FaultDelay(_Model):
    fixed_delay: _Duration
    percentage: _FractionalPercent | None = None

    @model_validator(mode="after")
    def _check(self) -> _FaultDelay:
        _parse_duration(self.fixed_delay)
        return self


class _FaultAbort(_Model):
    error_kind: str = ErrorKind.FAULT_ABORT.value
    message: str = "fault injected"
    percentage: _FractionalPercent | None = None

    @model_validator(mode="after")
    def _check(self) -> _FaultAbort:
        known = [k.value for k in ErrorKind]
        if self.error_kind.lower() not in known:
            raise ValueError(f"error_kind: unknown {self.error_kind!r} (one of {', '.join(known)})")
        return self


class _Fault(_Model):
    delay: _FaultDelay | None = None
    abort: _FaultAbort | None = None

    @model_validator(mode="after")
    def _something(self) -> _Fault:
        if self.delay is None and self.abort is None:
            raise ValueError("a fault needs a delay or an abort")
        return self

    def convert(self) -> cfg.FaultInjection:
        d, a = self.delay, self.abort
        return cfg.FaultInjection(
            delay=cfg.FaultDelay(
                _parse_duration(d.fixed_delay), d.percentage.percent() if d.percentage else 100.0
            )
            if d is not None
            else None,
            abort=cfg.FaultAbort(
                ErrorKind(a.error_kind.lower()),
                a.message,
                a.percentage.percent() if a.percentage else 100.0,
            )
            if a is not None
            else None,
        )


class _KeyValue(_Model):
    key: str = Field(min_length=1)
    value: str


class _Route(_Model):
    name: str = ""
    match: _RouteMatch = _RouteMatch()
    route: _RouteAction
    request_mutation: list[_KeyValue] = Field(default=[], max_length=1000)
    response_mutation: list[_KeyValue] = Field(default=[], max_length=1000)
    fault: _Fault | None = None


class _RouteConfiguration(_Model):
    name: str = Field(min_length=1)
    routes: list[_Route] = []


class _StaticResources(_Model):
    listeners: list[_Listener] = []
    clusters: list[_Cluster] = []
    route_configs: list[_RouteConfiguration] = []


class _File(_Model):
    version: str | int = "0"
    static_resources: _StaticResources
    admin: dict[str, Any] | None = None


# --- filter configs -----------------------------------------------------------------------


class _TokenBucket(_Model):
    max_tokens: int = Field(ge=1)
    tokens_per_fill: int = Field(default=1, ge=1)
    fill_interval: _Duration

    @model_validator(mode="after")
    def _check(self) -> _TokenBucket:
        _parse_duration(self.fill_interval)
        return self

    def convert(self) -> cfg.TokenBucket:
        interval = _parse_duration(self.fill_interval)
        return cfg.TokenBucket(self.max_tokens, self.tokens_per_fill, interval)


class _LocalRateLimitCondition(_Model):
    match: _RouteMatch
    token_bucket: _TokenBucket


class _LocalRateLimit(_Model):
    """Aeraki ``LocalRateLimit``."""

    stat_prefix: str = ""
    token_bucket: _TokenBucket | None = None
    conditions: list[_LocalRateLimitCondition] = []

    def convert(self) -> cfg.LocalRateLimitConfig:
        return cfg.LocalRateLimitConfig(
            token_bucket=self.token_bucket.convert() if self.token_bucket else None,
            conditions=tuple(
                (tuple(m.to_matcher() for m in c.match.metadata), c.token_bucket.convert())
                for c in self.conditions
            ),
        )


def _string_matcher(key: str, sm: StringMatch) -> cfg.MetadataMatcher:
    if sm.is_presence:
        return cfg.MetadataMatcher(key, cfg.MatchKind.PRESENT)
    if sm.exact is not None:
        return cfg.MetadataMatcher(key, cfg.MatchKind.EXACT, sm.exact)
    if sm.prefix is not None:
        return cfg.MetadataMatcher(key, cfg.MatchKind.PREFIX, sm.prefix)
    try:
        re.compile(sm.regex or "")
    except re.error as e:
        raise ValueError(f"attribute {key!r}: regex does not compile: {e}") from None
    return cfg.MetadataMatcher(key, cfg.MatchKind.SAFE_REGEX, sm.regex or "")


class _AuthzPolicy(_Model):
    name: str = ""
    action: Literal["ALLOW", "DENY"] = "ALLOW"
    rules: list[_AuthzRule] = []

    @model_validator(mode="after")
    def _check(self) -> _AuthzPolicy:
        self.convert()
        return self

    def convert(self) -> cfg.AuthzPolicy:
        rules = []
        for rule in self.rules:
            sources = []
            for f in rule.from_:
                src = f.source
                for block in (*src.ip_blocks, *src.not_ip_blocks):
                    try:
                        ipaddress.ip_network(block, strict=False)
                    except ValueError:
                        raise ValueError(f"not an IP address or CIDR block: {block!r}") from None
                sources.append(
                    cfg.AuthzSource(
                        ip_blocks=tuple(src.ip_blocks),
                        not_ip_blocks=tuple(src.not_ip_blocks),
                        principals=tuple(src.principals),
                        not_principals=tuple(src.not_principals),
                        namespaces=tuple(src.namespaces),
                        not_namespaces=tuple(src.not_namespaces),
                    )
                )
            operations = [
                cfg.AuthzOperation(
                    attributes=tuple(
                        (k, tuple(_string_matcher(k, m) for m in alts))
                        for k, alts in t.operation.attributes.items()
                    ),
                    not_attributes=tuple(
                        (k, tuple(_string_matcher(k, m) for m in alts))
                        for k, alts in t.operation.not_attributes.items()
                    ),
                )
                for t in rule.to
            ]
            rules.append(cfg.AuthzRule(tuple(sources), tuple(operations)))
        return cfg.AuthzPolicy(self.name, self.action, tuple(rules))


class _Rbac(_Model):
    """``metamesh.filters.rbac``: MetaAuthorizationPolicy specs (name, action, rules)."""

    policies: list[_AuthzPolicy] = []

    def convert(self) -> cfg.RbacConfig:
        return cfg.RbacConfig(tuple(p.convert() for p in self.policies))


class _Descriptor(_Model):
    property: str = Field(min_length=1)
    descriptor_key: str = Field(min_length=1)


class _GlobalRateLimit(_Model):
    """Aeraki ``RateLimit`` (global); ``rate_limit_service`` as Envoy's config
    (``grpc_service.envoy_grpc.cluster_name`` or ``grpc_service.google_grpc.target_uri``), a
    cluster name or a ``host:port`` gRPC target."""

    match: _RouteMatch = _RouteMatch()
    domain: str = Field(min_length=1)
    timeout: _Duration = 0.02
    failure_mode_deny: bool = False
    rate_limit_service: dict[str, Any] | str = ""
    descriptors: list[_Descriptor] = []

    @model_validator(mode="after")
    def _check(self) -> _GlobalRateLimit:
        _parse_duration(self.timeout)
        return self

    def convert(self) -> cfg.GlobalRateLimitConfig:
        service = self.rate_limit_service
        if isinstance(service, dict):
            grpc = service.get("grpc_service") or {}
            service = str(
                (grpc.get("envoy_grpc") or {}).get("cluster_name")
                or (grpc.get("google_grpc") or {}).get("target_uri", "")
            )
        return cfg.GlobalRateLimitConfig(
            domain=self.domain,
            match=tuple(m.to_matcher() for m in self.match.metadata),
            descriptors=tuple((d.descriptor_key, d.property) for d in self.descriptors),
            timeout=_parse_duration(self.timeout),
            failure_mode_deny=self.failure_mode_deny,
            rate_limit_service=service,
        )


class _NoConfig(_Model):
    def convert(self) -> None:
        return None


_FILTER_CONFIGS: dict[str, type[_LocalRateLimit | _Rbac | _GlobalRateLimit | _NoConfig]] = {
    LOCAL_RATELIMIT: _LocalRateLimit,
    RBAC: _Rbac,
    GLOBAL_RATELIMIT: _GlobalRateLimit,
    FAULT: _NoConfig,
}

_StringMatch.model_rebuild()


def load_snapshot(path: str | Path) -> cfg.Snapshot:
    """Read, validate and convert the YAML file at ``path``; raises :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse_snapshot(text, source=str(path))


def parse_snapshot(text: str, source: str = "<string>") -> cfg.Snapshot:
    """Like :func:`load_snapshot`, from YAML text; ``source`` names it in errors."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping with 'static_resources'")
    try:
        model = _File.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(source, raw, e)) from None
    _check_unique(source, model.static_resources)
    snapshot = _convert(model)
    _check_references(source, snapshot)
    return snapshot


def _check_unique(source: str, res: _StaticResources) -> None:
    for kind in ("listeners", "clusters", "route_configs"):
        seen: set[str] = set()
        for i, item in enumerate(getattr(res, kind)):
            if item.name in seen:
                raise ConfigError(
                    f"{source}: {kind}[{i}] (name {item.name!r}): field 'name': duplicate name"
                )
            seen.add(item.name)


def _describe(source: str, raw: dict[str, Any], error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        loc = list(err["loc"])
        where = "top level"
        if len(loc) >= 3 and loc[0] == "static_resources" and isinstance(loc[2], int):
            kind, index = str(loc[1]), loc[2]
            try:
                name = raw["static_resources"][kind][index].get("name", "?")
            except (KeyError, IndexError, TypeError, AttributeError):
                name = "?"
            where = f"{kind}[{index}] (name {name!r})"
            loc = loc[3:]
        field = ".".join(str(x) for x in loc) or "(resource)"
        lines.append(f"{source}: {where}: field '{field}': {err['msg']}")
    return "\n".join(lines)


def _convert(model: _File) -> cfg.Snapshot:
    res = model.static_resources
    return cfg.Snapshot.build(
        [_listener(x) for x in res.listeners],
        [_cluster(x) for x in res.clusters],
        [_route_config(x) for x in res.route_configs],
        version=str(model.version),
    )


def _listener(x: _Listener) -> cfg.Listener:
    mpp = x.meta_protocol_proxy
    codec = mpp.protocol.codec if mpp.protocol is not None else mpp.codec
    assert codec is not None
    rc_name = mpp.rds.route_config_name if mpp.rds is not None else mpp.route_config_name
    filters = tuple(f.name for f in mpp.meta_protocol_filters) or (
        "aeraki.meta_protocol.filters.router",
    )
    filter_configs = tuple(
        (f.name, typed)
        for f in mpp.meta_protocol_filters
        if (typed := f.typed_config()) is not None
    )
    return cfg.Listener(
        name=x.name,
        address=x.address.socket_address.address,
        port=x.address.socket_address.port_value,
        codec=codec.name,
        route_config_name=rc_name or "",
        stat_prefix=mpp.stat_prefix,
        filters=filters,
        max_frame_size=codec.max_frame_size,
        filter_configs=filter_configs,
    )


def _cluster(x: _Cluster) -> cfg.Cluster:
    th = next((t for t in x.circuit_breakers.thresholds if t.priority == "DEFAULT"), _Thresholds())
    endpoints = tuple(
        cfg.Endpoint(
            address=lb.endpoint.address.socket_address.address,
            port=lb.endpoint.address.socket_address.port_value,
            weight=lb.load_balancing_weight,
            labels=tuple(sorted(lb.metadata.labels.items())),
        )
        for loc in x.load_assignment.endpoints
        for lb in loc.lb_endpoints
    )
    return cfg.Cluster(
        name=x.name,
        endpoints=endpoints,
        lb_policy=cfg.LbPolicy(x.lb_policy),
        circuit_breakers=cfg.CircuitBreakers(
            th.max_connections, th.max_pending_requests, th.max_requests
        ),
        connect_timeout=_parse_duration(x.connect_timeout),
        outlier_detection=x.outlier_detection.convert() if x.outlier_detection else None,
    )


def _route_config(x: _RouteConfiguration) -> cfg.RouteConfiguration:
    routes = []
    for i, r in enumerate(x.routes):
        a = r.route
        action = cfg.RouteAction(
            cluster=a.cluster or "",
            weighted_clusters=tuple(
                cfg.WeightedCluster(c.name, c.weight)
                for c in (a.weighted_clusters.clusters if a.weighted_clusters else [])
            ),
            hash_policy=tuple(a.hash_policy),
            request_mirror_policies=tuple(
                cfg.RequestMirrorPolicy(
                    m.cluster,
                    m.runtime_fraction.default_value.percent() if m.runtime_fraction else 100.0,
                )
                for m in a.request_mirror_policies
            ),
            timeout=_parse_duration(a.timeout) if a.timeout is not None else None,
            retry_policy=a.retry_policy.convert() if a.retry_policy is not None else None,
        )
        routes.append(
            cfg.Route(
                name=r.name or f"{x.name}/{i}",
                match=tuple(m.to_matcher() for m in r.match.metadata),
                route=action,
                request_mutation=tuple((kv.key, kv.value) for kv in r.request_mutation),
                response_mutation=tuple((kv.key, kv.value) for kv in r.response_mutation),
                fault=r.fault.convert() if r.fault is not None else None,
            )
        )
    return cfg.RouteConfiguration(x.name, tuple(routes))


def _check_references(source: str, snap: cfg.Snapshot) -> None:
    errors: list[str] = []
    for i, listener in enumerate(snap.listeners.values()):
        where = f"{source}: listeners[{i}] (name {listener.name!r})"
        if listener.route_config_name not in snap.route_configs:
            errors.append(
                f"{where}: field 'meta_protocol_proxy.route_config_name': no route "
                f"configuration named {listener.route_config_name!r}"
            )
        try:
            resolve_codec(listener.codec)
        except LookupError as e:
            errors.append(f"{where}: field 'meta_protocol_proxy.codec.name': {e}")
    for i, rc in enumerate(snap.route_configs.values()):
        for j, route in enumerate(rc.routes):
            where = f"{source}: route_configs[{i}] (name {rc.name!r}): routes[{j}]"
            a = route.route
            targets = [("route.cluster", a.cluster)] if a.cluster else []
            targets += [("route.weighted_clusters", w.name) for w in a.weighted_clusters]
            targets += [
                ("route.request_mirror_policies", m.cluster) for m in a.request_mirror_policies
            ]
            for field, name in targets:
                if name not in snap.clusters:
                    errors.append(f"{where}: field '{field}': no cluster named {name!r}")
    if errors:
        raise ConfigError("\n".join(errors))
