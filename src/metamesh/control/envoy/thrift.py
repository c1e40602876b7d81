"""MetaRouter -> Envoy ``thrift_proxy``: the network filter and its RDS route table.

Each Thrift listener's ``meta_protocol_proxy`` becomes ``envoy.filters.network.thrift_proxy``
(transport and protocol ``AUTO_*``: metamesh's codec detects framed / unframed / THeader x
binary / compact per connection, and so does Envoy's auto mode) with the router filter and
``trds`` over ADS: the route table
(``envoy.extensions.filters.network.thrift_proxy.v3.RouteConfiguration``) has the name of the
metamesh one, so a MetaRouter edit reaches Envoy as an RDS update and held connections keep
going.

Matches. Envoy matches the method name as it is on the wire (``Calc:add`` when the client
multiplexes) exactly, or the service prefix (``Calc:``); everything else is a THeader header:

- ``method`` exact M -> ``method_name: M``; with ``service`` exact S -> ``method_name: S:M``;
- ``service`` exact S alone -> ``service_name: S``;
- ``full_method`` exact F -> ``method_name: F``;
- a presence match on ``method`` / ``full_method`` (every call has one) -> no constraint;
- any other attribute -> a header matcher (exact, prefix, RE2 regex, present), which Envoy
  applies to the THeader info headers, as metamesh's codec exposes them.

A route whose method or service match is a prefix or a regex (or a bare presence of
``service``) cannot be written for Envoy: it is left out of Envoy's table (its calls fall to the
next route, as in the MetaRouter when that route does not match) and a finding says so.

Actions: one cluster, or ``weighted_clusters``; ``mirror`` -> ``request_mirror_policies``
(runtime fraction = ``mirrorPercentage``). thrift_proxy has no field for a route timeout,
retries, fault injection, header mutations or a hash key: each is a finding and is not applied.

Global rate limit (a MetaRouter's ``globalRateLimit``, where the metamesh translation puts it):
``envoy.filters.thrift.rate_limit`` before the router (domain, timeout, ``failure_mode_deny``,
the rate limit service's cluster over gRPC; ``metamesh ratelimit-server`` speaks Envoy's RLS)
and, on every route, one ``rate_limits`` entry whose actions build the same descriptor:
``request_headers`` from ``:method-name`` (Envoy's name for the method) for ``method``, from
the THeader header otherwise. A limit with a ``match`` is a finding (not applied).
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.network.thrift_proxy.filters.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.network.thrift_proxy.router.v3 import router_pb2
from envoy.extensions.filters.network.thrift_proxy.v3 import route_pb2 as tr
from envoy.extensions.filters.network.thrift_proxy.v3 import thrift_proxy_pb2 as tp
from envoy.type.v3 import percent_pb2

from metamesh.api.base import StringMatch
from metamesh.api.metaprotocol import GlobalRateLimit, MetaRoute, MetaRouter
from metamesh.control.envoy.findings import RATE_LIMIT_MATCH, Findings
from metamesh.control.envoy.policies import route_policy_findings
from metamesh.control.envoy.ports import EnvoyPort, Tables
from metamesh.control.envoy.targets import destination_cluster, route_targets
from metamesh.control.filter_configs import DEFAULT_RATELIMIT_TIMEOUT
from metamesh.control.routes import header_matcher
from metamesh.control.translate import ads_config_source, cluster_name, duration
from metamesh.xds.resources import THRIFT_ROUTE_TYPE

THRIFT_PROXY = "envoy.filters.network.thrift_proxy"
THRIFT_ROUTER = "envoy.filters.thrift.router"
THRIFT_RATE_LIMIT = "envoy.filters.thrift.rate_limit"
METHOD_NAME_HEADER = ":method-name"  # what Envoy's thrift rate limit reads the method from
NAME_KEYS = ("method", "service", "full_method")


def thrift_filter(
    item: EnvoyPort, tables: Tables, notes: Findings, limit: GlobalRateLimit | None = None
) -> listener_components_pb2.Filter:
    """The ``thrift_proxy`` filter of ``item`` (its route table added to ``tables``); with
    ``limit``, the global rate limit the metamesh translation puts on this listener."""
    limits = _rate_limits(item, limit, notes)
    routes = thrift_routes(item, notes)
    for route in routes.routes:
        route.route.rate_limits.extend(limits)
    tables[THRIFT_ROUTE_TYPE][routes.name] = routes
    proxy = tp.ThriftProxy(
        stat_prefix=item.stat_prefix,
        transport=tp.AUTO_TRANSPORT,
        protocol=tp.AUTO_PROTOCOL,
        trds=tp.Trds(config_source=ads_config_source(), route_config_name=item.routes),
    )
    if limits and limit is not None:
        proxy.thrift_filters.add(name=THRIFT_RATE_LIMIT).typed_config.Pack(_rate_limit(limit))
    proxy.thrift_filters.add(name=THRIFT_ROUTER).typed_config.Pack(router_pb2.Router())
    made = listener_components_pb2.Filter(name=THRIFT_PROXY)
    made.typed_config.Pack(proxy)
    return made


def thrift_routes(item: EnvoyPort, notes: Findings) -> tr.RouteConfiguration:
    """The route table: the inbound cluster, the MetaRouter's routes, or the default."""
    table = tr.RouteConfiguration(name=item.routes)
    router = item.service.router
    if item.inbound or router is None or not router.spec.routes:
        target = (
            item.routes if item.inbound else cluster_name(item.port.number, "", item.service.host)
        )
        table.routes.add(match=tr.RouteMatch(method_name=""), route=tr.RouteAction(cluster=target))
        return table
    for index, meta_route in enumerate(router.spec.routes):
        route = _route(router, index, meta_route, item.port.number, notes)
        if route is not None:
            table.routes.append(route)
    return table


