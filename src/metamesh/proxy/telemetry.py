"""Who talks to whom, in Istio's words: the label values of the standard metrics (sans-IO).

Istio's standard metrics (``istio_requests_total`` and friends) carry one fixed label set,
:data:`ISTIO_LABELS`. The values come from three places, each resolved once per connection or
per (cluster, endpoint), never per request, so the request path only follows references:

* the proxy's own workload (:class:`Workload`, from its node id, namespace, labels and service
  account), the *source* side of an outbound listener (``reporter="source"``) and the
  *destination* side of an inbound one (``reporter="destination"``, a listener whose stat
  prefix or name starts with ``inbound``);
* the endpoint's labels (``app``, ``version``, ``metamesh.io/workload``, ``metamesh.io/namespace``)
  for the destination of an outbound request (:func:`endpoint_workload`);
* the peer: the verified SPIFFE principal of a mutual TLS client (``source_principal``,
  ``source_workload_namespace``, ``connection_security_policy="mutual_tls"``) and what a
  metamesh peer told about itself through the metadata exchange
  (:mod:`metamesh.proxy.exchange`).

What none of them says is Istio's ``unknown``. Every value comes from configuration or a peer's
identity, so the number of series is bounded by workloads x endpoints x protocols x the few
``response_code``/``response_flags`` values.

A downstream connection holds an :class:`Origin` (reporter, source workload, protocol, security
policy, the listener's service): interned, so its identity is a cheap dict key for the
per-cluster row of :class:`~metamesh.proxy.stats.RequestStats`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final

from metamesh.codecs import ErrorKind

UNKNOWN: Final = "unknown"

#: Every label of istio_requests_total / _duration_ / _request_bytes / _response_bytes.
ISTIO_LABELS: Final[tuple[str, ...]] = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "source_canonical_service",
    "source_canonical_revision",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "destination_canonical_service",
    "destination_canonical_revision",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
#: The labels of a :class:`~metamesh.proxy.stats.RequestStats` (:func:`request_labels`):
#: those of one series but its response code, gRPC status and response flags.
BASE_LABELS: Final[tuple[str, ...]] = tuple(
    n for n in ISTIO_LABELS if n not in ("response_code", "grpc_response_status", "response_flags")
)
#: The labels of istio_tcp_*: no response code, no gRPC status.
TCP_LABELS: Final[tuple[str, ...]] = tuple(
    n for n in ISTIO_LABELS if n not in ("response_code", "grpc_response_status")
)

#: Envoy's response flags for each kind of local reply ("-": none, Envoy's and Istio's empty).
RESPONSE_FLAGS: Final[dict[ErrorKind, str]] = {
    ErrorKind.ROUTE_NOT_FOUND: "NR",
    ErrorKind.CLUSTER_NOT_FOUND: "NC",
    ErrorKind.NO_HEALTHY_UPSTREAM: "UH",
    ErrorKind.OVER_LIMIT: "RL",
    ErrorKind.TIMEOUT: "UT",
    ErrorKind.UPSTREAM_RESET: "UC",
    ErrorKind.BAD_REQUEST: "DPE",
    ErrorKind.BAD_RESPONSE: "UPE",
    ErrorKind.UNAUTHORIZED: "UAEX",
    ErrorKind.FAULT_ABORT: "FI",
    ErrorKind.UNSPECIFIED: "UNSPECIFIED",
}
NO_FLAGS: Final = "-"

#: Endpoint / node labels that name the workload and its namespace (metamesh's; Istio reads
#: them from the pod's owner, which a ServiceEntry endpoint does not have).
WORKLOAD_LABEL: Final = "metamesh.io/workload"
NAMESPACE_LABEL: Final = "metamesh.io/namespace"


@dataclass(frozen=True, slots=True)
class Workload:
    """One side of a request as Istio labels it."""

    name: str = UNKNOWN
    namespace: str = UNKNOWN
    principal: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    cluster: str = UNKNOWN

    def with_peer(self, told: Workload) -> Workload:
        """This side completed by what the peer told about itself (known values win)."""
        return replace(
            self,
            **{
                k: v
                for k in ("name", "namespace", "principal", "app", "version", "cluster")
                if (v := getattr(told, k)) != UNKNOWN and getattr(self, k) == UNKNOWN
            },
        )


UNKNOWN_WORKLOAD: Final = Workload()


def canonical(w: Workload) -> tuple[str, str]:
    """Istio's canonical service and revision: the app (else the workload name) and the
    version (else ``latest``), which Kiali's graph groups by."""
    service = w.app if w.app != UNKNOWN else w.name
    return service, w.version if w.version != UNKNOWN else "latest"


