"""Translation of Redis ports (``tcp-redis*``), RedisService and RedisDestination to xDS.

For a service port whose name selects Redis, :func:`outbound_redis` emits what a MetaProtocol
port gets (see :mod:`metamesh.control.translate`), with the Redis codec:

Listener ``<address>_<port>``
    ``MetaProtocolProxy`` with ``codec.name: aeraki.meta_protocol.codec.redis`` and
    ``codec.options`` (a metamesh extension, read back by :mod:`metamesh.control.to_proxy`):
    the downstream password of ``settings.auth`` (``auth_password`` / ``auth_username``, or
    ``auth_password_file`` for ``secret.file``, read by the proxy), ``case_insensitive`` and
    ``route_prefixes`` (the codec splits a multi-key command whose keys match several);
    with ``enableCommandStats`` the ``metamesh.filters.command_stats`` filter before the router
    (requests and reply times per command, as Envoy's ``command.<name>.*`` stats).
Cluster ``outbound|<port>||<host>``
    as for any service (DestinationRule policies apply), plus from the host's
    RedisDestination: the TCP pool settings (``maxConnections`` -> circuit breaker,
    ``connectTimeout``) and the upstream password as Envoy's ``RedisProtocolOptions`` in
    ``typed_extension_protocol_options["envoy.filters.network.redis_proxy"]`` (an inline
    string, or a ``filename`` for ``secret.file``).
Cluster mode (RedisDestination ``connectionPool.redis.mode: CLUSTER``)
    the cluster carries ``metadata.filter_metadata["metamesh"].redisMode: CLUSTER`` (the
    proxy then keeps a slot table and follows MOVED/ASK), the listeners of services routing
    to it get ``codec.options.mode: CLUSTER`` (requests carry their ``slot``; SELECT is
    refused) and routes to it hash on ``slot`` (so they take the slot-aware pick). A
    RedisService ``settings.readPolicy`` other than ``MASTER`` becomes
    ``codec.options.read_policy`` of its listeners (reads may go to the slot's replicas), and
    every cluster-mode cluster it routes to gets ``redisReadOnly: true`` beside ``redisMode``
    (its connections send ``READONLY``, without which replicas redirect reads).
RouteConfiguration ``<host>_<port>``
    one route per RedisService route, the longest key prefix first (Envoy's prefix routes),
    then the catch-all
    (``key`` prefix matcher, lower-cased when ``caseInsensitive``; the proxy's codec lowers the
    key too); ``removePrefix`` as the request mutation ``redis-remove-prefix``; ``opTimeout``
    as the route timeout; mirrors as mirror policies with their percentage. Without a
    RedisService the one route sends everything to the service's own cluster.

Two RedisService features need a route per case, since a route has one mirror list and one
fault: a mirror with ``excludeReadCommands`` gets a route for writes (``access: write``, every
mirror) before the route for the rest (only the other mirrors); a fault with ``commands``
gets a route matching those commands (``command`` regex) carrying that fault, before the
route carrying the first fault without commands (Envoy picks one fault per request too). A
``DELAY`` fault is a delay, an ``ERROR`` fault an abort whose reply is
``-ERR Fault Injected: Error`` (Envoy's text).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.redis_proxy.v3 import redis_proxy_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2

from metamesh.api.base import fqdn
from metamesh.api.redis import Auth, Fault, Mirror, RedisDestination, RedisRoute, RedisService
from metamesh.control.model import MeshModel, Service, ServicePort

REDIS_CODEC = "aeraki.meta_protocol.codec.redis"
REDIS_PROTOCOL_OPTIONS = "envoy.filters.network.redis_proxy"
#: The request mutation the Redis codec applies (:data:`metamesh.codecs.redis.REMOVE_PREFIX`).
REMOVE_PREFIX = "redis-remove-prefix"
FAULT_ERROR_TEXT = "Error"
#: Per-command statistics (``settings.enableCommandStats``), see
#: :mod:`metamesh.proxy.filters.command_stats`.
COMMAND_STATS_FILTER = "metamesh.filters.command_stats"


def is_redis(port: ServicePort) -> bool:
    return port.protocol == "redis"


def outbound_redis(
    model: MeshModel, service: Service, port: ServicePort, tables: dict[str, dict[str, Any]]
) -> None:
    """Listeners, cluster (+ endpoints) and routes of a Redis port of ``service``."""
    from metamesh.control import translate as t  # translate imports this module

    rs = model.redis.services.get(service.host)
    cluster_mode = _any_cluster_target(model, service, rs)
    for address in service.addresses:
        listener = build_redis_listener(service, port, address, rs, cluster_mode)
        tables[t.LISTENER_TYPE].setdefault(listener.name, listener)
    cluster = t.build_cluster(service, port.number, "")
    redis_cluster_options(
        cluster, model.redis.destinations.get(service.host), replica_reads(model, service.host)
    )
    tables[t.CLUSTER_TYPE][cluster.name] = cluster
    if cluster.type == cluster_pb2.Cluster.EDS:
        tables[t.ENDPOINT_TYPE][cluster.name] = t.build_load_assignment(
            cluster.name, service, port, ""
        )
    routes = redis_route_configuration(model, service, port.number, rs)
    tables[t.ROUTE_TYPE][routes.name] = routes


# --- listener -----------------------------------------------------------------------------


def codec_options(rs: RedisService | None) -> dict[str, str]:
    settings = rs.spec.settings if rs is not None else None
    options: dict[str, str] = {}
    prefixes = _prefixes(rs) if rs is not None else []
    if len(prefixes) > 0:  # multi-key commands over keys of several routes are split
        options["route_prefixes"] = "\n".join(prefixes)
    if settings is None:
        return options
    if settings.case_insensitive:
        options["case_insensitive"] = "true"
    options.update(_auth_options(settings.auth))
    return options


def _auth_options(auth: Auth | None) -> dict[str, str]:
    if auth is None:
        return {}
    if auth.plain is not None:
        out = {"auth_password": auth.plain.password}
        if auth.plain.username:
            out["auth_username"] = auth.plain.username
        return out
    if auth.secret is not None:
        return {"auth_password_file": auth.secret.file}
    return {}


def is_cluster_mode(model: MeshModel, host: str) -> bool:
    """Whether ``host``'s RedisDestination says ``mode: CLUSTER``."""
    rd = model.redis.destinations.get(host)
    return rd is not None and rd.cluster_mode


