"""An Envoy admin's config, in the shape of a metamesh proxy's ``/config_dump``.

``metamesh proxy-config`` inspects either data plane. A metamesh proxy's dump is its
:class:`~metamesh.proxy.config.Snapshot` as JSON (``listeners``, ``clusters`` with their
endpoints, ``route_configs``); Envoy's ``/config_dump`` is a list of ``configs`` typed by
``@type`` (``ListenersConfigDump``, ``ClustersConfigDump``, ``RoutesConfigDump``, ...) and its
live endpoints are in ``/clusters?format=json`` (hosts Envoy discovered itself, such as an
``envoy.clusters.redis`` cluster's nodes, are only there). :func:`is_envoy_dump` tells the two
apart; :func:`from_envoy` turns Envoy's pair into the metamesh shape, so the views and tables of
:mod:`metamesh.runtime.proxy_config` are written once:

- a listener's ``codec`` is its protocol filter (the last network filter of its first chain,
  ``envoy.filters.network.thrift_proxy``...), its ``route_config_name`` the name of the table
  that filter reads over RDS (``rds``, ``trds``, ``drds``, ``generic_rds``);
- route tables: Envoy HTTP ``RouteConfiguration`` (header matches), ``thrift_proxy``'s
  (``method_name``, ``service_name``, headers), ``dubbo_proxy``'s (per interface, group and
  version: method and attachment matches) and ``generic_proxy``'s matcher lists (their
  inputs by name, ``request.method``); a ``redis_proxy`` carries its prefix routes in the
  listener, shown as a table named after the listener (``key`` prefix matches, the catch-all
  as ``*``, mirrors);
- clusters: name, lb policy and the endpoints ``/clusters`` lists (weight, and the
  ``envoy.lb`` labels from the EDS dump).

Pure functions of the JSON, tested on dumps of a real Envoy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Json = dict[str, Any]
_MATCH_KINDS = ("exact", "prefix", "suffix", "contains", "safe_regex")
#: Where each protocol filter names the route table it reads over RDS (HTTP, thrift_proxy,
#: dubbo_proxy, generic_proxy).
_RDS_FIELDS = ("rds", "trds", "drds", "generic_rds")


def is_envoy_dump(dump: Json) -> bool:
    """Envoy's ``/config_dump`` (a ``configs`` list), not a metamesh proxy's snapshot."""
    return isinstance(dump.get("configs"), list)


def from_envoy(dump: Json, clusters: Json) -> Json:
    """Envoy's ``/config_dump?include_eds`` and ``/clusters?format=json`` as a metamesh dump."""
    listeners = [_listener(x) for x in _items(dump, "ListenersConfigDump", "listener")]
    routes = [_route_config(x) for x in _items(dump, "RoutesConfigDump", "route_config")]
    routes += [rc for x in _items(dump, "ListenersConfigDump", "listener") for rc in _redis(x)]
    labels = _endpoint_labels(dump)
    statuses = {c.get("name", ""): c for c in clusters.get("cluster_statuses", [])}
    out_clusters = []
    for cluster in _items(dump, "ClustersConfigDump", "cluster"):
        name = cluster.get("name", "")
        hosts = statuses.get(name, {}).get("host_statuses", [])
        out_clusters.append(
            {
                "name": name,
                "lb_policy": cluster.get("lb_policy", "ROUND_ROBIN"),
                "endpoints": [_endpoint(h, labels.get(name, {})) for h in hosts],
            }
        )
    return {
        "version": _version(dump),
        "data_plane": "envoy",
        "listeners": listeners,
        "clusters": out_clusters,
        "route_configs": routes,
    }


def _configs(dump: Json, kind: str) -> Iterator[Json]:
    for config in dump.get("configs", []):
        if str(config.get("@type", "")).endswith("." + kind):
            yield config


def _items(dump: Json, kind: str, field: str) -> Iterator[Json]:
    """The resources of one ``*ConfigDump``, static and dynamic (active ones only)."""
    for config in _configs(dump, kind):
        for key, entries in config.items():
            if not key.startswith(("static_", "dynamic_")) or "warming" in key:
                continue
            for entry in entries if isinstance(entries, list) else []:
                holder = entry.get("active_state", entry)
                if isinstance(holder.get(field), dict):
                    yield holder[field]


