"""Validation of loaded resources: each resource on its own, then references across the set.

Per-resource rules are Aeraki's validating webhook for MetaRouter and ApplicationProtocol
(exactly one FQDN host; routes or a rate limit; at least one destination per route and weights
totalling 100 when split; DNS-1123 subset names; compilable regexes; non-empty mutation keys and
values; mirrorPercentage only with mirror and in (0, 100]; token buckets with maxTokens and
tokensPerFill >= 1 and a fillInterval; global rate limits with a domain, a service and
descriptors; Istio's exportTo rules; a warning for routes after a match-less one), Istio's basic
ServiceEntry/DestinationRule rules, and checks of metamesh's route extensions. Cross-resource
checks live in :mod:`metamesh.api.references`; the warnings for fields that are accepted but
not applied (and for authorization rules that can never match) in
:mod:`metamesh.api.unsupported`.

Every rule returns :class:`Problem` objects instead of raising, so all are reported at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

from metamesh.api.authz import DubboAuthorizationPolicy, MetaAuthorizationPolicy, Operation
from metamesh.api.base import DEFAULT_NAMESPACE, Resource, StringMatch
from metamesh.api.checks import (
    export_to_errors,
    fqdn_errors,
    regex_problems,
    subset_name_errors,
)
from metamesh.api.istio import (
    ClientTLSSettings,
    DestinationRule,
    ServiceEntry,
    TrafficPolicy,
    WorkloadEntry,
    WorkloadEntryResource,
)
from metamesh.api.limits import DEFAULT_LIMITS, LoadLimits
from metamesh.api.loader import Loaded, ResourceSet, load_paths
from metamesh.api.metaprotocol import (
    ApplicationProtocol,
    Destination,
    FaultInjection,
    MetaRoute,
    MetaRouteMatch,
    MetaRouter,
    Percent,
    RetryPolicy,
    TokenBucket,
)
from metamesh.api.problems import FieldPath, Problem, sort_problems
from metamesh.api.redis import RedisDestination, RedisService
from metamesh.api.redis_rules import redis_destination_rule, redis_service_rule
from metamesh.api.references import check_references
from metamesh.api.security import PeerAuthentication
from metamesh.api.unsupported import resource_findings

Finding = tuple[FieldPath, str, bool]  # (path, message, is_warning)
Rule = Callable[[Loaded], Iterator[Finding]]


def validate(resources: ResourceSet) -> list[Problem]:
    """Loading problems, per-resource problems and reference problems, sorted."""
    return sort_problems([*check_resources(resources), *check_references(resources)])


#: Each resource's own findings, by resource object (see :func:`check_resources`).
_found: dict[int, tuple[Resource, list[Finding]]] = {}


def check_resources(
    resources: ResourceSet, everything: Sequence[Resource] | None = None
) -> list[Problem]:
    """Loading problems and each resource's own problems: what holds whatever else is loaded.

    A resource's findings depend on the resource alone (authorization policies aside, whose
    warnings depend on what else is loaded: ``everything``, by default ``resources``), and
    the config sources hand an unchanged file's resources over as the same (frozen) objects;
    so the findings are kept per object, for the objects of the latest call, and a directory
    of 10,000 services re-checks only what an edit changed."""
    global _found
    problems = list(resources.problems)
    if everything is None:
        everything = [item.resource for item in resources.items]
    found: dict[int, tuple[Resource, list[Finding]]] = {}
    for item in resources.items:
        resource = item.resource
        cached = _found.get(id(resource))
        if cached is None or cached[0] is not resource:
            cached = (resource, _own_findings(item, everything))
        if not isinstance(resource, MetaAuthorizationPolicy | DubboAuthorizationPolicy):
            found[id(resource)] = cached
        for path, message, warning in cached[1]:
            problems.append(item.problem(path, message, "warning" if warning else "error"))
    _found = found
    return problems


def _own_findings(item: Loaded, everything: Sequence[Resource]) -> list[Finding]:
    out = [(path, message, True) for path, message in resource_findings(item.resource, everything)]
    rule = _RULES.get(type(item.resource))
    if rule is not None:
        out.extend(rule(item))
    return out


def _err(path: FieldPath, messages: list[str]) -> Iterator[Finding]:
    for message in messages:
        yield path, message, False


# --- shared pieces -----------------------------------------------------------------------


def _string_match(path: FieldPath, match: StringMatch) -> Iterator[Finding]:
    if match.regex is not None:
        errors, warnings = regex_problems(match.regex)
        yield from _err((*path, "regex"), errors)
        for warning in warnings:
            yield (*path, "regex"), warning, True


def _match(path: FieldPath, match: MetaRouteMatch | None) -> Iterator[Finding]:
    if match is None:
        return
    for name, attribute in match.attributes.items():
        where = (*path, "attributes", name)
        if not name:
            yield where, "attribute name cannot be empty", False
        if attribute is None:
            yield where, f"attribute match {name!r} cannot be null (use regex: '*' for any)", False
        else:
            yield from _string_match(where, attribute)


def _destination(path: FieldPath, dest: Destination) -> Iterator[Finding]:
    yield from _err((*path, "host"), fqdn_errors(dest.host))
    if dest.subset is not None:
        yield from _err((*path, "subset"), subset_name_errors(dest.subset))
    if dest.port is not None and not 1 <= dest.port.number <= 65535:
        yield (*path, "port", "number"), f"port number {dest.port.number} not in 1..65535", False


def _percent(path: FieldPath, percent: Percent | None, low_open: bool) -> Iterator[Finding]:
    if percent is None:
        return
    value = percent.value
    if value > 100 or value < 0 or (low_open and value == 0):
        bounds = "(0, 100]" if low_open else "[0, 100]"
        yield (*path, "value"), f"percentage {value:g} is not in {bounds}", False


# --- MetaRouter --------------------------------------------------------------------------


def _meta_router(item: Loaded) -> Iterator[Finding]:
    router = item.resource
    assert isinstance(router, MetaRouter)
    spec = router.spec
    if not spec.hosts:
        yield ("spec", "hosts"), "meta router must have one host", False
    elif len(spec.hosts) > 1:
        yield ("spec", "hosts"), "meta router can only have one host", False
    else:
        yield from _err(("spec", "hosts", 0), fqdn_errors(spec.hosts[0]))
    if not spec.routes and spec.local_rate_limit is None and spec.global_rate_limit is None:
        yield (
            ("spec",),
            "meta router must have at least one of routes, globalRateLimit or localRateLimit",
            False,
        )
    for i, route in enumerate(spec.routes):
        yield from _route(("spec", "routes", i), route)
    yield from _unreachable(spec.routes)
    yield from _err(("spec", "exportTo"), export_to_errors(router.namespace, spec.export_to))
    yield from _rate_limits(router)


def _route(path: FieldPath, route: MetaRoute) -> Iterator[Finding]:
    yield from _match((*path, "match"), route.match)
    for field in ("requestMutation", "responseMutation"):
        mutations = (
            route.request_mutation if field == "requestMutation" else route.response_mutation
        )
        for j, kv in enumerate(mutations):
            if not kv.key:
                yield (*path, field, j, "key"), "mutation key cannot be empty", False
            if not kv.value:
                yield (*path, field, j, "value"), "mutation value cannot be empty", False
    if route.mirror_percentage is not None and route.mirror is None:
        yield (*path, "mirrorPercentage"), "mirrorPercentage and mirror must be set together", False
    yield from _percent((*path, "mirrorPercentage"), route.mirror_percentage, low_open=True)
    if route.mirror is not None:
        yield from _destination((*path, "mirror"), route.mirror)
    if not route.route:
        yield (*path, "route"), "a route must have at least one destination", False
    total = 0
    for j, weighted in enumerate(route.route):
        if weighted.destination is None:
            yield (*path, "route", j, "destination"), "destination is required", False
        else:
            yield from _destination((*path, "route", j, "destination"), weighted.destination)
        if weighted.weight > 100:
            yield (*path, "route", j, "weight"), f"weight {weighted.weight} is not in 0..100", False
        total += weighted.weight
    if len(route.route) > 1 and total != 100:
        yield (*path, "route"), f"total destination weight {total} != 100", False
    yield from _extensions(path, route)


def _unreachable(routes: list[MetaRoute]) -> Iterator[Finding]:
    catch_all: int | None = None
    for i, route in enumerate(routes):
        if catch_all is not None:
            label = repr(route.name) if route.name else f"#{i}"
            yield (
                ("spec", "routes", i),
                (
                    f"route {label} is never used: route #{catch_all} before it has no match "
                    "(only the last route should have no match)"
                ),
                True,
            )
        elif route.match is None or not route.match.attributes:
            catch_all = i


def _extensions(path: FieldPath, route: MetaRoute) -> Iterator[Finding]:
    if route.timeout is not None and route.timeout <= 0:
        yield (*path, "timeout"), "timeout must be greater than 0", False
    if route.retries is not None:
        yield from _retries((*path, "retries"), route.retries)
    if route.fault is not None:
        yield from _fault((*path, "fault"), route.fault)


def _retries(path: FieldPath, retries: RetryPolicy) -> Iterator[Finding]:
    if retries.per_try_timeout is not None and retries.per_try_timeout <= 0:
        yield (*path, "perTryTimeout"), "perTryTimeout must be greater than 0", False
    if not retries.retry_on and retries.attempts > 0:
        yield (*path, "retryOn"), "retryOn is empty, so no request will be retried", True
    backoff = retries.backoff
    base = backoff.base_interval if backoff else None
    ceiling = backoff.max_interval if backoff else None
    if base is not None and ceiling is not None and ceiling < base:
        yield (*path, "backoff", "maxInterval"), "maxInterval is less than baseInterval", False
    if base is not None and base <= 0:
        yield (*path, "backoff", "baseInterval"), "baseInterval must be greater than 0", False


def _fault(path: FieldPath, fault: FaultInjection) -> Iterator[Finding]:
    if fault.delay is None and fault.abort is None:
        yield path, "fault must have at least one of delay or abort", False
    if fault.delay is not None:
        if fault.delay.fixed_delay is None:
            yield (*path, "delay", "fixedDelay"), "delay needs fixedDelay", False
        yield from _percent((*path, "delay", "percentage"), fault.delay.percentage, False)
    if fault.abort is not None:
        yield from _percent((*path, "abort", "percentage"), fault.abort.percentage, False)


def _rate_limits(router: MetaRouter) -> Iterator[Finding]:
    local = router.spec.local_rate_limit
    if local is not None:
        path: FieldPath = ("spec", "localRateLimit")
        if local.token_bucket is None and not local.conditions:
            yield path, "localRateLimit must have at least one of tokenBucket or conditions", False
        if local.token_bucket is not None:
            yield from _token_bucket((*path, "tokenBucket"), local.token_bucket)
        for i, condition in enumerate(local.conditions):
            where = (*path, "conditions", i)
            if condition.match is None:
                yield (*where, "match"), "localRateLimit condition match cannot be null", False
            yield from _match((*where, "match"), condition.match)
            if condition.token_bucket is None:
                yield (*where, "tokenBucket"), "condition tokenBucket cannot be null", False
            else:
                yield from _token_bucket((*where, "tokenBucket"), condition.token_bucket)
    rate_limit = router.spec.global_rate_limit
    if rate_limit is not None:
        path = ("spec", "globalRateLimit")
        if not rate_limit.domain:
            yield (*path, "domain"), "globalRateLimit domain cannot be empty", False
        if not rate_limit.rate_limit_service:
            yield (*path, "rateLimitService"), "globalRateLimit service cannot be empty", False
        yield from _match((*path, "match"), rate_limit.match)
        if not rate_limit.descriptors:
            yield (*path, "descriptors"), "globalRateLimit must have descriptors", False
        for i, descriptor in enumerate(rate_limit.descriptors):
            if not descriptor.descriptor_key:
                yield (
                    (*path, "descriptors", i, "descriptorKey"),
                    "descriptorKey cannot be empty",
                    False,
                )
            if not descriptor.property:
                yield (*path, "descriptors", i, "property"), "property cannot be empty", False


def _token_bucket(path: FieldPath, bucket: TokenBucket) -> Iterator[Finding]:
    if bucket.max_tokens < 1:
        yield (*path, "maxTokens"), "maxTokens must be greater than 0", False
    if bucket.tokens_per_fill is None:
        yield (*path, "tokensPerFill"), "tokensPerFill cannot be null", False
    elif bucket.tokens_per_fill < 1:
        yield (*path, "tokensPerFill"), "tokensPerFill must be greater than 0", False
    if bucket.fill_interval is None:
        yield (*path, "fillInterval"), "fillInterval cannot be null", False
    elif bucket.fill_interval <= 0:
        yield (*path, "fillInterval"), "fillInterval must be greater than 0", False


# --- other kinds -------------------------------------------------------------------------


def _application_protocol(item: Loaded) -> Iterator[Finding]:
    ap = item.resource
    assert isinstance(ap, ApplicationProtocol)
    if not ap.spec.protocol:
        yield ("spec", "protocol"), "application protocol must have protocol", False
    elif "-" in ap.spec.protocol:
        yield (
            ("spec", "protocol"),
            (
                f"protocol {ap.spec.protocol!r} contains '-', so no port name "
                "tcp-metaprotocol-<app>-... can select it"
            ),
            False,
        )
    if not ap.spec.codec:
        yield ("spec", "codec"), "application protocol must have codec", False


def _service_entry(item: Loaded) -> Iterator[Finding]:
    se = item.resource
    assert isinstance(se, ServiceEntry)
    spec = se.spec
    if not spec.hosts:
        yield ("spec", "hosts"), "service entry must have at least one host", False
    for i, host in enumerate(spec.hosts):
        yield from _err(("spec", "hosts", i), fqdn_errors(host.removeprefix("*.")))
    numbers: set[int] = set()
    names: set[str] = set()
    for i, port in enumerate(spec.ports):
        if port.number in numbers:
            yield ("spec", "ports", i, "number"), f"duplicate port number {port.number}", False
        if port.name and port.name in names:
            yield ("spec", "ports", i, "name"), f"duplicate port name {port.name!r}", False
        numbers.add(port.number)
        names.add(port.name)
    for i, endpoint in enumerate(spec.endpoints):
        for name in endpoint.ports:
            if name not in names:
                yield (
                    ("spec", "endpoints", i, "ports", name),
                    (f"endpoint port {name!r} names no port of this service entry"),
                    False,
                )
        if not endpoint.address:
            yield ("spec", "endpoints", i, "address"), "endpoint address cannot be empty", False
        yield from _workload_address(("spec", "endpoints", i), endpoint)
    if spec.resolution == "STATIC" and not spec.endpoints and spec.workload_selector is None:
        yield (
            ("spec", "endpoints"),
            "resolution STATIC needs endpoints or a workloadSelector",
            False,
        )
    kafka = [p.name for p in spec.ports if p.name.lower().split("-")[1:2] == ["kafka"]]
    if kafka and len(spec.endpoints) > 1:
        yield (
            ("spec", "endpoints"),
            f"port {kafka[0]!r} is Kafka, whose clients must reach each broker by its own "
            f"address: {len(spec.endpoints)} endpoints here share one (requests would be "
            "balanced across brokers); declare one ServiceEntry per broker (docs/kafka.md)",
            True,
        )
    yield from _err(("spec", "exportTo"), export_to_errors(se.namespace, spec.export_to))


def _destination_rule(item: Loaded) -> Iterator[Finding]:
    dr = item.resource
    assert isinstance(dr, DestinationRule)
    if not dr.spec.host:
        yield ("spec", "host"), "destination rule must have a host", False
    seen: set[str] = set()
    for i, subset in enumerate(dr.spec.subsets):
        yield from _err(("spec", "subsets", i, "name"), subset_name_errors(subset.name))
        if subset.name in seen:
            yield ("spec", "subsets", i, "name"), f"duplicate subset {subset.name!r}", False
        seen.add(subset.name)
        yield from _traffic_tls(("spec", "subsets", i, "trafficPolicy"), subset.traffic_policy)
    yield from _traffic_tls(("spec", "trafficPolicy"), dr.spec.traffic_policy)
    yield from _err(("spec", "exportTo"), export_to_errors(dr.namespace, dr.spec.export_to))


def _traffic_tls(path: FieldPath, policy: TrafficPolicy | None) -> Iterator[Finding]:
    if policy is None:
        return
    yield from _client_tls((*path, "tls"), policy.tls)
    for i, level in enumerate(policy.port_level_settings):
        yield from _client_tls((*path, "portLevelSettings", i, "tls"), level.tls)


def _client_tls(path: FieldPath, tls: ClientTLSSettings | None) -> Iterator[Finding]:
    """Istio's rules: MUTUAL needs a client certificate and its key; the files of a SIMPLE or
    MUTUAL origination are the proxy's own files (``credentialName`` is a Kubernetes Secret)."""
    if tls is None:
        return
    if tls.mode == "MUTUAL" and not (tls.client_certificate and tls.private_key):
        yield path, "mode MUTUAL needs clientCertificate and privateKey", False
    if tls.mode in ("DISABLE", "ISTIO_MUTUAL"):
        for name in ("client_certificate", "private_key", "ca_certificates", "sni"):
            if getattr(tls, name):
                alias = ClientTLSSettings.model_fields[name].alias or name
                yield (*path, alias), f"{alias} is not used with mode {tls.mode}", True


