"""The mesh model: what the loaded resources mean, resolved once, before any xDS is built.

:func:`build_model` turns a :class:`~metamesh.api.ResourceSet` into a :class:`MeshModel`, a
frozen tree that :mod:`metamesh.control.translate` reads without looking at YAML again:

- one :class:`Service` per ServiceEntry host (an entry with two hosts gives two services that
  share its addresses, ports and endpoints, as in Istio);
- each :class:`ServicePort` carries the protocol its *name* selects (Aeraki's rule,
  :func:`metamesh.api.protocol_for_port`; ApplicationProtocols add codecs);
- :class:`Endpoint` s with the port they serve each service port on (``endpoint.ports[name]``,
  else ``targetPort``, else the service port), labels, weight and locality;
- :class:`Subset` s from the host's DestinationRule, and a :class:`ClusterPolicy` for every
  ``(port, subset)`` pair, merged the way Istio merges them: top level, then the top-level
  ``portLevelSettings`` for that port, then the subset's policy, then the subset's port-level
  settings; ``loadBalancer``, ``connectionPool`` and ``outlierDetection`` each replace the
  less specific one as a whole;
- the MetaRouter of each host (the first one loaded; validation warns about a second);
- the authorization policies that select each service (:attr:`Service.authorization`):
  every MetaAuthorizationPolicy, and every DubboAuthorizationPolicy converted by
  :func:`metamesh.api.dubbo_to_meta_policy`;
- the workloads behind a service: an endpoint with a ``serviceAccount`` (inline, or from an
  Istio ``WorkloadEntry`` that the ServiceEntry's ``workloadSelector`` selects in its
  namespace) is a mesh workload with its own proxy, which gets the inbound side
  (:mod:`metamesh.control.inbound`); the PeerAuthentications, for that side;
- the client TLS of each cluster (DestinationRule ``tls``, merged like the other settings:
  the most specific layer that sets ``tls`` wins);
- the Istio Sidecars, which limit what each proxy is sent (:mod:`metamesh.control.scope`).

:class:`MeshSettings` holds what the operator chooses rather than the manifests: Istio's root
namespace and the trust domain of SPIFFE ids. :func:`with_settings` applies them to a model
built with the defaults (the sources build models without knowing them).

Authorization scope
-------------------
Istio selects *workloads* by ``selector.matchLabels``; a policy applies to the *services* whose
workloads it selects: a service is selected when at least one of its endpoints carries every
label of ``matchLabels``. It is enforced on the inbound side of those workloads when the service
has mesh workloads, else (no proxy beside the servers) on the outbound listener. A policy
without a selector (or with empty ``matchLabels``) selects every
service. As in Istio, a policy only reaches services of its own namespace, except one in the
root namespace (:attr:`MeshSettings.root_namespace`, Istio's ``istio-system`` by default),
which reaches every namespace. Policies are kept in (namespace, name) order, so the
translation is stable.

Address allocation
------------------
A ServiceEntry without ``addresses`` still needs a listener address, so one is allocated from
``127.240.0.0/16`` (loopback, so the embedded proxy can listen on it without privileges, like
Istio's smart-DNS auto-allocation). The address is derived from the host name, not from a
counter: ``sha256(host)`` picks a slot among the 65,024 addresses whose last octet is 1..254,
so a restart with the same manifests gives every host the same address, and adding a service
does not move the others. Collisions (two hosts hashing to one slot, or a slot an explicit
``addresses`` entry already uses) are resolved by probing the next slots, hosts taken in sorted
order; only the hosts involved in a collision depend on which other hosts exist.

Problems (an unresolvable port name, an endpoint without an address) are collected in
:attr:`MeshModel.problems` as messages, never raised: the rest of the mesh still works.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TypeVar

from pydantic import BaseModel

from metamesh.api import (
    ApplicationProtocol,
    DestinationRule,
    DubboAuthorizationPolicy,
    MetaAuthorizationPolicy,
    MetaRouter,
    PortProtocolError,
    ResourceSet,
    ServiceEntry,
    application_codecs,
    dubbo_to_meta_policy,
    fqdn,
    protocol_for_port,
)
from metamesh.api.istio import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    LoadBalancerSettings,
    TrafficPolicy,
    WorkloadEntry,
    WorkloadEntryResource,
)
from metamesh.api.istio import (
    OutlierDetection as IstioOutlierDetection,
)
from metamesh.api.security import PeerAuthentication
from metamesh.api.sidecar import Sidecar
from metamesh.control.redis_model import RedisTables, redis_tables

T = TypeVar("T")

VIP_NETWORK = ipaddress.IPv4Network("127.240.0.0/16")
ROOT_NAMESPACE = "istio-system"  # a policy here applies to every namespace (Istio's rule)
TRUST_DOMAIN = "cluster.local"
_VIP_SLOTS = 256 * 254  # third octet 0..255, last octet 1..254


@dataclass(frozen=True, slots=True)
class ServicePort:
    """A service port; ``protocol`` is the Aeraki family or None when metamesh ignores it."""

    number: int
    name: str
    protocol: str | None = None
    application: str | None = None
    codec: str | None = None
    target_port: int | None = None

    @property
    def is_metaprotocol(self) -> bool:
        return self.protocol == "metaprotocol" and self.codec is not None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One workload; ``ports`` maps a service port name to the port it listens on."""

    address: str
    ports: tuple[tuple[str, int], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    weight: int = 1
    locality: str = ""
    #: The workload's service account: set, the endpoint is a mesh workload with a proxy
    #: of its own (inbound side, mutual TLS); "" a plain server.
    service_account: str = ""

    def port_for(self, port: ServicePort) -> int:
        return dict(self.ports).get(port.name) or port.target_port or port.number

    def matches(self, selector: Mapping[str, str]) -> bool:
        labels = dict(self.labels)
        return all(labels.get(k) == v for k, v in selector.items())


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    consecutive_5xx: int | None = None
    consecutive_gateway_errors: int | None = None
    consecutive_local_origin_failures: int | None = None
    split_external_local_origin_errors: bool = False
    interval: float | None = None
    base_ejection_time: float | None = None
    max_ejection_percent: int | None = None
    min_health_percent: int | None = None


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """DestinationRule ``tls`` of one cluster: ``mode`` DISABLE, SIMPLE, MUTUAL or
    ISTIO_MUTUAL; the files are paths on the proxy's host (SIMPLE, MUTUAL)."""

    mode: str = "DISABLE"
    client_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    sni: str = ""
    subject_alt_names: tuple[str, ...] = ()
    #: Istio's auto mTLS: only to the endpoints that are mesh workloads (the others plaintext).
    auto: bool = False


@dataclass(frozen=True, slots=True)
class ClusterPolicy:
    """A DestinationRule traffic policy resolved for one cluster, in Envoy's terms.

    ``lb_policy`` is an Envoy ``Cluster.LbPolicy`` name (``LEAST_CONN`` becomes
    ``LEAST_REQUEST`` and ``PASSTHROUGH`` ``CLUSTER_PROVIDED``, as Istio does; a consistent
    hash becomes ``RING_HASH`` or ``MAGLEV``). ``hash_key`` is Aeraki's
    ``consistentHash.httpHeaderName``: the request metadata key a route hashes on.
    """

    lb_policy: str = "ROUND_ROBIN"
    hash_key: str | None = None
    minimum_ring_size: int | None = None
    connect_timeout: float | None = None
    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None
    max_requests_per_connection: int | None = None
    outlier: OutlierPolicy | None = None
    #: None: no DestinationRule sets ``tls`` (auto mutual TLS, see control/inbound.py).
    tls: UpstreamTls | None = None


@dataclass(frozen=True, slots=True)
class Subset:
    name: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Service:
    """One host of a ServiceEntry, with everything its clusters and routes need."""

    host: str
    namespace: str
    addresses: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...] = ()
    subsets: tuple[Subset, ...] = ()
    policies: Mapping[tuple[int, str], ClusterPolicy] = field(
        default_factory=lambda: MappingProxyType({})
    )
    router: MetaRouter | None = None
    authorization: tuple[MetaAuthorizationPolicy, ...] = ()
    resolution: str = "STATIC"
    export_to: tuple[str, ...] = ()
    #: ServiceEntry ``subjectAltNames``: what its endpoints' certificates must carry one of
    #: under mutual TLS (a DestinationRule's ``tls.subjectAltNames`` overrides them).
    subject_alt_names: tuple[str, ...] = ()
    allocated_address: bool = False

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.number == number), None)

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.subsets if s.name == name), None)

    def policy(self, port: int, subset: str = "") -> ClusterPolicy:
        """The policy of cluster ``outbound|port|subset|host`` (defaults when no rule)."""
        return self.policies.get((port, subset)) or ClusterPolicy()

    def endpoints_for(self, subset: str = "") -> tuple[Endpoint, ...]:
        """The endpoints a subset selects by labels (all of them for ``""``)."""
        chosen = self.subset(subset) if subset else None
        if chosen is None:
            return self.endpoints if not subset else ()
        selector = dict(chosen.labels)
        return tuple(e for e in self.endpoints if e.matches(selector))

    @property
    def has_workloads(self) -> bool:
        """Some endpoint is a mesh workload (has a service account): the service has an
        inbound side, where its server-side policies run."""
        return any(e.service_account for e in self.endpoints)

    def visible_to(self, namespace: str | None) -> bool:
        """Istio ``exportTo``: empty or ``*`` = everyone, ``.`` = own namespace, ``~`` = none."""
        if namespace is None or not self.export_to or "*" in self.export_to:
            return True
        own = {self.namespace if e == "." else e for e in self.export_to if e != "~"}
        return namespace in own


