"""Fields metamesh accepts but does not apply, and the warnings that say so.

metamesh loads Istio and Aeraki manifests unchanged, so it accepts every field of their APIs.
Not all of them do something here: there is no gateway proxy, no locality-aware load
balancing, no certificate from a Kubernetes Secret. A field that is accepted but not applied
must not be silently ignored, so every model field is in exactly one of three registries
(``tests/api/test_unsupported.py`` walks the models and fails on a field in none of them):

:data:`APPLIED`
    the translation (``control/model.py``, ``translate.py``, ``routes.py``,
    ``filter_configs.py``) and the proxy's read-back of it (``to_proxy.py``) act on it;
:data:`UNSUPPORTED`
    accepted but not applied, with the reason; a resource that sets one gets a **warning**
    naming the field (:func:`unsupported_findings`). Some apply only to some values (a
    ``protocol`` other than TCP, ``simple: PASSTHROUGH``); the fields below an unsupported
    one are covered by it;
:data:`NOT_CONFIG`
    Kubernetes bookkeeping that configures nothing in Istio either (``status``, labels and
    annotations of the resource itself).

A value that reaches xDS but that metamesh's own proxy does not act on (``minimumRingSize``,
``maxRetries``) counts as unsupported: metamesh's proxy is the data plane that runs
MetaProtocol, and the warning says that Envoy would get the value.

Authorization sources with ``principals`` or ``namespaces`` need a verified peer identity,
which only the inbound side of a mesh workload has (mutual TLS; an endpoint with a
``serviceAccount``). A policy that selects no such service is enforced on the outbound
listener, where such a source never matches: :func:`authorization_findings` says what it means
for the policy (an ALLOW policy whose every rule needs an identity denies every request to what
it selects). Both are part of
:func:`metamesh.api.validate`, so ``metamesh validate`` prints them and the control plane logs
them when it loads the directory (:mod:`metamesh.control.sources`); a runtime reading policies
from elsewhere can call :func:`authorization_findings` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from metamesh.api import authz, base, istio, metaprotocol, redis, security, sidecar
from metamesh.api.problems import FieldPath

Finding = tuple[FieldPath, str]
ROOT = "istio-system"  # Istio's root namespace (control/model.py's default)
FieldKey = tuple[type[BaseModel], str]


def _is_set(value: Any) -> bool:
    return value not in (None, False, "", [], {})


def _exported_narrowly(value: Any) -> bool:
    return _is_set(value) and list(value) != ["*"]


@dataclass(frozen=True, slots=True)
class Unsupported:
    """Why a field is not applied; ``when`` tells the values that are not (default: any set)."""

    reason: str
    when: Callable[[Any], bool] = _is_set


_NO_MTLS = "the peer has no verified identity without mutual TLS"
_TO_ENVOY = "it reaches Envoy in xDS, but the metamesh proxy does not use it"

UNSUPPORTED: Mapping[FieldKey, Unsupported] = {
    # Sidecar: only the egress hosts (and the workload selector) scope what a proxy gets
    (sidecar.SidecarSpec, "ingress"): Unsupported(
        "inbound listeners come from the workload's endpoints (docs/mesh.md), not the Sidecar"
    ),
    (sidecar.SidecarSpec, "outbound_traffic_policy"): Unsupported(
        "there is no passthrough cluster: traffic to unknown destinations is not proxied"
    ),
    (sidecar.SidecarSpec, "inbound_connection_pool"): Unsupported(
        "inbound connections to the local app are not pooled by settings"
    ),
    (sidecar.EgressListener, "port"): Unsupported(
        "egress listeners are not built per port: the hosts are visible on all their ports"
    ),
    (sidecar.EgressListener, "bind"): Unsupported(
        "listeners bind to the services' addresses, not to a Sidecar bind address"
    ),
    (sidecar.EgressListener, "capture_mode"): Unsupported(
        "interception is set on the proxy's command line (docs/sidecar.md)"
    ),
    # ServiceEntry
    (istio.ServicePort, "protocol"): Unsupported(
        "only TCP is meaningful: metamesh picks the protocol from the port name",
        when=lambda value: isinstance(value, str) and value.upper() != "TCP",
    ),
    (istio.ServiceEntrySpec, "location"): Unsupported(
        "MESH_EXTERNAL is not treated differently: the service is routed like any other",
        when=lambda value: value == "MESH_EXTERNAL",
    ),
    (istio.WorkloadEntry, "network"): Unsupported(
        "multi-network meshes are not supported: every endpoint is dialled directly"
    ),
    (istio.WorkloadEntry, "locality"): Unsupported(
        "locality-aware load balancing is not implemented: endpoints of every locality take "
        "traffic alike"
    ),
    # DestinationRule
    (istio.DestinationRuleSpec, "export_to"): Unsupported(
        "a DestinationRule applies to every proxy that sees its host, whatever its exportTo",
        when=_exported_narrowly,
    ),
    (istio.DestinationRuleSpec, "workload_selector"): Unsupported(
        "a DestinationRule applies to every proxy, whatever its workloadSelector"
    ),
    (istio.ClientTLSSettings, "ca_crl"): Unsupported(
        "certificate revocation lists are not checked"
    ),
    (istio.ClientTLSSettings, "credential_name"): Unsupported(
        "certificates are not read from Kubernetes Secrets: give clientCertificate, "
        "privateKey and caCertificates as files on the proxy's host"
    ),
    (istio.ClientTLSSettings, "insecure_skip_verify"): Unsupported(
        "the server certificate is always verified (against caCertificates, else the "
        "system's roots)"
    ),
    (istio.TrafficPolicy, "tunnel"): Unsupported("tunnelling (HTTP CONNECT) is not implemented"),
    (istio.TrafficPolicy, "proxy_protocol"): Unsupported(
        "the PROXY protocol header is not sent upstream"
    ),
    (istio.LoadBalancerSettings, "simple"): Unsupported(
        "PASSTHROUGH (to the original destination) is not implemented: the endpoints are "
        "balanced round robin",
        when=lambda value: value == "PASSTHROUGH",
    ),
    (istio.LoadBalancerSettings, "locality_lb_setting"): Unsupported(
        "locality-aware load balancing (distribute, failover) is not implemented"
    ),
    (istio.LoadBalancerSettings, "warmup_duration_secs"): Unsupported(
        "slow start is not implemented: a new endpoint takes its full share at once"
    ),
    (istio.LoadBalancerSettings, "warmup"): Unsupported(
        "slow start is not implemented: a new endpoint takes its full share at once"
    ),
    (istio.ConsistentHash, "http_cookie"): Unsupported(
        "hashing on a cookie is not supported (MetaProtocol requests carry none): requests "
        "get a random point on the ring; hash on metadata with httpHeaderName"
    ),
    (istio.ConsistentHash, "use_source_ip"): Unsupported(
        "hashing on the source IP is not implemented: requests get a random point on the "
        "ring; hash on metadata with httpHeaderName"
    ),
    (istio.ConsistentHash, "http_query_parameter_name"): Unsupported(
        "hashing on a query parameter is not supported (MetaProtocol requests have none): "
        "requests get a random point on the ring; hash on metadata with httpHeaderName"
    ),
    (istio.ConsistentHash, "minimum_ring_size"): Unsupported(
        f"{_TO_ENVOY} (its ring has 100 points per unit of endpoint weight)"
    ),
    (istio.RingHash, "minimum_ring_size"): Unsupported(
        f"{_TO_ENVOY} (its ring has 100 points per unit of endpoint weight)"
    ),
    (istio.Maglev, "table_size"): Unsupported(
        "not used: the metamesh proxy runs consistent hashing as a ring hash"
    ),
    (istio.TcpSettings, "tcp_keepalive"): Unsupported("TCP keepalive is not set on upstreams"),
    (istio.TcpSettings, "max_connection_duration"): Unsupported(
        "upstream connections are not closed after a maximum duration"
    ),
    (istio.TcpSettings, "idle_timeout"): Unsupported(
        "idle upstream connections are not closed after a timeout"
    ),
    (istio.HttpSettings, "idle_timeout"): Unsupported(
        "idle upstream connections are not closed after a timeout"
    ),
    (istio.HttpSettings, "max_retries"): Unsupported(
        f"{_TO_ENVOY} (it does not cap concurrent retries)"
    ),
    (istio.HttpSettings, "h2_upgrade_policy"): Unsupported(
        "an HTTP/2 setting: MetaProtocol upstreams are not HTTP"
    ),
    (istio.HttpSettings, "use_client_protocol"): Unsupported(
        "an HTTP setting: MetaProtocol upstreams are not HTTP"
    ),
    (istio.HttpSettings, "max_concurrent_streams"): Unsupported(
        "an HTTP/2 setting: MetaProtocol upstreams are not HTTP"
    ),
    (istio.OutlierDetection, "min_health_percent"): Unsupported(
        f"{_TO_ENVOY} (as the panic threshold; its ejections are capped by maxEjectionPercent only)"
    ),
    # MetaRouter
    (metaprotocol.MetaRouterSpec, "gateways"): Unsupported(
        "metamesh has no gateway proxies: the routes apply to the mesh's proxies, even "
        "though in Aeraki a gateways list without 'mesh' keeps them off the sidecars",
        when=lambda value: _is_set(value) and list(value) != ["mesh"],
    ),
    (metaprotocol.MetaRouterSpec, "export_to"): Unsupported(
        "a MetaRouter applies to every proxy that sees its host, whatever its exportTo",
        when=_exported_narrowly,
    ),
    # authorization (MetaAuthorizationPolicy and DubboAuthorizationPolicy share Source)
    # RedisService, RedisDestination (their registries live beside the models)
    **{key: Unsupported(reason, when) for key, (reason, when) in redis.UNSUPPORTED.items()},
}


def _fields(cls: type[BaseModel], *names: str) -> dict[type[BaseModel], frozenset[str]]:
    return {cls: frozenset(names)}


_ENVELOPE = ("api_version", "kind", "metadata", "spec")

#: Fields the translation acts on (for an unsupported field with a value condition, the
#: other values are applied too; it is listed in :data:`UNSUPPORTED` only).
APPLIED: Mapping[type[BaseModel], frozenset[str]] = {
    **{
        cls: frozenset(_ENVELOPE)
        for cls in (
            istio.ServiceEntry,
            istio.DestinationRule,
            metaprotocol.ApplicationProtocol,
            metaprotocol.MetaRouter,
            authz.MetaAuthorizationPolicy,
            authz.DubboAuthorizationPolicy,
            istio.WorkloadEntryResource,
            security.PeerAuthentication,
            sidecar.Sidecar,
        )
    },
    **_fields(base.Metadata, "name", "namespace"),
    **_fields(base.StringMatch, "exact", "prefix", "regex"),
    **_fields(base.LabelSelector, "match_labels"),
    # ServiceEntry
    **_fields(
        istio.ServiceEntrySpec,
        "hosts",
        "addresses",
        "ports",
        "resolution",
        "endpoints",
        "export_to",
        "workload_selector",
        "subject_alt_names",
    ),
    **_fields(base.WorkloadSelector, "labels"),
    **_fields(istio.ServicePort, "number", "name", "target_port"),
    **_fields(istio.WorkloadEntry, "address", "ports", "labels", "weight", "service_account"),
    # Sidecar
    **_fields(sidecar.SidecarSpec, "workload_selector", "egress"),
    **_fields(sidecar.EgressListener, "hosts"),
    # PeerAuthentication
    **_fields(security.PeerAuthenticationSpec, "selector", "mtls", "port_level_mtls"),
    **_fields(security.MutualTls, "mode"),
    # DestinationRule
    **_fields(istio.DestinationRuleSpec, "host", "traffic_policy", "subsets"),
    **_fields(istio.Subset, "name", "labels", "traffic_policy"),
    **_fields(
        istio.TrafficPolicy,
        "load_balancer",
        "connection_pool",
        "outlier_detection",
        "port_level_settings",
        "tls",
    ),
    **_fields(
        istio.PortTrafficPolicy,
        "port",
        "load_balancer",
        "connection_pool",
        "outlier_detection",
        "tls",
    ),
    **_fields(
        istio.ClientTLSSettings,
        "mode",
        "client_certificate",
        "private_key",
        "ca_certificates",
        "subject_alt_names",
        "sni",
    ),
    **_fields(istio.PortSelector, "number"),
    **_fields(istio.LoadBalancerSettings, "consistent_hash"),
    **_fields(istio.ConsistentHash, "http_header_name", "ring_hash", "maglev"),
    **_fields(istio.ConnectionPoolSettings, "tcp", "http"),
    **_fields(istio.TcpSettings, "max_connections", "connect_timeout"),
    **_fields(
        istio.HttpSettings,
        "http1_max_pending_requests",
        "http2_max_requests",
        "max_requests_per_connection",
    ),
    **_fields(
        istio.OutlierDetection,
        "consecutive_errors",
        "split_external_local_origin_errors",
        "consecutive_local_origin_failures",
        "consecutive_gateway_errors",
        "consecutive_5xx_errors",
        "interval",
        "base_ejection_time",
        "max_ejection_percent",
    ),
    # ApplicationProtocol, MetaRouter
    **_fields(metaprotocol.ApplicationProtocolSpec, "protocol", "codec"),
    **_fields(
        metaprotocol.MetaRouterSpec, "hosts", "routes", "local_rate_limit", "global_rate_limit"
    ),
    **_fields(
        metaprotocol.MetaRoute,
        "name",
        "match",
        "route",
        "mirror",
        "mirror_percentage",
        "request_mutation",
        "response_mutation",
        "timeout",
        "retries",
        "fault",
    ),
    **_fields(metaprotocol.MetaRouteMatch, "attributes"),
    **_fields(metaprotocol.MetaRouteDestination, "destination", "weight"),
    **_fields(metaprotocol.Destination, "host", "subset", "port"),
    **_fields(metaprotocol.PortSelector, "number"),
    **_fields(metaprotocol.Percent, "value"),
    **_fields(metaprotocol.KeyValue, "key", "value"),
    **_fields(
        metaprotocol.RetryPolicy,
        "attempts",
        "per_try_timeout",
        "retry_on",
        "backoff",
        "retry_non_idempotent",
    ),
    **_fields(metaprotocol.RetryBackoff, "base_interval", "max_interval"),
    **_fields(metaprotocol.FaultInjection, "delay", "abort"),
    **_fields(metaprotocol.FaultDelay, "fixed_delay", "percentage"),
    **_fields(metaprotocol.FaultAbort, "error_kind", "message", "percentage"),
    **_fields(metaprotocol.LocalRateLimit, "token_bucket", "conditions"),
    **_fields(metaprotocol.LocalRateLimitCondition, "match", "token_bucket"),
    **_fields(metaprotocol.TokenBucket, "max_tokens", "tokens_per_fill", "fill_interval"),
    **_fields(
        metaprotocol.GlobalRateLimit,
        "match",
        "domain",
        "request_timeout",
        "deny_on_fail",
        "rate_limit_service",
        "descriptors",
    ),
    **_fields(metaprotocol.RateLimitDescriptor, "property", "descriptor_key"),
    # authorization
    **_fields(authz.MetaAuthorizationPolicySpec, "selector", "action", "rules"),
    **_fields(authz.DubboAuthorizationPolicySpec, "selector", "action", "rules"),
    **_fields(authz.Rule, "from_", "to"),
    **_fields(authz.DubboRule, "from_", "to"),
    **_fields(authz.From, "source"),
    **_fields(
        authz.Source,
        "ip_blocks",
        "not_ip_blocks",
        "principals",
        "namespaces",
        "not_principals",
        "not_namespaces",
    ),
    **_fields(authz.To, "operation"),
    **_fields(authz.DubboTo, "operation"),
    **_fields(authz.Operation, "attributes", "not_attributes"),
    **_fields(authz.DubboOperation, "interfaces", "not_interfaces", "methods", "not_methods"),
    **redis.APPLIED,
}

#: Kubernetes bookkeeping: configures nothing, in Istio either.
NOT_CONFIG: frozenset[FieldKey] = frozenset(
    {
        *((cls, "status") for cls in APPLIED if issubclass(cls, base.Resource)),
        (base.Metadata, "labels"),
        (base.Metadata, "annotations"),
    }
)


def unsupported_findings(resource: base.Resource) -> list[Finding]:
    """A warning per unsupported field ``resource`` sets (repeats in lists are counted)."""
    found: dict[FieldKey, list[FieldPath]] = {}
    for path, key in _walk(resource, ()):
        found.setdefault(key, []).append(path)
    findings = []
    for key, paths in found.items():
        message = f"not supported: {UNSUPPORTED[key].reason}"
        if len(paths) > 1:
            message += f" (set in {len(paths) - 1} more place{'s' if len(paths) > 2 else ''})"
        findings.append((paths[0], message))
    return findings


def _walk(model: BaseModel, path: FieldPath) -> Iterator[tuple[FieldPath, FieldKey]]:
    cls = type(model)
    for name, info in cls.model_fields.items():
        value = getattr(model, name)
        here = (*path, info.alias or name)
        entry = UNSUPPORTED.get((cls, name))
        if entry is not None:
            if name in model.model_fields_set and entry.when(value):
                yield here, (cls, name)
            continue
        yield from _walk_value(value, here)


def _walk_value(value: Any, path: FieldPath) -> Iterator[tuple[FieldPath, FieldKey]]:
    if isinstance(value, BaseModel):
        yield from _walk(value, path)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk_value(item, (*path, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk_value(item, (*path, str(key)))


# --- authorization without identities ------------------------------------------------------


def needs_identity(rule: authz.Rule | authz.DubboRule) -> bool:
    """Whether every source of ``rule`` requires principals or namespaces (so none matches)."""
    return bool(rule.from_) and all(f.source.principals or f.source.namespaces for f in rule.from_)


def authorization_findings(
    action: str, rules: Sequence[authz.Rule | authz.DubboRule], path: FieldPath = ("spec",)
) -> list[Finding]:
    """What rules that can never match (see :func:`needs_identity`) mean for a policy that is
    enforced without mutual TLS (see :func:`enforced_with_mtls`)."""
    dead = [i for i, rule in enumerate(rules) if needs_identity(rule)]
    findings: list[Finding] = []
    effect = "allows" if action == "ALLOW" else "denies"
    for i in dead:
        message = (
            f"this rule can never match: each of its sources requires a peer identity "
            f"(principals or namespaces), which only the inbound side of a mesh workload "
            f"(an endpoint with a serviceAccount) verifies, and the services this policy "
            f"selects have none; so this {action} rule {effect} nothing"
        )
        findings.append(((*path, "rules", i), message))
    if action == "ALLOW" and rules and len(dead) == len(rules):
        message = (
            "this ALLOW policy can never match (every rule requires a peer identity), so every "
            "request to the services it selects is denied"
        )
        findings.append(((*path, "rules"), message))
    return findings


def _endpoints(se: istio.ServiceEntry, workloads: Sequence[base.Resource]) -> list[Any]:
    selector = se.spec.workload_selector
    found: list[Any] = list(se.spec.endpoints)
    if selector is not None and selector.labels:
        found += [
            w.spec
            for w in workloads
            if isinstance(w, istio.WorkloadEntryResource)
            and w.namespace == se.namespace
            and all(w.spec.labels.get(k) == v for k, v in selector.labels.items())
        ]
    return found


def enforced_with_mtls(
    policy: base.Resource, resources: Sequence[base.Resource], root_namespace: str = ROOT
) -> bool:
    """Whether ``policy`` selects a service with mesh workloads (endpoints with a service
    account), whose inbound side verifies peers by mutual TLS (control/model.py's scope)."""
    spec = getattr(policy, "spec", None)
    selector = getattr(spec, "selector", None)
    wanted = selector.match_labels if selector is not None else {}
    workloads = [r for r in resources if isinstance(r, istio.WorkloadEntryResource)]
    for se in resources:
        if not isinstance(se, istio.ServiceEntry):
            continue
        if policy.namespace not in (se.namespace, root_namespace):
            continue
        endpoints = _endpoints(se, workloads)
        if wanted and not any(
            all(e.labels.get(k) == v for k, v in wanted.items()) for e in endpoints
        ):
            continue
        if any(e.service_account for e in endpoints):
            return True
    return False


def resource_findings(
    resource: base.Resource, resources: Sequence[base.Resource] = ()
) -> list[Finding]:
    """Every warning of this module for ``resource`` (``resources``: everything loaded with
    it, to know where an authorization policy is enforced)."""
    findings = unsupported_findings(resource)
    spec = getattr(resource, "spec", None)
    if isinstance(
        spec, authz.MetaAuthorizationPolicySpec | authz.DubboAuthorizationPolicySpec
    ) and not enforced_with_mtls(resource, resources):
        findings += authorization_findings(spec.action, spec.rules)
    return findings