def _route(
    router: MetaRouter, index: int, meta_route: MetaRoute, port: int, notes: Findings
) -> tr.Route | None:
    where = f"spec.routes[{index}]"
    match = _match(meta_route, router, where, notes)
    targets = route_targets(meta_route, port, router.namespace)
    if match is None or not targets:
        return None
    action = tr.RouteAction()
    if len(targets) == 1:
        action.cluster = targets[0].cluster
    else:
        for target in targets:
            weight = action.weighted_clusters.clusters.add(name=target.cluster).weight
            weight.value = target.weight
    if meta_route.mirror is not None:
        mirror = action.request_mirror_policies.add(
            cluster=destination_cluster(meta_route.mirror, port, router.namespace)
        )
        pct = meta_route.mirror_percentage.value if meta_route.mirror_percentage else 100.0
        mirror.runtime_fraction.default_value.CopyFrom(
            percent_pb2.FractionalPercent(
                numerator=round(pct * 10000), denominator=percent_pb2.FractionalPercent.MILLION
            )
        )
    route_policy_findings(
        router, where, meta_route, notes, filter_name="thrift_proxy", timeout=False, retries=False
    )
    return tr.Route(match=match, route=action)


def _exact(value: StringMatch | None) -> str | None:
    return value.exact if value is not None and not value.is_presence else None


def _match(
    meta_route: MetaRoute, router: MetaRouter, where: str, notes: Findings
) -> tr.RouteMatch | None:
    """The thrift_proxy match of a route, or None (with a finding) when Envoy has none."""
    attributes = dict(meta_route.match.attributes) if meta_route.match else {}
    names = {key: attributes.pop(key) for key in NAME_KEYS if key in attributes}
    for key, value in names.items():
        presence = value is None or value.is_presence
        if (presence and key == "service") or (not presence and value and value.exact is None):
            notes.add(
                router,
                f"{where}.match.attributes.{key}",
                "thrift_proxy matches the method name exactly or the service name exactly; "
                "this route is left out of Envoy's route table",
            )
            return None
    method, service, full = (_exact(names.get(key)) for key in NAME_KEYS)
    match = tr.RouteMatch(method_name="")
    if full is not None:
        if (method is not None and full.rpartition(":")[2] != method) or (
            service is not None and not full.startswith(f"{service}:")
        ):
            notes.add(
                router,
                f"{where}.match.attributes.full_method",
                "full_method disagrees with method/service, so the route never matches; "
                "it is left out of Envoy's route table",
            )
            return None
        match.method_name = full
    elif method is not None:
        match.method_name = f"{service}:{method}" if service is not None else method
    elif service is not None:
        match.service_name = service
    match.headers.extend(header_matcher(key, value) for key, value in attributes.items())
    return match


def _rate_limits(item: EnvoyPort, limit: GlobalRateLimit | None, notes: Findings) -> list[Any]:
    """The route ``rate_limits`` of a MetaRouter's ``globalRateLimit``: one descriptor, one
    entry per ``descriptors`` item (``method`` from the method name, anything else from the
    THeader header of that name). A ``match`` has no equivalent (an Envoy rate limit action
    would add its own descriptor entry), so such a limit is a finding and not applied."""
    router = item.service.router
    if limit is None or router is None:
        return []
    if limit.match is not None and limit.match.attributes:
        notes.add(router, "spec.globalRateLimit.match", RATE_LIMIT_MATCH)
        return []
    made = rc.RateLimit()
    for descriptor in limit.descriptors:
        header = METHOD_NAME_HEADER if descriptor.property == "method" else descriptor.property
        made.actions.add().request_headers.CopyFrom(
            rc.RateLimit.Action.RequestHeaders(
                header_name=header, descriptor_key=descriptor.descriptor_key
            )
        )
    return [made]


def _rate_limit(limit: GlobalRateLimit) -> rate_limit_pb2.RateLimit:
    """``envoy.filters.thrift.rate_limit``: the domain, timeout, failure mode and service."""
    made = rate_limit_pb2.RateLimit(
        domain=limit.domain,
        failure_mode_deny=limit.deny_on_fail,
        timeout=duration(limit.request_timeout or DEFAULT_RATELIMIT_TIMEOUT),
    )
    service = made.rate_limit_service
    service.grpc_service.envoy_grpc.cluster_name = limit.rate_limit_service
    service.transport_api_version = config_source_pb2.V3
    return made
