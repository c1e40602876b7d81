"""MetaRouter -> Envoy ``generic_proxy`` with its Dubbo codec, and its RDS route table.

Why generic_proxy and not dubbo_proxy: both ship in Envoy 1.40 and both take their routes over
RDS (generic_proxy's ``generic_rds``, dubbo_proxy's ``drds``); only generic_proxy's route action
has a timeout and retries, and its matcher reads every attribute a MetaRouter matches on (the
checks against the real binary are in ``tests/control/envoy/test_dubbo_envoy.py`` and
docs/envoy.md). The listener's ``meta_protocol_proxy`` becomes
``envoy.filters.network.generic_proxy`` with ``envoy.generic_proxy.codecs.dubbo``, the
generic router, and ``generic_rds`` over ADS under the metamesh route table's name.

Matches (``xds.type.matcher.v3.Matcher``, first match wins, in MetaRouter order): each route is
one predicate, the AND of one single predicate per attribute:

- ``interface`` -> the request's host (the Dubbo codec's service name, the interface);
- ``method`` -> the request's method;
- every other attribute (``version``, ``group``, attachments) -> a request property: the
  Dubbo codec answers ``version`` and ``group`` from the request and everything else from the
  attachments;
- exact / prefix / RE2 regex as Envoy's ``StringMatcher``; a presence match is the regex
  ``.+|^$`` (matches when the property is there at all); a route with no match matches every
  method (``.+``) and ends the table (routes after it are unreachable in either data plane).

Actions (``generic_proxy.action.v3.RouteAction``): one cluster or ``weighted_clusters``;
``timeout`` -> the route timeout (no timeout -> 0, which switches off Envoy's 15 s default:
metamesh has no default timeout); ``retries.attempts`` -> ``retry_policy.num_retries`` =
attempts + 1 (Envoy counts the first try). generic_proxy uses nothing else of a retry policy:
``retryOn``, ``perTryTimeout``, ``backoff`` and ``retryNonIdempotent`` are findings, and so is
the retry itself (Envoy retries any failed attempt, idempotent or not). ``mirror``, ``fault``
and the mutations have no generic_proxy field: findings.
"""

from __future__ import annotations

from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.generic_proxy.action.v3 import action_pb2
from envoy.extensions.filters.network.generic_proxy.codecs.dubbo.v3 import dubbo_pb2
from envoy.extensions.filters.network.generic_proxy.matcher.v3 import matcher_pb2 as inputs
from envoy.extensions.filters.network.generic_proxy.router.v3 import router_pb2
from envoy.extensions.filters.network.generic_proxy.v3 import generic_proxy_pb2 as gp
from envoy.extensions.filters.network.generic_proxy.v3 import route_pb2 as gr
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from xds.core.v3 import extension_pb2
from xds.type.matcher.v3 import matcher_pb2 as xm
from xds.type.matcher.v3 import regex_pb2, string_pb2

from metamesh.api.base import StringMatch
from metamesh.api.metaprotocol import MetaRoute, MetaRouter
from metamesh.control.envoy.findings import Findings
from metamesh.control.envoy.policies import route_policy_findings
from metamesh.control.envoy.ports import EnvoyPort, Tables
from metamesh.control.envoy.targets import Target, route_targets
from metamesh.control.translate import ads_config_source, cluster_name, duration
from metamesh.xds.resources import GENERIC_ROUTE_TYPE

GENERIC_PROXY = "envoy.filters.network.generic_proxy"
DUBBO_CODEC = "envoy.generic_proxy.codecs.dubbo"
GENERIC_ROUTER = "envoy.filters.generic.router"
PRESENT = ".+|^$"  # any value, empty included: the property is there
RETRY_EXTRAS = (
    ("retryOn", lambda r: tuple(r.retry_on) != ("connect-failure", "reset")),
    ("perTryTimeout", lambda r: r.per_try_timeout is not None),
    ("backoff", lambda r: r.backoff is not None),
    ("retryNonIdempotent", lambda r: r.retry_non_idempotent),
)


def dubbo_filter(
    item: EnvoyPort, tables: Tables, notes: Findings
) -> listener_components_pb2.Filter:
    """The ``generic_proxy`` filter of ``item`` (its route table added to ``tables``)."""
    routes = dubbo_routes(item, notes)
    tables[GENERIC_ROUTE_TYPE][routes.name] = routes
    proxy = gp.GenericProxy(
        stat_prefix=item.stat_prefix,
        generic_rds=gp.GenericRds(config_source=ads_config_source(), route_config_name=item.routes),
    )
    proxy.codec_config.name = DUBBO_CODEC
    proxy.codec_config.typed_config.Pack(dubbo_pb2.DubboCodecConfig())
    router = proxy.filters.add(name=GENERIC_ROUTER)
    router.typed_config.Pack(router_pb2.Router())
    made = listener_components_pb2.Filter(name=GENERIC_PROXY)
    made.typed_config.Pack(proxy)
    return made


