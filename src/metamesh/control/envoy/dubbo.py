"""MetaRouter -> Envoy ``dubbo_proxy`` and its route tables over RDS (``drds``).

Why dubbo_proxy and not generic_proxy: checked against the real Envoy 1.40 binary (a dubbo-py
consumer through each, ``tests/control/envoy/test_dubbo_side_by_side.py``): both route on
interface, method, service version, group and attachments, but generic_proxy's
``weighted_clusters`` is not implemented (every call of a split route was answered
``cluster_not_found``), and weighted splits are what MetaRouters are most used for.
dubbo_proxy splits; it has no route timeout and no retries, which are findings here.

The listener's ``meta_protocol_proxy`` becomes ``envoy.filters.network.dubbo_proxy`` (Dubbo
protocol, Hessian2, the router filter) with ``drds`` over ADS: a
``MultipleRouteConfiguration`` named as the metamesh route table.

Routes. dubbo_proxy holds a list of route configurations, each for one interface (``*`` = any;
``prefix*``), optionally one group and one version, with its own routes (method name as a
``StringMatcher``, attachments as header matchers). Envoy tries the configurations in order
and a configuration none of whose routes match falls through to the next, so each MetaRoute
becomes one configuration with one route, in MetaRouter order, which keeps "first match wins":

- ``interface`` exact -> the configuration's ``interface``; prefix P -> ``P*``; absent or a
  presence match -> ``*``;
- ``version`` / ``group`` exact -> the configuration's ``version`` / ``group``;
- ``method`` -> the route's method name (exact, prefix, RE2 regex; presence or no method
  match -> regex ``.*``: Envoy requires a method matcher on every route);
- every other attribute -> a header matcher (Envoy's dubbo_proxy exposes attachments as
  headers), as for the metamesh route table.

What Envoy cannot match as written (a regex on the interface, anything but an exact version
or group) leaves the route out, with a finding. Actions: one cluster, or ``weighted_clusters``.
``timeout``, ``retries``, ``mirror``, ``fault`` and the mutations have no dubbo_proxy field:
findings, not applied.
"""

from __future__ import annotations

from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.dubbo_proxy.router.v3 import router_pb2
from envoy.extensions.filters.network.dubbo_proxy.v3 import dubbo_proxy_pb2 as dp
from envoy.extensions.filters.network.dubbo_proxy.v3 import route_pb2 as dr
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from metamesh.api.base import StringMatch
from metamesh.api.metaprotocol import MetaRoute, MetaRouter
from metamesh.control.envoy.findings import Findings
from metamesh.control.envoy.policies import route_policy_findings
from metamesh.control.envoy.ports import EnvoyPort, Tables
from metamesh.control.envoy.targets import Target, route_targets
from metamesh.control.routes import header_matcher
from metamesh.control.translate import ads_config_source, cluster_name
from metamesh.xds.resources import DUBBO_ROUTE_TYPE

DUBBO_PROXY = "envoy.filters.network.dubbo_proxy"
DUBBO_ROUTER = "envoy.filters.dubbo.router"
CONFIG_KEYS = ("interface", "version", "group")


def dubbo_filter(
    item: EnvoyPort, tables: Tables, notes: Findings
) -> listener_components_pb2.Filter:
    """The ``dubbo_proxy`` filter of ``item`` (its route tables added to ``tables``)."""
    routes = dubbo_routes(item, notes)
    tables[DUBBO_ROUTE_TYPE][routes.name] = routes
    proxy = dp.DubboProxy(
        stat_prefix=item.stat_prefix,
        protocol_type=dp.Dubbo,
        serialization_type=dp.Hessian2,
        drds=dp.Drds(config_source=ads_config_source(), route_config_name=item.routes),
    )
    proxy.dubbo_filters.add(name=DUBBO_ROUTER).config.Pack(router_pb2.Router())
    made = listener_components_pb2.Filter(name=DUBBO_PROXY)
    made.typed_config.Pack(proxy)
    return made


def dubbo_routes(item: EnvoyPort, notes: Findings) -> dr.MultipleRouteConfiguration:
    """The route tables: the inbound cluster, the MetaRouter's routes, or the default."""
    table = dr.MultipleRouteConfiguration(name=item.routes)
    router = item.service.router
    if item.inbound or router is None or not router.spec.routes:
        target = (
            item.routes if item.inbound else cluster_name(item.port.number, "", item.service.host)
        )
        match = dr.RouteMatch()
        match.method.name.CopyFrom(_string_matcher(None))
        table.route_config.append(_config("default", "*", match, [Target(target, 1)]))
        return table
    for index, meta_route in enumerate(router.spec.routes):
        made = _route_config(router, index, meta_route, item.port.number, notes)
        if made is not None:
            table.route_config.append(made)
    return table


def _config(
    name: str, interface: str, match: dr.RouteMatch, targets: list[Target]
) -> dr.RouteConfiguration:
    action = dr.RouteAction()
    if len(targets) == 1:
        action.cluster = targets[0].cluster
    else:
        for target in targets:
            action.weighted_clusters.clusters.add(name=target.cluster).weight.value = target.weight
    config = dr.RouteConfiguration(name=name, interface=interface)
    config.routes.add(match=match, route=action)
    return config


def _route_config(
    router: MetaRouter, index: int, meta_route: MetaRoute, port: int, notes: Findings
) -> dr.RouteConfiguration | None:
    where = f"spec.routes[{index}]"
    targets = route_targets(meta_route, port, router.namespace)
    attributes = dict(meta_route.match.attributes) if meta_route.match else {}
    selectors = {key: attributes.pop(key) for key in CONFIG_KEYS if key in attributes}
    interface = _interface(selectors.pop("interface", None))
    if interface is None or not targets:
        _left_out(router, f"{where}.match.attributes.interface", notes, "exact, prefix or present")
        return None
    match = dr.RouteMatch()
    match.method.name.CopyFrom(_string_matcher(attributes.pop("method", None)))
    match.headers.extend(header_matcher(key, value) for key, value in attributes.items())
    config = _config(meta_route.name or f"route-{index}", interface, match, targets)
    for key, value in selectors.items():
        if value is None or value.exact is None:
            _left_out(router, f"{where}.match.attributes.{key}", notes, "exact")
            return None
        setattr(config, key, value.exact)
    route_policy_findings(
        router, where, meta_route, notes, filter_name="dubbo_proxy", timeout=False, retries=False
    )
    if meta_route.mirror is not None:
        notes.add(router, f"{where}.mirror", "dubbo_proxy has no request mirroring; not applied")
    return config


def _left_out(router: MetaRouter, field: str, notes: Findings, how: str) -> None:
    notes.add(
        router,
        field,
        f"dubbo_proxy matches it only as {how}; this route is left out of Envoy's route table",
    )


def _interface(match: StringMatch | None) -> str | None:
    """The configuration's interface pattern, or None when dubbo_proxy has none for it."""
    if match is None or match.is_presence:
        return "*"
    if match.exact is not None:
        return match.exact
    if match.prefix is not None:
        return f"{match.prefix}*"
    return None


def _string_matcher(match: StringMatch | None) -> string_pb2.StringMatcher:
    made = string_pb2.StringMatcher()
    if match is None or match.is_presence:
        made.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=".*"))
    elif match.exact is not None:
        made.exact = match.exact
    elif match.prefix is not None:
        made.prefix = match.prefix
    else:
        made.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=match.regex or ""))
    return made