def _any_cluster_target(model: MeshModel, service: Service, rs: RedisService | None) -> bool:
    return any(is_cluster_mode(model, h) for h in _targets(service.host, rs))


def _targets(host: str, rs: RedisService | None) -> list[str]:
    """The hosts the listener of ``host`` sends to: its own and its RedisService's routes'."""
    hosts = [host]
    if rs is not None:
        hosts += [fqdn(r.route.host, rs.namespace) for r in rs.spec.redis if r.route]
    return hosts


def reads_replicas(rs: RedisService | None) -> bool:
    """Whether ``rs`` lets reads go to replicas (``readPolicy`` set, not ``MASTER``)."""
    settings = rs.spec.settings if rs is not None else None
    return settings is not None and settings.reads_replicas


def replica_reads(model: MeshModel, host: str) -> bool:
    """Whether some RedisService reading from replicas sends to ``host`` in cluster mode (its
    connections must then say ``READONLY``)."""
    return is_cluster_mode(model, host) and any(
        reads_replicas(rs) and host in _targets(source, rs)
        for source, rs in model.redis.services.items()
    )


def build_redis_listener(
    service: Service,
    port: ServicePort,
    address: str,
    rs: RedisService | None,
    cluster_mode: bool = False,
) -> listener_pb2.Listener:
    from metamesh.control import translate as t

    codec: dict[str, Any] = {"name": REDIS_CODEC}
    options = codec_options(rs)
    if cluster_mode:
        options["mode"] = "CLUSTER"
        if reads_replicas(rs):
            assert rs is not None and rs.spec.settings is not None
            options["read_policy"] = str(rs.spec.settings.read_policy)
    if options:
        codec["options"] = options
    proxy = {
        "statPrefix": t.cluster_name(port.number, "", service.host),
        "applicationProtocol": "redis",
        "codec": codec,
        "rds": {
            "routeConfigName": t.route_config_name(service.host, port.number),
            "configSource": {"ads": {}, "resourceApiVersion": "V3"},
        },
        "metaProtocolFilters": [*_stats_filter(rs), {"name": t.ROUTER_FILTER}],
    }
    return listener_pb2.Listener(
        name=f"{address}_{port.number}",
        address=t.socket_address(address, port.number),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name=t.META_PROTOCOL_FILTER,
                        typed_config=t.typed_struct(t.META_PROTOCOL_PROXY_TYPE, proxy),
                    )
                ]
            )
        ],
    )