@dataclass(frozen=True, slots=True)
class MeshModel:
    """Every service by host, in a stable (sorted) order, plus what could not be used."""

    services: Mapping[str, Service] = field(default_factory=lambda: MappingProxyType({}))
    problems: tuple[str, ...] = ()
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    authorization_policies: tuple[MetaAuthorizationPolicy, ...] = ()
    settings: MeshSettings = field(default_factory=lambda: MeshSettings())
    #: RedisService / RedisDestination by host (translated by control/redis.py).
    redis: RedisTables = field(default_factory=RedisTables)
    #: Istio Sidecars in (namespace, name) order: what each proxy is sent (control/scope.py).
    sidecars: tuple[Sidecar, ...] = ()


@dataclass(frozen=True, slots=True)
class MeshSettings:
    """The operator's choices: Istio's root namespace (mesh-wide policies) and trust domain."""

    root_namespace: str = ROOT_NAMESPACE
    trust_domain: str = TRUST_DOMAIN


def with_settings(model: MeshModel, settings: MeshSettings) -> MeshModel:
    """``model`` under ``settings``: the authorization scope follows the root namespace."""
    if settings == model.settings:
        return model
    services = {
        host: replace(
            service,
            authorization=tuple(
                p
                for p in model.authorization_policies
                if policy_selects(p, service, settings.root_namespace)
            ),
        )
        for host, service in model.services.items()
    }
    return replace(model, services=MappingProxyType(services), settings=settings)