def _version(dump: Json) -> str:
    for config in _configs(dump, "ListenersConfigDump"):
        return str(config.get("version_info", ""))
    return ""


# --- listeners ----------------------------------------------------------------------------


def _protocol_filter(listener: Json) -> Json:
    chains = listener.get("filter_chains") or [{}]
    filters = chains[0].get("filters") or [{}]
    last: Json = filters[-1]
    return last


def _listener(listener: Json) -> Json:
    address = listener.get("address", {}).get("socket_address", {})
    network_filter = _protocol_filter(listener)
    config = network_filter.get("typed_config", {})
    rds: Json = next((config[k] for k in _RDS_FIELDS if isinstance(config.get(k), dict)), {})
    route_name = rds.get("route_config_name", "")
    if not route_name and "prefix_routes" in config:  # redis_proxy: routes in the listener
        route_name = listener.get("name", "")
    return {
        "name": listener.get("name", ""),
        "address": address.get("address", ""),
        "port": address.get("port_value", 0),
        "codec": network_filter.get("name", ""),
        "route_config_name": route_name,
        "stat_prefix": config.get("stat_prefix", ""),
    }


# --- route tables -------------------------------------------------------------------------


def _matcher(name: str, spec: Json, invert: bool = False) -> Json:
    """``{name, kind, value, invert}`` from an Envoy string matcher (or header matcher)."""
    for kind in _MATCH_KINDS:
        for key in (kind, f"{kind}_match"):
            if key in spec:
                value = spec[key]
                if isinstance(value, dict):
                    value = value.get("regex", "")
                return {"name": name, "kind": kind, "value": str(value), "invert": invert}
    if "string_match" in spec:
        return _matcher(name, spec["string_match"], invert)
    if spec.get("present_match"):
        return {"name": name, "kind": "present", "value": "", "invert": invert}
    return {"name": name, "kind": "any", "value": "", "invert": invert}


def _action(route: Json) -> Json:
    weighted = route.get("weighted_clusters", {}).get("clusters", [])
    return {
        "cluster": route.get("cluster", ""),
        "weighted_clusters": [{"name": c["name"], "weight": c.get("weight", 0)} for c in weighted],
    }


def _route_config(config: Json) -> Json:
    name = config.get("name", "")
    kind = str(config.get("@type", ""))
    if "generic_proxy" in kind:
        routes = list(_generic_routes(config.get("routes", {})))
    elif "dubbo_proxy" in kind:
        routes = list(_dubbo_routes(config))
    elif "thrift_proxy" in kind:
        routes = [_thrift_route(r) for r in config.get("routes", [])]
    else:
        routes = [
            _http_route(r) for vh in config.get("virtual_hosts", []) for r in vh.get("routes", [])
        ]
    return {"name": name, "routes": routes}


def _headers(match: Json) -> list[Json]:
    return [
        _matcher(h.get("name", ""), h, bool(h.get("invert_match")))
        for h in match.get("headers", [])
    ]


def _http_route(route: Json) -> Json:
    return {
        "name": route.get("name", ""),
        "match": _headers(route.get("match", {})),
        "route": _action(route.get("route", {})),
    }


def _thrift_route(route: Json) -> Json:
    match = route.get("match", {})
    found: list[Json] = []
    if match.get("method_name"):
        found.append(_matcher("method", {"exact": match["method_name"]}, bool(match.get("invert"))))
    if match.get("service_name"):
        found.append(
            _matcher("service", {"exact": match["service_name"]}, bool(match.get("invert")))
        )
    return {"name": "", "match": found + _headers(match), "route": _action(route.get("route", {}))}


