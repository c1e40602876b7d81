"""Configs of the MetaProtocol filters (``meta_protocol_filters[].config``): Aeraki
``LocalRateLimit`` and ``RateLimit`` (global), MetaAuthorizationPolicy specs for the rbac
filter. Each model converts into the proxy's frozen config dataclass; :data:`_FILTER_CONFIGS`
maps a filter name to its model.

The models are private to the loader (:mod:`metamesh.proxy.config_yaml`); :func:`authz_rule`
is also the control plane's conversion when it reads an rbac filter config back from xDS.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import Field, model_validator

from metamesh.api.authz import Rule as _AuthzRule
from metamesh.api.base import StringMatch
from metamesh.api.regex import regex_error
from metamesh.proxy import config as cfg
from metamesh.proxy.config_schema.common import _Duration, _Model, _parse_duration, _RouteMatch
from metamesh.proxy.filters import (
    FAULT,
    GLOBAL_RATELIMIT,
    LOCAL_RATELIMIT,
    RBAC,
)


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
    error = regex_error(sm.regex or "")  # RE2, as the router matches (api/regex.py)
    if error is not None:
        raise ValueError(f"attribute {key!r}: {error}")
    return cfg.MetadataMatcher(key, cfg.MatchKind.SAFE_REGEX, sm.regex or "")


def authz_rule(rule: _AuthzRule) -> cfg.AuthzRule:
    """One MetaAuthorizationPolicy rule as the proxy's config (shared with the control plane's
    xDS read-back); :class:`ValueError` names a bad IP block or a regex that does not compile."""
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
    operations = tuple(
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
    )
    return cfg.AuthzRule(tuple(sources), operations)


class _AuthzPolicy(_Model):
    name: str = ""
    action: Literal["ALLOW", "DENY"] = "ALLOW"
    rules: list[_AuthzRule] = []

    @model_validator(mode="after")
    def _check(self) -> _AuthzPolicy:
        self.convert()
        return self

    def convert(self) -> cfg.AuthzPolicy:
        return cfg.AuthzPolicy(self.name, self.action, tuple(authz_rule(r) for r in self.rules))


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