def build_model(resources: ResourceSet) -> MeshModel:
    """The mesh model of ``resources`` (validate them first; this only skips what is unusable)."""
    parts = model_parts(resources)
    entries = service_entries(resources)
    vips = allocate_addresses(
        [host for host, se in entries if not se.spec.addresses],
        taken=[a for _, se in entries for a in se.spec.addresses],
    )
    built = build_services(resources, parts, vips, _services, entries)
    problems = [p for _, found in built.values() for p in found]
    return assemble_model({h: s for h, (s, _) in built.items()}, problems, parts)


@dataclass(frozen=True, slots=True)
class ModelParts:
    """What :func:`build_model` reads across the whole set rather than per host: the
    application codecs, WorkloadEntries and authorization policies (which every service's
    build may look at) and the tables the model carries beside the services."""

    codecs: Mapping[str, str]
    workloads: tuple[WorkloadEntryResource, ...]
    policies: tuple[MetaAuthorizationPolicy, ...]
    peer: tuple[PeerAuthentication, ...]
    redis: RedisTables
    sidecars: tuple[Sidecar, ...]


def model_parts(resources: ResourceSet) -> ModelParts:
    return ModelParts(
        codecs=application_codecs(resources.of_kind(ApplicationProtocol)),
        workloads=tuple(resources.of_kind(WorkloadEntryResource)),
        policies=tuple(authorization_policies(resources)),
        peer=tuple(
            sorted(resources.of_kind(PeerAuthentication), key=lambda p: (p.namespace, p.name))
        ),
        redis=redis_tables(resources),
        sidecars=tuple(sorted(resources.of_kind(Sidecar), key=lambda s: (s.namespace, s.name))),
    )


def service_entries(resources: ResourceSet) -> list[tuple[str, ServiceEntry]]:
    """(host, ServiceEntry) for every host of every entry, by host, in load order per host."""
    entries = [
        (fqdn(h, se.namespace), se) for se in resources.of_kind(ServiceEntry) for h in se.spec.hosts
    ]
    entries.sort(key=lambda pair: pair[0])
    return entries


