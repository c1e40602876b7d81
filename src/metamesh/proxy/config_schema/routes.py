"""Route configurations: Envoy-shaped routes whose header matchers match MetaProtocol metadata,
with the route action (cluster or weighted clusters, hash policy, mirrors, timeout, retry
policy), fault injection and request/response mutations; converted into
:class:`metamesh.proxy.config.RouteConfiguration`.

The models are private to the loader (:mod:`metamesh.proxy.config_yaml`).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from metamesh.codecs.message import ErrorKind
from metamesh.proxy import config as cfg
from metamesh.proxy.config_schema.common import (
    _Duration,
    _FractionalPercent,
    _Model,
    _parse_duration,
    _RouteMatch,
)


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
