"""Istio's ``networking.istio.io`` ServiceEntry and DestinationRule, as metamesh reads them.

A ServiceEntry declares a service: its hosts, virtual addresses, ports (whose *names* select
the layer-7 protocol, see :mod:`metamesh.api.protocol`) and endpoints. A DestinationRule
declares the subsets of a host (label selections such as ``version: v1``) and the traffic policy
of its clusters: load balancing, connection pool limits (circuit breaking), outlier detection.

The fields follow Istio's API (``v1alpha3``, ``v1beta1`` and ``v1`` are the same schema). Fields
metamesh does not act on (TLS settings, locality load balancing, tunnels) are still accepted
and typed where simple, so existing manifests load unchanged, and each one set is a warning
(:mod:`metamesh.api.unsupported`). ``loadBalancer.consistentHash``
follows Aeraki: ``httpHeaderName`` names the request *metadata* key to hash on.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from metamesh.api.base import LabelSelector, Resource, SpecModel, WorkloadSelector
from metamesh.api.duration import Duration

ISTIO_NETWORKING_VERSIONS = (
    "networking.istio.io/v1alpha3",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1",
)


class ServicePort(SpecModel):
    number: int = Field(ge=1, le=65535)
    name: str = ""
    protocol: str | None = None
    target_port: int | None = Field(default=None, ge=1, le=65535)


class WorkloadEntry(SpecModel):
    """One ServiceEntry endpoint; ``ports`` maps a service port *name* to the endpoint port."""

    address: str = ""
    ports: dict[str, int] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    network: str | None = None
    locality: str | None = None
    weight: int | None = Field(default=None, ge=0)
    service_account: str | None = None


class WorkloadEntryResource(Resource):
    """Istio's ``WorkloadEntry`` kind: one workload (a VM, a process) with its identity; a
    ServiceEntry's ``workloadSelector`` makes the WorkloadEntries of its namespace whose labels
    it selects its endpoints."""

    API_VERSIONS = ISTIO_NETWORKING_VERSIONS
    KIND = "WorkloadEntry"

    spec: WorkloadEntry


class ServiceEntrySpec(SpecModel):
    hosts: list[str] = Field(default_factory=list)
    addresses: list[str] = Field(default_factory=list)
    ports: list[ServicePort] = Field(default_factory=list)
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] | None = None
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"] = "NONE"
    endpoints: list[WorkloadEntry] = Field(default_factory=list)
    workload_selector: WorkloadSelector | None = None
    export_to: list[str] = Field(default_factory=list)
    subject_alt_names: list[str] = Field(default_factory=list)


class ServiceEntry(Resource):
    API_VERSIONS = ISTIO_NETWORKING_VERSIONS
    KIND = "ServiceEntry"

    spec: ServiceEntrySpec


# --- DestinationRule ---------------------------------------------------------------------


class HttpCookie(SpecModel):
    name: str
    path: str | None = None
    ttl: Duration | None = None


class RingHash(SpecModel):
    minimum_ring_size: int | None = Field(default=None, ge=0)


class Maglev(SpecModel):
    table_size: int | None = Field(default=None, ge=0)


class ConsistentHash(SpecModel):
    """Hash key (one of) plus the hashing algorithm; ``httpHeaderName`` is a metadata key."""

    http_header_name: str | None = None
    http_cookie: HttpCookie | None = None
    use_source_ip: bool | None = None
    http_query_parameter_name: str | None = None
    ring_hash: RingHash | None = None
    maglev: Maglev | None = None
    minimum_ring_size: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_key(self) -> ConsistentHash:
        keys = [
            k
            for k in (
                "http_header_name",
                "http_cookie",
                "use_source_ip",
                "http_query_parameter_name",
            )
            if getattr(self, k) not in (None, False)
        ]
        if len(keys) > 1:
            raise ValueError(
                "set only one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName"
            )
        return self


SimpleLB = Literal[
    "UNSPECIFIED", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN", "RANDOM", "PASSTHROUGH"
]


class LoadBalancerSettings(SpecModel):
    simple: SimpleLB | None = None
    consistent_hash: ConsistentHash | None = None
    locality_lb_setting: dict[str, Any] | None = None
    warmup_duration_secs: Duration | None = None
    warmup: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_policy(self) -> LoadBalancerSettings:
        if self.simple is not None and self.consistent_hash is not None:
            raise ValueError("set only one of simple, consistentHash")
        return self


class TcpKeepalive(SpecModel):
    probes: int | None = Field(default=None, ge=0)
    time: Duration | None = None
    interval: Duration | None = None


class TcpSettings(SpecModel):
    max_connections: int | None = Field(default=None, ge=0)
    connect_timeout: Duration | None = None
    tcp_keepalive: TcpKeepalive | None = None
    max_connection_duration: Duration | None = None
    idle_timeout: Duration | None = None


class HttpSettings(SpecModel):
    http1_max_pending_requests: int | None = Field(default=None, ge=0)
    http2_max_requests: int | None = Field(default=None, ge=0)
    max_requests_per_connection: int | None = Field(default=None, ge=0)
    max_retries: int | None = Field(default=None, ge=0)
    idle_timeout: Duration | None = None
    h2_upgrade_policy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] | None = None
    use_client_protocol: bool | None = None
    max_concurrent_streams: int | None = Field(default=None, ge=0)


class ConnectionPoolSettings(SpecModel):
    tcp: TcpSettings | None = None
    http: HttpSettings | None = None


class OutlierDetection(SpecModel):
    consecutive_errors: int | None = Field(default=None, ge=0)
    split_external_local_origin_errors: bool | None = None
    consecutive_local_origin_failures: int | None = Field(default=None, ge=0)
    consecutive_gateway_errors: int | None = Field(default=None, ge=0)
    consecutive_5xx_errors: int | None = Field(default=None, ge=0)
    interval: Duration | None = None
    base_ejection_time: Duration | None = None
    max_ejection_percent: int | None = Field(default=None, ge=0, le=100)
    min_health_percent: int | None = Field(default=None, ge=0, le=100)


class ClientTLSSettings(SpecModel):
    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] = "DISABLE"
    client_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    ca_crl: str | None = None
    credential_name: str | None = None
    subject_alt_names: list[str] = Field(default_factory=list)
    sni: str | None = None
    insecure_skip_verify: bool | None = None


class PortSelector(SpecModel):
    number: int = Field(ge=1, le=65535)


class PortTrafficPolicy(SpecModel):
    port: PortSelector | None = None
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


class TrafficPolicy(SpecModel):
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    port_level_settings: list[PortTrafficPolicy] = Field(default_factory=list)
    tunnel: dict[str, Any] | None = None
    proxy_protocol: dict[str, Any] | None = None


class Subset(SpecModel):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    traffic_policy: TrafficPolicy | None = None


class DestinationRuleSpec(SpecModel):
    host: str = ""
    traffic_policy: TrafficPolicy | None = None
    subsets: list[Subset] = Field(default_factory=list)
    export_to: list[str] = Field(default_factory=list)
    #: Istio's ``type.v1beta1.WorkloadSelector`` (``matchLabels``), unlike the ServiceEntry's
    #: ``networking.v1alpha3.WorkloadSelector`` (``labels``).
    workload_selector: LabelSelector | None = None

    def subset(self, name: str) -> Subset | None:
        """The subset called ``name``, if any."""
        return next((s for s in self.subsets if s.name == name), None)

    def hash_key(self, subset: str | None) -> str | None:
        """Aeraki's consistent-hash metadata key: the subset's policy, else the top-level one."""
        chosen = self.subset(subset) if subset else None
        policy = chosen.traffic_policy if chosen and chosen.traffic_policy else self.traffic_policy
        lb = policy.load_balancer if policy else None
        return lb.consistent_hash.http_header_name if lb and lb.consistent_hash else None


class DestinationRule(Resource):
    API_VERSIONS = ISTIO_NETWORKING_VERSIONS
    KIND = "DestinationRule"

    spec: DestinationRuleSpec