def build_services(
    resources: ResourceSet,
    parts: ModelParts,
    vips: Mapping[str, str],
    memo: ServiceMemo | None = None,
    entries: list[tuple[str, ServiceEntry]] | None = None,
) -> dict[str, tuple[Service, list[str]]]:
    """Host -> its service and the problems met building it (a second ServiceEntry for the
    host included), in host order; ``vips``: the addresses allocated to entries without any.
    A host's result depends on its ServiceEntries, DestinationRule and MetaRouter (the
    first of each in load order) and ``parts`` only, so ``resources`` may be any part of a
    set that holds all of those for the hosts wanted."""
    rules = _by_host(
        (fqdn(dr.spec.host, dr.namespace), dr) for dr in resources.of_kind(DestinationRule)
    )
    routers = _by_host(
        (fqdn(mr.spec.hosts[0], mr.namespace), mr)
        for mr in resources.of_kind(MetaRouter)
        if mr.spec.hosts
    )
    built: dict[str, tuple[Service, list[str]]] = {}
    for host, se in entries if entries is not None else service_entries(resources):
        if host in built:
            built[host][1].append(f"ServiceEntry {se.ref}: host {host} already defined; ignored")
            continue
        addresses = tuple(se.spec.addresses) or (vips[host],)
        found: list[str] = []
        args = (host, se, addresses, parts.codecs, rules.get(host), routers.get(host))
        if memo is not None:
            service = memo.get(*args, found, parts.workloads)
        else:
            service = _service(*args, found, parts.workloads)
        selected = tuple(p for p in parts.policies if policy_selects(p, service))
        built[host] = (replace(service, authorization=selected) if selected else service, found)
    if memo is not None:
        memo.finish()
    return built


def assemble_model(
    services: Mapping[str, Service], problems: Iterable[str], parts: ModelParts
) -> MeshModel:
    return MeshModel(
        MappingProxyType(dict(services)),
        (*problems, *parts.redis.problems),
        parts.peer,
        parts.policies,
        redis=parts.redis,
        sidecars=parts.sidecars,
    )


def authorization_policies(resources: ResourceSet) -> list[MetaAuthorizationPolicy]:
    """Every authorization policy in the general form, in (namespace, name) order."""
    policies = list(resources.of_kind(MetaAuthorizationPolicy))
    policies += [dubbo_to_meta_policy(p) for p in resources.of_kind(DubboAuthorizationPolicy)]
    return sorted(policies, key=lambda p: (p.namespace, p.name))


def policy_selects(
    policy: MetaAuthorizationPolicy, service: Service, root_namespace: str = ROOT_NAMESPACE
) -> bool:
    """Whether ``policy`` applies to ``service`` (see "Authorization scope" above)."""
    if policy.namespace not in (service.namespace, root_namespace):
        return False
    selector = policy.spec.selector
    labels = selector.match_labels if selector is not None else {}
    return not labels or any(e.matches(labels) for e in service.endpoints)


def _by_host(pairs: Iterable[tuple[str, T]]) -> dict[str, T]:
    """First resource per host, in load order (validation warns about the others)."""
    table: dict[str, T] = {}
    for host, item in pairs:
        table.setdefault(host, item)
    return table