def _workload_entry(item: Loaded) -> Iterator[Finding]:
    entry = item.resource
    assert isinstance(entry, WorkloadEntryResource)
    if not entry.spec.address:
        yield ("spec", "address"), "a WorkloadEntry needs an address", False
    yield from _workload_address(("spec",), entry.spec)


def _workload_address(path: FieldPath, endpoint: WorkloadEntry) -> Iterator[Finding]:
    """A mesh workload (it has a service account) on 127.0.0.1: its proxy's inbound listener
    would take the app's own address (docs/mesh.md), so it gets none."""
    if endpoint.service_account and endpoint.address in ("127.0.0.1", "0.0.0.0"):
        yield (
            (*path, "address"),
            f"a mesh workload (serviceAccount set) cannot be on {endpoint.address}, the "
            "address of its app: its proxy gets no inbound listener there; give it another "
            "loopback address (127.0.31.2, ...)",
            True,
        )


def _peer_authentication(item: Loaded) -> Iterator[Finding]:
    """Istio's rule: ``portLevelMtls`` only with a workload selector."""
    policy = item.resource
    assert isinstance(policy, PeerAuthentication)
    selector = policy.spec.selector
    if policy.spec.port_level_mtls and not (selector and selector.match_labels):
        yield (
            ("spec", "portLevelMtls"),
            "portLevelMtls requires a workload selector (selector.matchLabels)",
            False,
        )
    for port in policy.spec.port_level_mtls:
        if not 1 <= port <= 65535:
            yield ("spec", "portLevelMtls", str(port)), f"port {port} not in 1..65535", False


