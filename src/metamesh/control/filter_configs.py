"""MetaProtocol filter configs in xDS, both ways: model -> protojson, protojson -> proxy config.

A listener's ``MetaProtocolProxy`` TypedStruct lists its filters in ``metaProtocolFilters``,
each ``{name, config}`` where ``config`` is a protobuf ``Any`` in protojson spelling (camelCase
keys, durations as ``"1.5s"`` strings, ``@type`` naming the message). Three filters take one:

``aeraki.meta_protocol.filters.local_ratelimit``
    Aeraki's ``LocalRateLimit`` (``statPrefix``, ``tokenBucket {maxTokens, tokensPerFill,
    fillInterval}``, ``conditions [{match: {metadata: [HeaderMatcher]}, tokenBucket}]``).
``aeraki.meta_protocol.filters.ratelimit``
    Aeraki's global ``RateLimit`` (``match``, ``domain``, ``timeout``, ``failureModeDeny``,
    ``rateLimitService`` as Envoy's ``RateLimitServiceConfig`` with ``grpcService.envoyGrpc.
    clusterName``, ``descriptors [{property, descriptorKey}]``); a MetaRouter's
    ``requestTimeout`` and ``denyOnFail`` become ``timeout`` and ``failureModeDeny``, its
    ``rateLimitService`` (a cluster name) the ``clusterName``, as Aeraki's generator does.
``metamesh.filters.rbac``
    metamesh's own: a ``google.protobuf.Struct`` (``{"@type": ...Struct, "value": {...}}``)
    holding ``{policies: [{name: "<namespace>/<name>", action, rules}]}``, the rules exactly
    as the MetaAuthorizationPolicy spec spells them. A Struct because no registered message
    type exists for it; a real Envoy cannot run Aeraki's filter either, so nothing is lost.

:func:`proxy_filter_config` reads these back into :mod:`metamesh.proxy.config` dataclasses for
the proxy's xDS client, raising :class:`ValueError` (turned into a NACK by the caller) with a
message naming the field. Header matchers and durations go through the real protobuf messages
(``json_format.ParseDict``), so anything Envoy's JSON accepts is accepted here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envoy.config.ratelimit.v3 import rls_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from google.protobuf import duration_pb2, json_format
from pydantic import ValidationError

from metamesh.api.authz import MetaAuthorizationPolicy, Rule
from metamesh.api.metaprotocol import GlobalRateLimit, LocalRateLimit, TokenBucket
from metamesh.control.routes import header_matchers_json
from metamesh.proxy import config as cfg
from metamesh.proxy.config_schema.filter_configs import authz_rule
from metamesh.proxy.filters import GLOBAL_RATELIMIT, LOCAL_RATELIMIT, RBAC

LOCAL_RATELIMIT_TYPE = (
    "type.googleapis.com/aeraki.meta_protocol_proxy.filters.local_ratelimit.v1alpha.LocalRateLimit"
)
GLOBAL_RATELIMIT_TYPE = (
    "type.googleapis.com/aeraki.meta_protocol_proxy.filters.ratelimit.v1alpha.RateLimit"
)
STRUCT_TYPE = "type.googleapis.com/google.protobuf.Struct"
DEFAULT_RATELIMIT_TIMEOUT = 0.02  # Aeraki's default


def json_duration(seconds: float) -> str:
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


# --- model -> protojson ------------------------------------------------------------------


def _bucket_json(tb: TokenBucket) -> dict[str, Any]:
    out: dict[str, Any] = {"maxTokens": tb.max_tokens}
    if tb.tokens_per_fill is not None:
        out["tokensPerFill"] = tb.tokens_per_fill
    if tb.fill_interval is not None:
        out["fillInterval"] = json_duration(tb.fill_interval)
    return out


def local_rate_limit_json(host: str, limit: LocalRateLimit) -> dict[str, Any]:
    """Aeraki's ``LocalRateLimit`` of a MetaRouter's ``localRateLimit``."""
    config: dict[str, Any] = {"@type": LOCAL_RATELIMIT_TYPE, "statPrefix": host}
    if limit.token_bucket is not None:
        config["tokenBucket"] = _bucket_json(limit.token_bucket)
    conditions = [
        {"match": {"metadata": header_matchers_json(c.match)}, "tokenBucket": _bucket_json(tb)}
        for c in limit.conditions
        if (tb := c.token_bucket) is not None
    ]
    if conditions:
        config["conditions"] = conditions
    return config


def global_rate_limit_json(limit: GlobalRateLimit) -> dict[str, Any]:
    """Aeraki's global ``RateLimit`` of a MetaRouter's ``globalRateLimit``."""
    timeout = limit.request_timeout or DEFAULT_RATELIMIT_TIMEOUT
    return {
        "@type": GLOBAL_RATELIMIT_TYPE,
        "match": {"metadata": header_matchers_json(limit.match)},
        "domain": limit.domain,
        "timeout": json_duration(timeout),
        "failureModeDeny": limit.deny_on_fail,
        "rateLimitService": {
            "grpcService": {"envoyGrpc": {"clusterName": limit.rate_limit_service}},
            "transportApiVersion": "V3",
        },
        "descriptors": [
            {"property": d.property, "descriptorKey": d.descriptor_key} for d in limit.descriptors
        ],
    }


def rbac_json(policies: Sequence[MetaAuthorizationPolicy]) -> dict[str, Any]:
    """metamesh's RBAC filter config (a Struct) for the policies selecting one service."""
    value = {
        "policies": [
            {
                "name": p.ref,
                "action": p.spec.action,
                "rules": [
                    r.model_dump(mode="json", by_alias=True, exclude_defaults=True)
                    for r in p.spec.rules
                ],
            }
            for p in policies
        ]
    }
    return {"@type": STRUCT_TYPE, "value": value}


