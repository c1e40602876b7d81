"""Clusters with Envoy's field names: load assignment (endpoints with weights and labels), LB
policy, circuit breaker thresholds (the DEFAULT priority is the one enforced), connect timeout,
outlier detection; converted into :class:`metamesh.proxy.config.Cluster`.

The models are private to the loader (:mod:`metamesh.proxy.config_yaml`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from metamesh.proxy import config as cfg
from metamesh.proxy.config_schema.common import _Address, _Duration, _Model, _parse_duration


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
    max_requests_per_connection: int | None = Field(default=None, ge=0)
    lb_policy: Literal["ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "RING_HASH"] = "ROUND_ROBIN"
    type: str | None = None
    circuit_breakers: _CircuitBreakers = _CircuitBreakers()
    load_assignment: _LoadAssignment = _LoadAssignment()
    outlier_detection: _OutlierDetection | None = None
    #: Connections to the endpoints, as DestinationRule ``tls.mode``: DISABLE or ISTIO_MUTUAL.
    tls_mode: Literal["DISABLE", "ISTIO_MUTUAL"] = "DISABLE"

    @model_validator(mode="after")
    def _check_timeout(self) -> _Cluster:
        _parse_duration(self.connect_timeout)
        return self


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
        max_requests_per_connection=x.max_requests_per_connection or None,
        outlier_detection=x.outlier_detection.convert() if x.outlier_detection else None,
        tls_mode="" if x.tls_mode == "DISABLE" else x.tls_mode,
    )