def _dubbo_routes(config: Json) -> Iterator[Json]:
    """``dubbo_proxy``'s ``MultipleRouteConfiguration``: per service (interface, group,
    version; ``*`` is any interface) its method and attachment (header) routes."""
    for service in config.get("route_config", []):
        scope = [
            _matcher(key, {"exact": service[key]})
            for key in ("interface", "group", "version")
            if service.get(key) and service.get(key) != "*"
        ]
        for route in service.get("routes", []):
            match = route.get("match", {})
            method = match.get("method", {}).get("name")
            found = [_matcher("method", method)] if method else []
            yield {
                "name": service.get("name", ""),
                "match": scope + found + _headers(match),
                "route": _action(route.get("route", {})),
            }


def _predicates(predicate: Json) -> Iterator[Json]:
    if "single_predicate" in predicate:
        single = predicate["single_predicate"]
        name = single.get("input", {}).get("name", "")
        yield _matcher(name, single.get("value_match", {}))
    for key in ("and_matcher", "or_matcher"):
        for inner in predicate.get(key, {}).get("predicate", []):
            yield from _predicates(inner)


def _generic_routes(tree: Json) -> Iterator[Json]:
    for matcher in tree.get("matcher_list", {}).get("matchers", []):
        action = matcher.get("on_match", {}).get("action", {})
        config = action.get("typed_config", {})
        yield {
            "name": action.get("name", ""),
            "match": list(_predicates(matcher.get("predicate", {}))),
            "route": _action(config),
        }
    fallback = tree.get("on_no_match", {}).get("action")
    if fallback:
        yield {"name": fallback.get("name", ""), "match": [], "route": _action(fallback)}


def _redis(listener: Json) -> list[Json]:
    """A ``redis_proxy`` listener's prefix routes as a route table named after the listener."""
    config = _protocol_filter(listener).get("typed_config", {})
    prefix_routes = config.get("prefix_routes")
    if prefix_routes is None:
        return []
    routes = []
    for route in prefix_routes.get("routes", []):
        match = [_matcher("key", {"prefix": route.get("prefix", "")})]
        routes.append({"name": "", "match": match, "route": _redis_action(route)})
    if "catch_all_route" in prefix_routes:
        routes.append(
            {"name": "", "match": [], "route": _redis_action(prefix_routes["catch_all_route"])}
        )
    return [{"name": listener.get("name", ""), "routes": routes}]


def _redis_action(route: Json) -> Json:
    action = _action(route)
    mirrors = route.get("request_mirror_policy", [])
    action["request_mirror_policies"] = [{"cluster": m.get("cluster", "")} for m in mirrors]
    if route.get("remove_prefix"):
        action["remove_prefix"] = True
    return action


# --- clusters -----------------------------------------------------------------------------


def _endpoint_labels(dump: Json) -> dict[str, dict[tuple[str, int], list[list[str]]]]:
    """Per cluster, the ``envoy.lb`` labels of each endpoint of the EDS dump."""
    out: dict[str, dict[tuple[str, int], list[list[str]]]] = {}
    for config in _configs(dump, "EndpointsConfigDump"):
        for key in ("static_endpoint_configs", "dynamic_endpoint_configs"):
            for entry in config.get(key, []):
                cla = entry.get("endpoint_config", {})
                table = out.setdefault(cla.get("cluster_name", ""), {})
                for group in cla.get("endpoints", []):
                    for lb in group.get("lb_endpoints", []):
                        socket = lb.get("endpoint", {}).get("address", {}).get("socket_address", {})
                        meta = lb.get("metadata", {}).get("filter_metadata", {}).get("envoy.lb", {})
                        where = (socket.get("address", ""), int(socket.get("port_value", 0)))
                        table[where] = [[k, str(v)] for k, v in sorted(meta.items())]
    return out


def _endpoint(host: Json, labels: dict[tuple[str, int], list[list[str]]]) -> Json:
    socket = host.get("address", {}).get("socket_address", {})
    where = (socket.get("address", ""), int(socket.get("port_value", 0)))
    return {
        "address": where[0],
        "port": where[1],
        "weight": host.get("weight", 1),
        "labels": labels.get(where, []),
        "health": host.get("health_status", {}).get("eds_health_status", ""),
    }