def _operation(path: FieldPath, operation: Operation) -> Iterator[Finding]:
    for field, table in (
        ("attributes", operation.attributes),
        ("notAttributes", operation.not_attributes),
    ):
        for key, matches in table.items():
            for j, match in enumerate(matches):
                yield from _string_match((*path, field, key, j), match)


def _meta_authz(item: Loaded) -> Iterator[Finding]:
    policy = item.resource
    assert isinstance(policy, MetaAuthorizationPolicy)
    for i, rule in enumerate(policy.spec.rules):
        for j, to in enumerate(rule.to):
            yield from _operation(("spec", "rules", i, "to", j, "operation"), to.operation)


def _dubbo_authz(item: Loaded) -> Iterator[Finding]:
    assert isinstance(item.resource, DubboAuthorizationPolicy)
    return iter(())


_RULES: dict[type, Rule] = {
    MetaRouter: _meta_router,
    ApplicationProtocol: _application_protocol,
    ServiceEntry: _service_entry,
    DestinationRule: _destination_rule,
    MetaAuthorizationPolicy: _meta_authz,
    DubboAuthorizationPolicy: _dubbo_authz,
    WorkloadEntryResource: _workload_entry,
    PeerAuthentication: _peer_authentication,
    RedisService: redis_service_rule,
    RedisDestination: redis_destination_rule,
}