def _stats_filter(rs: RedisService | None) -> list[dict[str, Any]]:
    settings = rs.spec.settings if rs is not None else None
    if settings is None or not settings.enable_command_stats:
        return []
    return [{"name": COMMAND_STATS_FILTER}]


# --- cluster ------------------------------------------------------------------------------


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def redis_cluster_options(
    cluster: cluster_pb2.Cluster, rd: RedisDestination | None, readonly: bool = False
) -> None:
    """Apply ``rd``'s pool settings, mode and upstream auth to ``cluster``; ``readonly``: some
    listener reads from this cluster's replicas."""
    pool = rd.spec.traffic_policy.connection_pool if rd and rd.spec.traffic_policy else None
    if pool is None:
        return
    if rd is not None and rd.cluster_mode:
        mode: dict[str, Any] = {"redisMode": "CLUSTER"}
        if readonly:
            mode["redisReadOnly"] = True
        cluster.metadata.filter_metadata["metamesh"].update(mode)
    if pool.tcp is not None:
        if pool.tcp.connect_timeout is not None:
            cluster.connect_timeout.CopyFrom(_duration(pool.tcp.connect_timeout))
        if pool.tcp.max_connections is not None:
            if not cluster.circuit_breakers.thresholds:
                cluster.circuit_breakers.thresholds.append(
                    circuit_breaker_pb2.CircuitBreakers.Thresholds()
                )
            cluster.circuit_breakers.thresholds[0].max_connections.value = pool.tcp.max_connections
    auth = pool.redis.auth if pool.redis is not None else None
    if auth is None:
        return
    options = redis_proxy_pb2.RedisProtocolOptions()
    if auth.plain is not None:
        options.auth_password.inline_string = auth.plain.password
        if auth.plain.username:
            options.auth_username.inline_string = auth.plain.username
    elif auth.secret is not None:
        options.auth_password.filename = auth.secret.file
    cluster.typed_extension_protocol_options[REDIS_PROTOCOL_OPTIONS].Pack(options)


# --- routes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Variant:
    """One emitted route of a RedisService route: extra matchers, mirrors and fault."""

    suffix: str
    headers: tuple[rc.HeaderMatcher, ...]
    mirrors: tuple[Mirror, ...]
    fault: Fault | None


def redis_route_configuration(
    model: MeshModel, service: Service, port: int, rs: RedisService | None
) -> route_pb2.RouteConfiguration:
    from metamesh.control import translate as t

    name = t.route_config_name(service.host, port)
    config = route_pb2.RouteConfiguration(name=name)
    vhost = config.virtual_hosts.add(name=name, domains=["*"])
    own = t.cluster_name(port, "", service.host)
    if rs is None or not rs.spec.redis:
        default = rc.Route(name="default", match=rc.RouteMatch(prefix="/"))
        default.route.cluster = own
        if is_cluster_mode(model, service.host):
            default.route.hash_policy.add().header.header_name = "slot"
        if rs is not None:
            _apply_settings(default, rs)
        vhost.routes.extend(_with_faults(default, rs.spec.faults if rs else []))
        return config
    # Envoy's prefix routes: the longest matching prefix wins, then the catch-all
    ordered = sorted(
        enumerate(rs.spec.redis), key=lambda p: (_is_catch_all(p[1]), -_prefix_len(p[1]))
    )
    for index, route in ordered:
        vhost.routes.extend(_routes_for(model, service, port, rs, index, route))
    return config


def _is_catch_all(route: RedisRoute) -> bool:
    return route.match is None or route.match.key is None


def _prefix_len(route: RedisRoute) -> int:
    key = route.match.key if route.match is not None else None
    return len(key.prefix) if key is not None else 0


def _prefixes(rs: RedisService) -> list[str]:
    return [r.match.key.prefix for r in rs.spec.redis if r.match and r.match.key]