# --- protojson -> proxy config -----------------------------------------------------------


def parse_duration(value: object, where: str) -> float:
    """A protojson duration (``"1.5s"``) in seconds."""
    message = duration_pb2.Duration()
    try:
        message.FromJsonString(str(value))
    except ValueError as e:
        raise ValueError(f"{where}: not a duration: {value!r} ({e})") from None
    return float(message.ToNanoseconds() / 1e9)


def metadata_matchers(match: object, where: str) -> tuple[cfg.MetadataMatcher, ...]:
    """``{metadata: [HeaderMatcher JSON]}`` as proxy matchers (via Envoy's HeaderMatcher)."""
    from metamesh.control.to_proxy import to_matcher

    if match is None:
        return ()
    if not isinstance(match, dict):
        raise ValueError(f"{where}: expected {{metadata: [...]}}, got {match!r}")
    out = []
    for i, item in enumerate(match.get("metadata") or []):
        header = rc.HeaderMatcher()
        try:
            json_format.ParseDict(item, header)
        except json_format.ParseError as e:
            raise ValueError(f"{where}.metadata[{i}]: {e}") from None
        out.append(to_matcher(header, f"{where}.metadata[{i}]"))
    return tuple(out)


def _token_bucket(value: object, where: str) -> cfg.TokenBucket:
    if not isinstance(value, dict) or int(value.get("maxTokens", 0)) < 1:
        raise ValueError(f"{where}: a token bucket needs maxTokens >= 1")
    fill = value.get("fillInterval")
    if fill is None:
        raise ValueError(f"{where}: a token bucket needs fillInterval")
    return cfg.TokenBucket(
        max_tokens=int(value["maxTokens"]),
        tokens_per_fill=int(value.get("tokensPerFill", 1)),
        fill_interval=parse_duration(fill, f"{where}.fillInterval"),
    )


def _local_rate_limit(config: dict[str, Any], where: str) -> cfg.LocalRateLimitConfig:
    bucket = config.get("tokenBucket")
    conditions = []
    for i, c in enumerate(config.get("conditions") or []):
        at = f"{where}.conditions[{i}]"
        conditions.append(
            (
                metadata_matchers(c.get("match"), f"{at}.match"),
                _token_bucket(c.get("tokenBucket"), f"{at}.tokenBucket"),
            )
        )
    return cfg.LocalRateLimitConfig(
        token_bucket=_token_bucket(bucket, f"{where}.tokenBucket") if bucket else None,
        conditions=tuple(conditions),
    )


def _global_rate_limit(config: dict[str, Any], where: str) -> cfg.GlobalRateLimitConfig:
    if not config.get("domain"):
        raise ValueError(f"{where}: domain is required")
    service = rls_pb2.RateLimitServiceConfig()
    try:
        json_format.ParseDict(config.get("rateLimitService") or {}, service)
    except json_format.ParseError as e:
        raise ValueError(f"{where}.rateLimitService: {e}") from None
    grpc = service.grpc_service
    cluster = grpc.envoy_grpc.cluster_name or grpc.google_grpc.target_uri
    timeout = config.get("timeout")
    return cfg.GlobalRateLimitConfig(
        domain=str(config["domain"]),
        match=metadata_matchers(config.get("match"), f"{where}.match"),
        descriptors=tuple(
            (str(d.get("descriptorKey", "")), str(d.get("property", "")))
            for d in config.get("descriptors") or []
        ),
        timeout=parse_duration(timeout, f"{where}.timeout")
        if timeout is not None
        else DEFAULT_RATELIMIT_TIMEOUT,
        failure_mode_deny=bool(config.get("failureModeDeny", False)),
        rate_limit_service=cluster,
    )


def _rbac(config: dict[str, Any], where: str) -> cfg.RbacConfig:
    value = config.get("value", config) if config.get("@type") == STRUCT_TYPE else config
    policies = []
    for i, p in enumerate(value.get("policies") or []):
        at = f"{where}.policies[{i}]"
        action = p.get("action", "ALLOW")
        if action not in ("ALLOW", "DENY"):
            raise ValueError(f"{at}.action: {action!r} is not ALLOW or DENY")
        try:
            rules = tuple(authz_rule(Rule.model_validate(r)) for r in p.get("rules") or [])
        except ValidationError as e:
            detail = "; ".join(
                f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()
            )
            raise ValueError(f"{at}.rules: {detail}") from None
        except ValueError as e:  # a bad IP block or regex (authz_rule)
            raise ValueError(f"{at}.rules: {e}") from None
        policies.append(cfg.AuthzPolicy(str(p.get("name", "")), action, rules))
    return cfg.RbacConfig(tuple(policies))


_PARSERS = {
    LOCAL_RATELIMIT: _local_rate_limit,
    GLOBAL_RATELIMIT: _global_rate_limit,
    RBAC: _rbac,
}


def proxy_filter_config(name: str, config: object, where: str) -> object | None:
    """The proxy config of filter ``name`` from its protojson ``config`` (None: takes none)."""
    parse = _PARSERS.get(name)
    if parse is None or config is None:
        return None
    if not isinstance(config, dict):
        raise ValueError(f"{where}: config must be an object, got {config!r}")
    return parse(config, where)