def dubbo_routes(item: EnvoyPort, notes: Findings) -> gr.RouteConfiguration:
    """The route table: the inbound cluster, the MetaRouter's routes, or the default."""
    table = gr.RouteConfiguration(name=item.routes)
    matchers = table.routes.matcher_list.matchers
    router = item.service.router
    if item.inbound or router is None or not router.spec.routes:
        target = (
            item.routes if item.inbound else cluster_name(item.port.number, "", item.service.host)
        )
        matcher = matchers.add()
        matcher.predicate.single_predicate.CopyFrom(_single("method", StringMatch(regex=".+")))
        _action(matcher.on_match, "default", [Target(target, 1)])
        return table
    for index, meta_route in enumerate(router.spec.routes):
        targets = route_targets(meta_route, item.port.number, router.namespace)
        if not targets:
            continue
        matcher = matchers.add()
        attributes = dict(meta_route.match.attributes) if meta_route.match else {}
        singles = [_single(k, v) for k, v in attributes.items()] or [
            _single("method", StringMatch(regex=".+"))
        ]
        if len(singles) == 1:
            matcher.predicate.single_predicate.CopyFrom(singles[0])
        else:
            for single in singles:
                matcher.predicate.and_matcher.predicate.add().single_predicate.CopyFrom(single)
        action = _action(matcher.on_match, meta_route.name, targets)
        _policies(action, router, f"spec.routes[{index}]", meta_route, notes)
        _pack(matcher.on_match, meta_route.name, action)
        if not attributes:
            break
    return table


def _typed(name: str, message: Message) -> extension_pb2.TypedExtensionConfig:
    made = extension_pb2.TypedExtensionConfig(name=name)
    made.typed_config.Pack(message)
    return made


def _single(
    key: str, match: StringMatch | None
) -> xm.Matcher.MatcherList.Predicate.SinglePredicate:
    """One attribute's predicate: which request input, and the string it must match."""
    if key == "interface":
        source: Message = inputs.HostMatchInput()
    elif key == "method":
        source = inputs.MethodMatchInput()
    else:
        source = inputs.PropertyMatchInput(property_name=key)
    value = string_pb2.StringMatcher()
    if match is None or match.is_presence:
        value.safe_regex.CopyFrom(regex_pb2.RegexMatcher(google_re2={}, regex=PRESENT))
    elif match.exact is not None:
        value.exact = match.exact
    elif match.prefix is not None:
        value.prefix = match.prefix
    else:
        value.safe_regex.CopyFrom(regex_pb2.RegexMatcher(google_re2={}, regex=match.regex or ""))
    return xm.Matcher.MatcherList.Predicate.SinglePredicate(
        input=_typed(f"request.{key}", source), value_match=value
    )


def _action(
    on_match: xm.Matcher.OnMatch, name: str, targets: list[Target]
) -> action_pb2.RouteAction:
    action = action_pb2.RouteAction(name=name or "route")
    if len(targets) == 1:
        action.cluster = targets[0].cluster
    else:
        for target in targets:
            action.weighted_clusters.clusters.add(name=target.cluster).weight.value = target.weight
    action.timeout.CopyFrom(duration_pb2.Duration())  # no timeout unless the route sets one
    _pack(on_match, name, action)  # packed again by the caller after the route's policies
    return action


def _pack(on_match: xm.Matcher.OnMatch, name: str, action: action_pb2.RouteAction) -> None:
    on_match.action.CopyFrom(_typed(name or "route", action))


def _policies(
    action: action_pb2.RouteAction,
    router: MetaRouter,
    where: str,
    route: MetaRoute,
    notes: Findings,
) -> None:
    if route.timeout is not None:
        action.timeout.CopyFrom(duration(route.timeout))
    retries = route.retries
    if retries is not None:
        action.retry_policy.num_retries.value = retries.attempts + 1
        notes.add(
            router,
            f"{where}.retries",
            "Envoy's generic_proxy retries any failed attempt (idempotent or not), "
            f"{retries.attempts} time(s)",
        )
        for field, is_set in RETRY_EXTRAS:
            if is_set(retries):
                notes.add(
                    router,
                    f"{where}.retries.{field}",
                    "generic_proxy has no field for it; not applied",
                )
    if route.mirror is not None:
        notes.add(router, f"{where}.mirror", "generic_proxy has no request mirroring; not applied")
    route_policy_findings(
        router, where, route, notes, filter_name="generic_proxy", timeout=True, retries=True
    )
