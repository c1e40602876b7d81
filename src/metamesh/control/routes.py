"""MetaRouter -> Envoy HTTP ``RouteConfiguration``, the way Aeraki's MetaProtocol RDS does it.

Aeraki tunnels MetaProtocol routes through the standard RDS type
(``envoy.config.route.v3.RouteConfiguration``) so any xDS server and client can carry them, and
the MetaProtocol proxy converts them back. The shape, per ``(host, port)``:

- name ``<host>_<port>``; one virtual host ``dummy`` with domains ``["*"]``;
- one route per MetaRoute, in order (first match wins), named after it; a host without a
  MetaRouter (or whose MetaRouter has no routes) gets one route ``default`` to
  ``outbound|<port>||<host>``;
- match: ``prefix: "/"`` plus one header matcher per metadata attribute: ``exact_match``,
  ``prefix_match``, ``safe_regex_match`` (``google_re2``), or ``present_match`` for a null
  match, ``{}`` and ``regex: "*"``;
- one destination -> ``cluster: outbound|<dst port or this port>|<subset>|<dst host>``; several
  -> ``weighted_clusters`` with ``total_weight`` = the sum;
- ``hash_policy: [{header: {header_name: K}}]`` where K is the destination DestinationRule's
  ``consistentHash.httpHeaderName`` (the subset's policy first; the first destination's rule
  for a split);
- ``request_mirror_policies: [{cluster, runtime_fraction: {numerator: pct*10000, MILLION}}]``
  (no ``mirrorPercentage`` = 100%);
- ``requestMutation`` / ``responseMutation`` -> ``request_headers_to_add`` /
  ``response_headers_to_add``.

metamesh's route extensions go into standard Envoy fields where Envoy has one, so a plain Envoy
reading the config understands them: ``timeout`` -> ``route.timeout``; ``retries`` ->
``route.retry_policy`` (``retry_on`` is metamesh's comma-joined list, e.g.
``connect-failure,reset``; ``num_retries``, ``per_try_timeout``, ``retry_back_off``). What Envoy
has no field for travels in the route's ``metadata.filter_metadata["metamesh"]`` (a Struct, which
any Envoy accepts and ignores): ``fault`` (``{delay: {fixedDelay, percentage}, abort:
{errorKind, message, percentage}}``, durations as protojson strings, percentages 0-100) and
``retryNonIdempotent``. Metadata rather than ``typed_per_filter_config`` because the latter
needs a registered filter type, which real Envoy would reject.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import regex_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2

from metamesh.api import fqdn
from metamesh.api.base import StringMatch
from metamesh.api.metaprotocol import Destination, FaultInjection, MetaRoute, MetaRouteMatch
from metamesh.control.model import MeshModel, Service

METAMESH_METADATA = "metamesh"
DEFAULT_BACKOFF_BASE = 0.025  # Envoy's default retry back-off base interval


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def _json_duration(seconds: float) -> str:
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def route_configuration(
    model: MeshModel, service: Service, port: int
) -> route_pb2.RouteConfiguration:
    """The RouteConfiguration ``<host>_<port>`` of ``service``."""
    vhost = rc.VirtualHost(name="dummy", domains=["*"])
    router = service.router
    if router is not None and router.spec.routes:
        for meta_route in router.spec.routes:
            vhost.routes.append(build_route(model, service, port, meta_route, router.namespace))
    else:
        default = rc.Route(name="default", match=rc.RouteMatch(prefix="/"))
        default.route.cluster = f"outbound|{port}||{service.host}"
        vhost.routes.append(default)
    return route_pb2.RouteConfiguration(name=f"{service.host}_{port}", virtual_hosts=[vhost])


def header_matcher(name: str, match: StringMatch | None) -> rc.HeaderMatcher:
    matcher = rc.HeaderMatcher(name=name)
    if match is None or match.is_presence:
        matcher.present_match = True
    elif match.exact is not None:
        matcher.exact_match = match.exact
    elif match.prefix is not None:
        matcher.prefix_match = match.prefix
    else:
        matcher.safe_regex_match.CopyFrom(
            regex_pb2.RegexMatcher(
                google_re2=regex_pb2.RegexMatcher.GoogleRE2(), regex=match.regex or ""
            )
        )
    return matcher


def header_matchers_json(match: MetaRouteMatch | None) -> list[dict[str, Any]]:
    """The same matchers in protojson spelling (for filter configs inside a TypedStruct)."""
    out: list[dict[str, Any]] = []
    for name, m in (match.attributes if match else {}).items():
        if m is None or m.is_presence:
            out.append({"name": name, "presentMatch": True})
        elif m.exact is not None:
            out.append({"name": name, "exactMatch": m.exact})
        elif m.prefix is not None:
            out.append({"name": name, "prefixMatch": m.prefix})
        else:
            out.append({"name": name, "safeRegexMatch": {"googleRe2": {}, "regex": m.regex}})
    return out


def _cluster_of(dst: Destination, port: int, namespace: str) -> tuple[str, str, int, str]:
    host = fqdn(dst.host, namespace)
    number = dst.port.number if dst.port and dst.port.number else port
    subset = dst.subset or ""
    return f"outbound|{number}|{subset}|{host}", host, number, subset


def build_route(
    model: MeshModel, service: Service, port: int, meta_route: MetaRoute, namespace: str
) -> rc.Route:
    route = rc.Route(name=meta_route.name, match=rc.RouteMatch(prefix="/"))
    attributes = meta_route.match.attributes if meta_route.match else {}
    route.match.headers.extend(header_matcher(k, v) for k, v in attributes.items())
    action = route.route
    destinations = [d for d in meta_route.route if d.destination is not None]
    targets = [_cluster_of(d.destination, port, namespace) for d in destinations if d.destination]
    if len(targets) == 1:
        action.cluster = targets[0][0]
    elif targets:
        for (name, *_), d in zip(targets, destinations, strict=True):
            action.weighted_clusters.clusters.add(name=name).weight.value = d.weight
        action.weighted_clusters.total_weight.value = sum(d.weight for d in destinations)
    if targets:
        _, host, number, subset = targets[0]
        target = model.services.get(host)
        key = target.policy(number, subset).hash_key if target else None
        if key:
            action.hash_policy.add().header.header_name = key
    if meta_route.mirror is not None:
        mirror = action.request_mirror_policies.add(
            cluster=_cluster_of(meta_route.mirror, port, namespace)[0]
        )
        pct = meta_route.mirror_percentage.value if meta_route.mirror_percentage else 100.0
        mirror.runtime_fraction.default_value.CopyFrom(
            percent_pb2.FractionalPercent(
                numerator=round(pct * 10000), denominator=percent_pb2.FractionalPercent.MILLION
            )
        )
    for kv in meta_route.request_mutation:
        route.request_headers_to_add.add().header.CopyFrom(
            base_pb2.HeaderValue(key=kv.key, value=kv.value)
        )
    for kv in meta_route.response_mutation:
        route.response_headers_to_add.add().header.CopyFrom(
            base_pb2.HeaderValue(key=kv.key, value=kv.value)
        )
    _extensions(route, meta_route)
    return route


def _extensions(route: rc.Route, meta_route: MetaRoute) -> None:
    if meta_route.timeout is not None:
        route.route.timeout.CopyFrom(_duration(meta_route.timeout))
    extra: dict[str, Any] = {}
    retries = meta_route.retries
    if retries is not None:
        policy = route.route.retry_policy
        policy.retry_on = ",".join(retries.retry_on)
        policy.num_retries.value = retries.attempts
        if retries.per_try_timeout is not None:
            policy.per_try_timeout.CopyFrom(_duration(retries.per_try_timeout))
        if retries.backoff is not None:
            base = retries.backoff.base_interval or DEFAULT_BACKOFF_BASE
            policy.retry_back_off.base_interval.CopyFrom(_duration(base))
            if retries.backoff.max_interval is not None:
                policy.retry_back_off.max_interval.CopyFrom(_duration(retries.backoff.max_interval))
        if retries.retry_non_idempotent:
            extra["retryNonIdempotent"] = True
    if meta_route.fault is not None:
        extra["fault"] = fault_json(meta_route.fault)
    if extra:
        route.metadata.filter_metadata[METAMESH_METADATA].update(extra)


def fault_json(fault: FaultInjection) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if fault.delay is not None:
        delay: dict[str, Any] = {}
        if fault.delay.fixed_delay is not None:
            delay["fixedDelay"] = _json_duration(fault.delay.fixed_delay)
        delay["percentage"] = fault.delay.percentage.value if fault.delay.percentage else 100.0
        out["delay"] = delay
    if fault.abort is not None:
        out["abort"] = {
            "errorKind": fault.abort.error_kind,
            "message": fault.abort.message,
            "percentage": fault.abort.percentage.value if fault.abort.percentage else 100.0,
        }
    return out