def report(
    paths: Sequence[str],
    out: TextIO,
    default_namespace: str = DEFAULT_NAMESPACE,
    *,
    strict: bool = False,
    limits: LoadLimits = DEFAULT_LIMITS,
) -> int:
    """``metamesh validate``: print every problem and a summary; 0 if no errors, else 1.

    With ``strict``, warnings (unsupported fields, unused routes, ...) and skipped objects of
    kinds metamesh does not read fail too: exit 1 unless nothing at all was found.
    """
    resources = load_paths(paths, default_namespace, limits=limits)
    problems = validate(resources)
    for problem in problems:
        print(problem.format(), file=out)
    errors = sum(1 for p in problems if p.is_error)
    warnings = sum(1 for p in problems if p.severity == "warning")
    skipped = sum(1 for p in problems if p.severity == "info")
    files = len({item.origin.file for item in resources.items})
    counts = [_plural(errors, "error"), _plural(warnings, "warning")]
    if skipped:
        counts.append(_plural(skipped, "skipped kind"))
    print(
        f"{', '.join(counts)} in {_plural(len(resources.items), 'resource')} from "
        f"{_plural(files, 'file')}"
        + (" (--strict: any of them fails)" if strict and problems else ""),
        file=out,
    )
    return 1 if errors or (strict and problems) else 0


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