class ServiceMemo:
    """:func:`_service` results of the last build, reused when their inputs are the very same
    objects: the config sources hand an unchanged file's resources over as the same frozen
    objects, so a model rebuilt after one edit among 10,000 services rebuilds one service.
    The problems a build reported are replayed with its result."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[tuple[object, ...], Service, list[str]]] = {}
        self._next: dict[str, tuple[tuple[object, ...], Service, list[str]]] = {}
        self._built_with: object = None

    def get(
        self,
        host: str,
        se: ServiceEntry,
        addresses: tuple[str, ...],
        codecs: Mapping[str, str],
        rule: DestinationRule | None,
        router: MetaRouter | None,
        problems: list[str],
        workloads: Sequence[WorkloadEntryResource],
    ) -> Service:
        selector = se.spec.workload_selector
        selected = tuple(workloads) if selector is not None and selector.labels else ()
        key = (se, addresses, codecs, rule, router, selected)
        hit = self._last.get(host) or self._next.get(host)
        if hit is not None and _same_inputs(hit[0], key):
            service, found = hit[1], hit[2]
        else:
            found = []
            service = _service(host, se, addresses, codecs, rule, router, found, workloads)
        problems.extend(found)
        self._next[host] = (key, service, found)
        return service

    def finish(self) -> None:
        """End of one build: keep only what it used."""
        self._last, self._next = self._next, {}


def _same_inputs(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """Identity for resources (frozen, compared cheaply), equality for the small rest."""
    pairs = zip(a, b, strict=True)
    return all(x is y or (not isinstance(x, BaseModel) and x == y) for x, y in pairs)


_services = ServiceMemo()


def _service(
    host: str,
    se: ServiceEntry,
    addresses: tuple[str, ...],
    codecs: Mapping[str, str],
    rule: DestinationRule | None,
    router: MetaRouter | None,
    problems: list[str],
    workloads: Sequence[WorkloadEntryResource] = (),
) -> Service:
    ports = tuple(
        _port(p.number, p.name, p.target_port, codecs, se, problems) for p in se.spec.ports
    )
    entries = [(e, f"ServiceEntry {se.ref}: endpoint") for e in se.spec.endpoints]
    selector = se.spec.workload_selector
    if selector is not None and selector.labels:
        entries += [
            (w.spec, f"WorkloadEntry {w.ref}")
            for w in sorted(workloads, key=lambda w: w.name)
            if w.namespace == se.namespace
            and all(w.spec.labels.get(k) == v for k, v in selector.labels.items())
        ]
    endpoints = []
    for entry, where in entries:
        if not entry.address:
            problems.append(f"{where} without address ignored")
            continue
        endpoints.append(_endpoint(entry))
    subsets = (
        tuple(Subset(s.name, tuple(sorted(s.labels.items()))) for s in rule.spec.subsets)
        if rule
        else ()
    )
    policies: dict[tuple[int, str], ClusterPolicy] = {}
    for port in ports:
        for subset_name in ("", *(s.name for s in subsets)):
            policies[(port.number, subset_name)] = _policy_for(rule, port.number, subset_name)
    return Service(
        host=host,
        namespace=se.namespace,
        addresses=addresses,
        ports=ports,
        endpoints=tuple(endpoints),
        subsets=subsets,
        policies=MappingProxyType(policies),
        router=router,
        resolution=se.spec.resolution,
        export_to=tuple(se.spec.export_to),
        subject_alt_names=tuple(se.spec.subject_alt_names),
        allocated_address=not se.spec.addresses,
    )


def _endpoint(entry: WorkloadEntry) -> Endpoint:
    return Endpoint(
        address=entry.address,
        ports=tuple(sorted(entry.ports.items())),
        labels=tuple(sorted(entry.labels.items())),
        weight=entry.weight or 1,
        locality=entry.locality or "",
        service_account=entry.service_account or "",
    )


def _port(
    number: int,
    name: str,
    target_port: int | None,
    codecs: Mapping[str, str],
    se: ServiceEntry,
    problems: list[str],
) -> ServicePort:
    try:
        proto = protocol_for_port(name, codecs)
    except PortProtocolError as e:
        problems.append(f"ServiceEntry {se.ref}: {e}")
        proto = None
    if proto is None:
        return ServicePort(number, name, target_port=target_port)
    if proto.protocol == "kafka":  # served by the Kafka codec as MetaProtocol (control/kafka.py)
        return ServicePort(number, name, "metaprotocol", "kafka", "kafka", target_port)
    return ServicePort(number, name, proto.protocol, proto.application, proto.codec, target_port)


# --- DestinationRule policies ------------------------------------------------------------


@dataclass(slots=True)
class _Layers:
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: IstioOutlierDetection | None = None
    tls: ClientTLSSettings | None = None

    def apply(self, policy: TrafficPolicy | None, port: int) -> None:
        if policy is None:
            return
        self._take(policy.load_balancer, policy.connection_pool, policy.outlier_detection)
        self.tls = policy.tls or self.tls
        for level in policy.port_level_settings:
            if level.port is not None and level.port.number == port:
                self._take(level.load_balancer, level.connection_pool, level.outlier_detection)
                self.tls = level.tls or self.tls

    def _take(
        self,
        lb: LoadBalancerSettings | None,
        pool: ConnectionPoolSettings | None,
        outlier: IstioOutlierDetection | None,
    ) -> None:
        self.load_balancer = lb or self.load_balancer
        self.connection_pool = pool or self.connection_pool
        self.outlier_detection = outlier or self.outlier_detection


_SIMPLE_LB = {
    "UNSPECIFIED": "ROUND_ROBIN",
    "ROUND_ROBIN": "ROUND_ROBIN",
    "LEAST_REQUEST": "LEAST_REQUEST",
    "LEAST_CONN": "LEAST_REQUEST",
    "RANDOM": "RANDOM",
    "PASSTHROUGH": "CLUSTER_PROVIDED",
}


def _policy_for(rule: DestinationRule | None, port: int, subset: str) -> ClusterPolicy:
    if rule is None:
        return ClusterPolicy()
    layers = _Layers()
    layers.apply(rule.spec.traffic_policy, port)
    chosen = rule.spec.subset(subset) if subset else None
    if chosen is not None:
        layers.apply(chosen.traffic_policy, port)
    lb_policy, hash_key, ring = "ROUND_ROBIN", None, None
    lb = layers.load_balancer
    if lb is not None and lb.consistent_hash is not None:
        ch = lb.consistent_hash
        lb_policy = "MAGLEV" if ch.maglev is not None else "RING_HASH"
        hash_key = ch.http_header_name
        ring = (ch.ring_hash.minimum_ring_size if ch.ring_hash else None) or ch.minimum_ring_size
    elif lb is not None and lb.simple is not None:
        lb_policy = _SIMPLE_LB[lb.simple]
    pool = layers.connection_pool
    tcp = pool.tcp if pool else None
    http = pool.http if pool else None
    return ClusterPolicy(
        lb_policy=lb_policy,
        hash_key=hash_key,
        minimum_ring_size=ring,
        connect_timeout=tcp.connect_timeout if tcp else None,
        max_connections=tcp.max_connections if tcp else None,
        max_pending_requests=http.http1_max_pending_requests if http else None,
        max_requests=http.http2_max_requests if http else None,
        max_retries=http.max_retries if http else None,
        max_requests_per_connection=http.max_requests_per_connection or None if http else None,
        outlier=_outlier(layers.outlier_detection),
        tls=_tls(layers.tls),
    )


def _tls(tls: ClientTLSSettings | None) -> UpstreamTls | None:
    if tls is None:
        return None
    return UpstreamTls(
        mode=tls.mode,
        client_certificate=tls.client_certificate or "",
        private_key=tls.private_key or "",
        ca_certificates=tls.ca_certificates or "",
        sni=tls.sni or "",
        subject_alt_names=tuple(tls.subject_alt_names),
    )


def _outlier(od: IstioOutlierDetection | None) -> OutlierPolicy | None:
    if od is None:
        return None
    return OutlierPolicy(
        consecutive_5xx=od.consecutive_5xx_errors
        if od.consecutive_5xx_errors is not None
        else od.consecutive_errors,
        consecutive_gateway_errors=od.consecutive_gateway_errors,
        consecutive_local_origin_failures=od.consecutive_local_origin_failures,
        split_external_local_origin_errors=bool(od.split_external_local_origin_errors),
        interval=od.interval,
        base_ejection_time=od.base_ejection_time,
        max_ejection_percent=od.max_ejection_percent,
        min_health_percent=od.min_health_percent,
    )


# --- address allocation ------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 17)
def vip_slot(host: str) -> int:
    """The preferred slot of ``host`` in 127.240.0.0/16 (0 .. 65,023)."""
    digest = hashlib.sha256(host.encode()).digest()
    return int.from_bytes(digest[:8], "big") % _VIP_SLOTS


def slot_address(slot: int) -> str:
    third, last = divmod(slot % _VIP_SLOTS, 254)
    return str(VIP_NETWORK.network_address + third * 256 + last + 1)


_last_allocation: tuple[tuple[tuple[str, ...], tuple[str, ...]], dict[str, str]] | None = None


def allocate_addresses(hosts: Iterable[str], taken: Iterable[str] = ()) -> dict[str, str]:
    """A stable address in 127.240.0.0/16 for each host (see the module docstring); the last
    allocation is reused when hosts and taken addresses are the same (an edit that adds no
    host, among 10,000)."""
    global _last_allocation
    key = (tuple(hosts), tuple(taken))
    if _last_allocation is not None and _last_allocation[0] == key:
        return dict(_last_allocation[1])
    allocated = _allocate(key[0], key[1])
    _last_allocation = (key, allocated)
    return dict(allocated)


def _allocate(hosts: Iterable[str], taken: Iterable[str]) -> dict[str, str]:
    used = set(taken)
    allocated: dict[str, str] = {}
    for host in sorted(set(hosts)):
        slot = vip_slot(host)
        for probe in range(_VIP_SLOTS):
            address = slot_address(slot + probe)
            if address not in used:
                break
        else:  # pragma: no cover - 65,024 services without addresses
            raise ValueError("127.240.0.0/16 is exhausted")
        used.add(address)
        allocated[host] = address
    return allocated