def _target(model: MeshModel, namespace: str, host: str, port: int, fallback: int) -> str:
    full = fqdn(host, namespace)
    number = port
    if not number:
        target = model.services.get(full)
        ports = [p.number for p in target.ports if is_redis(p)] if target else []
        number = ports[0] if ports else fallback
    return f"outbound|{number}||{full}"


def _routes_for(
    model: MeshModel, service: Service, port: int, rs: RedisService, index: int, route: RedisRoute
) -> Iterator[rc.Route]:
    ns = rs.namespace
    settings = rs.spec.settings
    insensitive = settings is not None and settings.case_insensitive
    base = rc.Route(name=f"redis-{index}", match=rc.RouteMatch(prefix="/"))
    key = route.match.key if route.match is not None else None
    if key is not None:
        prefix = key.prefix.lower() if insensitive else key.prefix
        base.match.headers.add(name="key", prefix_match=prefix)
        if key.remove_prefix and key.prefix:
            base.request_headers_to_add.add().header.CopyFrom(
                base_pb2.HeaderValue(key=REMOVE_PREFIX, value=key.prefix)
            )
    dest = route.route
    base.route.cluster = _target(model, ns, dest.host, dest.port, port) if dest else ""
    if dest is not None and is_cluster_mode(model, fqdn(dest.host, ns)):
        base.route.hash_policy.add().header.header_name = "slot"
    _apply_settings(base, rs)
    for variant in _mirror_variants(route.mirror):
        r = rc.Route()
        r.CopyFrom(base)
        r.name += variant.suffix
        r.match.headers.extend(variant.headers)
        for mirror in variant.mirrors:
            if mirror.route is None:
                continue
            pct = mirror.percentage.value if mirror.percentage is not None else 100.0
            policy = r.route.request_mirror_policies.add(
                cluster=_target(model, ns, mirror.route.host, mirror.route.port, port)
            )
            policy.runtime_fraction.default_value.CopyFrom(
                percent_pb2.FractionalPercent(
                    numerator=round(pct * 10000),
                    denominator=percent_pb2.FractionalPercent.MILLION,
                )
            )
        yield from _with_faults(r, rs.spec.faults)


def _mirror_variants(mirrors: list[Mirror]) -> list[_Variant]:
    if not any(m.exclude_read_commands for m in mirrors):
        return [_Variant("", (), tuple(mirrors), None)]
    writes = rc.HeaderMatcher(name="access", exact_match="write")
    rest = tuple(m for m in mirrors if not m.exclude_read_commands)
    return [_Variant("-writes", (writes,), tuple(mirrors), None), _Variant("", (), rest, None)]


def _with_faults(route: rc.Route, faults: list[Fault]) -> list[rc.Route]:
    """``route`` once per command-specific fault (matching those commands), then with the
    first fault without commands (or none)."""
    out: list[rc.Route] = []
    for i, fault in enumerate(faults):
        if not fault.commands:
            continue
        r = rc.Route()
        r.CopyFrom(route)
        r.name += f"-fault-{i}"
        names = "|".join(re.escape(c.lower()) for c in fault.commands)
        matcher = r.match.headers.add(name="command")
        matcher.safe_regex_match.regex = f"^({names})$"
        matcher.safe_regex_match.google_re2.SetInParent()
        _set_fault(r, fault)
        out.append(r)
    general = next((f for f in faults if not f.commands), None)
    last = rc.Route()
    last.CopyFrom(route)
    if general is not None:
        _set_fault(last, general)
    out.append(last)
    return out


def _set_fault(route: rc.Route, fault: Fault) -> None:
    pct = fault.percentage.value if fault.percentage is not None else 100.0
    if fault.type == "DELAY":
        body: dict[str, Any] = {
            "delay": {"fixedDelay": f"{fault.delay or 0.0:.9f}s", "percentage": pct}
        }
    else:
        body = {
            "abort": {"errorKind": "fault_abort", "message": FAULT_ERROR_TEXT, "percentage": pct}
        }
    route.metadata.filter_metadata["metamesh"].update({"fault": body})


def _apply_settings(route: rc.Route, rs: RedisService) -> None:
    settings = rs.spec.settings
    if settings is not None and settings.op_timeout:
        route.route.timeout.CopyFrom(_duration(settings.op_timeout))