def workload_name(labels: Mapping[str, str], fallback: str = UNKNOWN) -> str:
    """``metamesh.io/workload``, else ``<app>-<version>`` (the Deployment name pattern Istio's
    samples use), else ``app``, else ``fallback``."""
    named = labels.get(WORKLOAD_LABEL)
    if named:
        return named
    app, version = labels.get("app"), labels.get("version")
    if app and version:
        return f"{app}-{version}"
    return app or fallback


def local_workload(
    node_id: str,
    namespace: str | None,
    labels: Iterable[tuple[str, str]],
    service_account: str | None,
    trust_domain: str = "cluster.local",
    cluster: str | None = None,
) -> Workload:
    """The proxy's own workload from what it tells the control plane (its xDS node)."""
    lab = dict(labels)
    ns = namespace or lab.get(NAMESPACE_LABEL) or UNKNOWN
    principal = (
        f"spiffe://{trust_domain}/ns/{ns}/sa/{service_account}"
        if service_account and ns != UNKNOWN
        else UNKNOWN
    )
    return Workload(
        name=workload_name(lab, node_id or UNKNOWN),
        namespace=ns,
        principal=principal,
        app=lab.get("app") or UNKNOWN,
        version=lab.get("version") or UNKNOWN,
        cluster=cluster or UNKNOWN,
    )


def endpoint_workload(labels: Iterable[tuple[str, str]]) -> Workload:
    """The destination of an outbound request, from its endpoint's labels."""
    lab = dict(labels)
    return Workload(
        name=workload_name(lab),
        namespace=lab.get(NAMESPACE_LABEL) or UNKNOWN,
        app=lab.get("app") or UNKNOWN,
        version=lab.get("version") or UNKNOWN,
    )


def principal_workload(principal: str) -> Workload:
    """A mutual TLS client known only by its verified principal (``td/ns/<ns>/sa/<sa>``,
    with or without ``spiffe://``)."""
    if not principal:
        return UNKNOWN_WORKLOAD
    uri = principal if principal.startswith("spiffe://") else f"spiffe://{principal}"
    parts = uri.removeprefix("spiffe://").split("/")
    ns = parts[2] if len(parts) >= 5 and parts[1] == "ns" else UNKNOWN
    return Workload(namespace=ns, principal=uri)


def service_names(host: str, namespace: str = UNKNOWN) -> tuple[str, str, str]:
    """(destination_service, _name, _namespace) of a cluster's host: a Kubernetes name
    ``name.ns.svc.<domain>`` gives both parts; any other host is its own name, in the
    namespace of the workload behind it when known (Istio does the same for ServiceEntries)."""
    if not host:
        return UNKNOWN, UNKNOWN, UNKNOWN
    parts = host.split(".")
    if len(parts) >= 3 and parts[2] == "svc":
        return host, parts[0], parts[1]
    return host, host, namespace


class Origin:
    """What a downstream connection contributes to its requests' labels (interned by
    :meth:`metamesh.proxy.stats.ProxyStats.origin`, so compared and hashed by identity)."""

    __slots__ = ("inbound", "protocol", "reporter", "security", "service", "source")

    def __init__(
        self, reporter: str, source: Workload, protocol: str, security: str, service: str
    ) -> None:
        self.reporter = reporter
        self.source = source
        self.protocol = protocol
        self.security = security
        self.service = service
        #: Reported by the destination (an inbound listener), not the source.
        self.inbound = reporter == "destination"

    @property
    def key(self) -> tuple[str, Workload, str, str, str]:
        return (self.reporter, self.source, self.protocol, self.security, self.service)


def request_labels(origin: Origin, destination: Workload, service: str) -> tuple[str, ...]:
    """The values of :data:`BASE_LABELS` (every Istio label but response_code,
    grpc_response_status and response_flags, filled per series: :func:`full_labels`)."""
    s = origin.source
    d = destination
    svc, svc_name, svc_ns = service_names(service, d.namespace)
    return (
        origin.reporter,
        s.name, s.namespace, s.principal, s.app, s.version, s.cluster, *canonical(s),
        d.name, d.namespace, d.principal, d.app, d.version,
        svc, svc_name, svc_ns, d.cluster, *canonical(d),
        origin.protocol,
        origin.security,
    )  # fmt: skip


_PROTOCOL: Final = BASE_LABELS.index("request_protocol")


def full_labels(base: tuple[str, ...], code: str, flags: str) -> list[str]:
    """:data:`ISTIO_LABELS` values from :func:`request_labels` plus the per-series parts."""
    return [*base[: _PROTOCOL + 1], code, "", flags, *base[_PROTOCOL + 1 :]]


def tcp_labels(base: tuple[str, ...]) -> list[str]:
    """:data:`TCP_LABELS` values from :func:`request_labels` (request_protocol ``tcp``)."""
    return [*base[:_PROTOCOL], "tcp", NO_FLAGS, *base[_PROTOCOL + 1 :]]
