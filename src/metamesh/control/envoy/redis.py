"""Redis for an Envoy node: ``envoy.filters.network.redis_proxy`` listeners, as Aeraki makes them.

Entry point for the Envoy dispatch: :func:`redis_resources` ``(model, node)`` returns
``{type_url: {name: message}}`` with the listeners, clusters and endpoints of every
``tcp-redis*`` port the node sees (no route configurations: ``redis_proxy`` carries its
routes in the listener). The metamesh translation (:mod:`metamesh.control.redis`) stays the
one for metamesh proxies; this is the second back end of the same model.

Listener ``<address>_<port>``
    one ``redis_proxy`` filter (``RedisProxy``), from the host's RedisService:

    - ``prefix_routes``: a route per key prefix (``removePrefix``, the target's
      ``outbound|<port>||<host>`` cluster, mirrors as ``request_mirror_policy`` with
      ``runtime_fraction`` and ``exclude_read_commands``), the match-less route as
      ``catch_all_route``, ``caseInsensitive``; Envoy picks the longest prefix, like metamesh;
      without a RedisService everything goes to the service's own cluster;
    - ``faults``: ``DELAY``/``ERROR`` with their percentage, delay and commands;
    - ``settings``: ``opTimeout`` (Envoy needs one: Aeraki's outbound default, 60 s, when
      unset), ``enableCommandStats``, ``enableHashtagging``, ``enableRedirection`` (always on
      when a target is in CLUSTER mode, since metamesh follows MOVED/ASK there), the buffering
      knobs, ``maxUpstreamUnknownConnections``, ``readPolicy``;
    - ``settings.auth``: ``downstream_auth_passwords`` / ``downstream_auth_username``
      (``secret.file`` as a ``filename`` data source, read by Envoy).
Cluster ``outbound|<port>||<host>``
    the metamesh cluster (DestinationRule policies, TCP pool settings, the upstream password as
    ``RedisProtocolOptions`` under ``typed_extension_protocol_options
    ["envoy.filters.network.redis_proxy"]``: all of it Envoy-native already) with EDS endpoints;
    in CLUSTER mode (RedisDestination ``connectionPool.redis.mode``) the
    ``envoy.clusters.redis`` cluster type instead, with ``CLUSTER_PROVIDED`` balancing and the
    ServiceEntry's endpoints (or ``discoveryEndpoints``, ``host:port`` each, as in Aeraki) as
    the seeds from which Envoy learns the topology with ``CLUSTER SLOTS``.

What Envoy's ``redis_proxy`` cannot do as the model asks is reported by
:func:`envoy_redis_findings` (a warning per resource and field, naming the Envoy data plane;
the dispatch passes its ``Findings`` as ``notes``, so ``metamesh validate --data-plane envoy``
prints them); such a node still gets the closest correct config. The dispatch's
``address_for`` binds the listeners elsewhere (node metadata ``METAMESH_LISTEN_ADDRESS``);
Redis listeners that land on one address and port keep the first, and the others are
reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.clusters.redis.v3 import redis_cluster_pb2
from envoy.extensions.filters.network.redis_proxy.v3 import redis_proxy_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2

from metamesh.api.base import Resource, fqdn
from metamesh.api.problems import FieldPath, format_path
from metamesh.api.redis import Auth, Fault, Mirror, RedisDestination, RedisRoute, RedisService
from metamesh.control import translate as t
from metamesh.control.envoy.findings import Findings
from metamesh.control.model import MeshModel, Service, ServicePort
from metamesh.control.redis import is_cluster_mode, is_redis, redis_cluster_options
from metamesh.xds.resources import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ProxyNode

REDIS_PROXY_FILTER = "envoy.filters.network.redis_proxy"
REDIS_CLUSTER_TYPE = "envoy.clusters.redis"
#: Aeraki's outbound ``op_timeout`` when the RedisService sets none (Envoy requires one).
DEFAULT_OP_TIMEOUT = 60.0
DATA_PLANE = "Envoy's redis_proxy"

RedisProxy = redis_proxy_pb2.RedisProxy
PrefixRoute = redis_proxy_pb2.RedisProxy.PrefixRoutes.Route
Tables = dict[str, dict[str, Any]]
#: Rewrites a listener address for the node (the dispatch's listen-address override).
AddressFor = Callable[[str], str]


def redis_resources(
    model: MeshModel,
    node: ProxyNode,
    address_for: AddressFor | None = None,
    notes: Findings | None = None,
) -> Tables:
    """Listeners, clusters and endpoints of every Redis port ``node`` sees (see the module
    docstring); ``address_for`` maps a service address to the one the listener binds; what
    Envoy cannot do as asked goes to ``notes``."""
    tables: Tables = {LISTENER_TYPE: {}, CLUSTER_TYPE: {}, ENDPOINT_TYPE: {}}
    if notes is not None:
        resources: list[Resource] = [*model.redis.services.values()]
        resources += model.redis.destinations.values()
        for resource in resources:
            for path, message in envoy_redis_findings(resource):
                notes.add(resource, format_path(path), message)
    if not node.outbound:
        return tables
    for host in sorted(model.services):
        service = model.services[host]
        if not service.visible_to(node.namespace):
            continue
        for port in service.ports:
            if is_redis(port):
                _redis_port(model, service, port, tables, address_for or (lambda a: a))
    _drop_rebound_twins(tables[LISTENER_TYPE], notes)
    return tables


def _drop_rebound_twins(listeners: dict[str, Any], notes: Findings | None) -> None:
    """Listeners moved by ``address_for`` onto one address and port: the first (by name)
    stays, the others are dropped (Envoy would refuse the pair) and reported."""
    bound: set[tuple[str, int]] = set()
    for name in sorted(listeners):
        socket = listeners[name].address.socket_address
        key = (socket.address, socket.port_value)
        if key not in bound:
            bound.add(key)
            continue
        del listeners[name]
        if notes is not None:
            notes.add(
                f"Listener {name}",
                "METAMESH_LISTEN_ADDRESS",
                f"another Redis service already listens on {key[0]}:{key[1]} on this node; skipped",
            )


def _redis_port(
    model: MeshModel, service: Service, port: ServicePort, tables: Tables, address_for: AddressFor
) -> None:
    rs = model.redis.services.get(service.host)
    proxy = redis_proxy_config(model, service, port.number, rs)
    for address in service.addresses:
        listener = build_listener(f"{address}_{port.number}", address_for(address), port, proxy)
        tables[LISTENER_TYPE].setdefault(listener.name, listener)
    cluster = t.build_cluster(service, port.number, "")
    redis_cluster_options(cluster, model.redis.destinations.get(service.host))
    if is_cluster_mode(model, service.host):
        _as_redis_cluster(cluster, service, port, model.redis.destinations.get(service.host))
    elif cluster.type == cluster_pb2.Cluster.EDS:
        tables[ENDPOINT_TYPE][cluster.name] = t.build_load_assignment(
            cluster.name, service, port, ""
        )
    tables[CLUSTER_TYPE][cluster.name] = cluster


# --- listener -----------------------------------------------------------------------------


def build_listener(
    name: str, address: str, port: ServicePort, proxy: redis_proxy_pb2.RedisProxy
) -> listener_pb2.Listener:
    packed = any_pb2.Any()
    packed.Pack(proxy)
    return listener_pb2.Listener(
        name=name,
        address=t.socket_address(address, port.number),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(name=REDIS_PROXY_FILTER, typed_config=packed)
                ]
            )
        ],
    )


def redis_proxy_config(
    model: MeshModel, service: Service, port: int, rs: RedisService | None
) -> redis_proxy_pb2.RedisProxy:
    """The ``RedisProxy`` of ``service``'s Redis ``port`` (see the module docstring)."""
    own = t.cluster_name(port, "", service.host)
    proxy = RedisProxy(stat_prefix=own)
    settings = rs.spec.settings if rs is not None else None
    pool = proxy.settings
    pool.op_timeout.CopyFrom(
        t.duration(settings.op_timeout if settings and settings.op_timeout else DEFAULT_OP_TIMEOUT)
    )
    routes = rs.spec.redis if rs is not None else []
    clusters = [_target(model, rs, r.route, port) for r in routes] if rs and routes else [own]
    pool.enable_redirection = any(_is_cluster(model, name) for name in clusters)
    if settings is not None:
        _pool_settings(pool, settings)
        proxy.prefix_routes.case_insensitive = settings.case_insensitive
        _downstream_auth(proxy, settings.auth)
    if rs is None or not rs.spec.redis:
        proxy.prefix_routes.catch_all_route.cluster = own
    else:
        _prefix_routes(model, proxy.prefix_routes, rs, port)
    if rs is not None:
        proxy.faults.extend(_fault(f) for f in rs.spec.faults)
    return proxy


def _pool_settings(pool: redis_proxy_pb2.RedisProxy.ConnPoolSettings, settings: Any) -> None:
    pool.enable_command_stats = settings.enable_command_stats
    pool.enable_hashtagging = settings.enable_hashtagging
    pool.enable_redirection = pool.enable_redirection or settings.enable_redirection
    if settings.max_buffer_size_before_flush is not None:
        pool.max_buffer_size_before_flush = settings.max_buffer_size_before_flush
    if settings.buffer_flush_timeout is not None:
        pool.buffer_flush_timeout.CopyFrom(t.duration(settings.buffer_flush_timeout))
    if settings.max_upstream_unknown_connections is not None:
        pool.max_upstream_unknown_connections.value = settings.max_upstream_unknown_connections
    if settings.read_policy is not None:
        pool.read_policy = RedisProxy.ConnPoolSettings.ReadPolicy.Value(settings.read_policy)


def _downstream_auth(proxy: redis_proxy_pb2.RedisProxy, auth: Auth | None) -> None:
    if auth is None:
        return
    if auth.plain is not None:
        proxy.downstream_auth_passwords.add().inline_string = auth.plain.password
        if auth.plain.username:
            proxy.downstream_auth_username.inline_string = auth.plain.username
    elif auth.secret is not None:
        proxy.downstream_auth_passwords.add().filename = auth.secret.file


def _prefix_routes(
    model: MeshModel, routes: redis_proxy_pb2.RedisProxy.PrefixRoutes, rs: RedisService, port: int
) -> None:
    seen: set[str] = set()
    for route in rs.spec.redis:
        cluster = _target(model, rs, route.route, port)
        if not cluster:  # a route without a destination is a validation error
            continue
        key = route.match.key if route.match is not None else None
        if key is None:
            if not routes.HasField("catch_all_route"):  # the first catch-all, as metamesh
                _fill_route(model, routes.catch_all_route, rs, route, cluster, port)
            continue
        if key.prefix in seen:  # Envoy refuses a repeated prefix; the first one wins
            continue
        seen.add(key.prefix)
        out = routes.routes.add(prefix=key.prefix, remove_prefix=key.remove_prefix)
        _fill_route(model, out, rs, route, cluster, port)


def _fill_route(
    model: MeshModel,
    out: redis_proxy_pb2.RedisProxy.PrefixRoutes.Route,
    rs: RedisService,
    route: RedisRoute,
    cluster: str,
    port: int,
) -> None:
    out.cluster = cluster
    for mirror in route.mirror:
        target = _target(model, rs, mirror.route, port)
        if target:
            out.request_mirror_policy.append(_mirror(mirror, target))


def _mirror(
    mirror: Mirror, cluster: str
) -> redis_proxy_pb2.RedisProxy.PrefixRoutes.Route.RequestMirrorPolicy:
    policy = PrefixRoute.RequestMirrorPolicy(
        cluster=cluster, exclude_read_commands=mirror.exclude_read_commands
    )
    if mirror.percentage is not None:
        policy.runtime_fraction.default_value.CopyFrom(_percent(mirror.percentage.value))
    return policy


def _fault(fault: Fault) -> redis_proxy_pb2.RedisProxy.RedisFault:
    pct = fault.percentage.value if fault.percentage is not None else 100.0
    out = RedisProxy.RedisFault(
        fault_type=RedisProxy.RedisFault.RedisFaultType.Value(fault.type),
        commands=[c.lower() for c in fault.commands],
    )
    out.fault_enabled.default_value.CopyFrom(_percent(pct))
    if fault.type == "DELAY" and fault.delay:
        out.delay.CopyFrom(t.duration(fault.delay))
    return out


def _percent(value: float) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(
        numerator=round(value * 10000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def _target(model: MeshModel, rs: RedisService, dest: Any, fallback: int) -> str:
    """``outbound|<port>||<host>`` of a route or mirror destination ("" without a host)."""
    if dest is None or not dest.host:
        return ""
    full = fqdn(dest.host, rs.namespace)
    number = int(dest.port)
    if not number:
        target = model.services.get(full)
        ports = [p.number for p in target.ports if is_redis(p)] if target else []
        number = ports[0] if ports else fallback
    return t.cluster_name(number, "", full)


def _is_cluster(model: MeshModel, cluster: str) -> bool:
    parts = cluster.split("|")
    return len(parts) == 4 and is_cluster_mode(model, parts[3])


# --- clusters -----------------------------------------------------------------------------


def _as_redis_cluster(
    cluster: cluster_pb2.Cluster, service: Service, port: ServicePort, rd: RedisDestination | None
) -> None:
    """Turn ``cluster`` into an ``envoy.clusters.redis`` cluster seeded with the endpoints."""
    cluster.ClearField("eds_cluster_config")
    cluster.ClearField("type")
    cluster.lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED
    cluster.cluster_type.name = REDIS_CLUSTER_TYPE
    cluster.cluster_type.typed_config.Pack(redis_cluster_pb2.RedisClusterConfig())
    seeds = _discovery_endpoints(rd)
    if seeds:
        cluster.load_assignment.cluster_name = cluster.name
        group = cluster.load_assignment.endpoints.add()
        for host, number in seeds:
            group.lb_endpoints.add().endpoint.address.CopyFrom(t.socket_address(host, number))
    else:
        cluster.load_assignment.CopyFrom(t.build_load_assignment(cluster.name, service, port, ""))


def _discovery_endpoints(rd: RedisDestination | None) -> list[tuple[str, int]]:
    policy = rd.spec.traffic_policy if rd is not None else None
    pool = policy.connection_pool if policy is not None else None
    redis = pool.redis if pool is not None else None
    out = []
    for item in redis.discovery_endpoints if redis is not None else []:
        host, _, number = item.rpartition(":")
        if host and number.isdigit():
            out.append((host, int(number)))
    return out


# --- what Envoy cannot do -----------------------------------------------------------------

Finding = tuple[FieldPath, str]


def envoy_redis_findings(resource: Resource) -> list[Finding]:
    """Warnings for what ``resource`` asks that Envoy's ``redis_proxy`` does not do."""
    if isinstance(resource, RedisDestination):
        pool = (
            resource.spec.traffic_policy.connection_pool if resource.spec.traffic_policy else None
        )
        auth = pool.redis.auth if pool is not None and pool.redis is not None else None
        path = ("spec", "trafficPolicy", "connectionPool", "redis", "auth")
        return [*_destination_findings(resource), *_secret_file_findings(auth, path)]
    if isinstance(resource, RedisService):
        settings = resource.spec.settings
        auth = settings.auth if settings is not None else None
        return _secret_file_findings(auth, ("spec", "settings", "auth"))
    return []


def _secret_file_findings(auth: Auth | None, path: FieldPath) -> list[Finding]:
    if auth is None or auth.secret is None or not auth.secret.file:
        return []
    return [
        (
            (*path, "secret", "file"),
            f"{DATA_PLANE} reads {auth.secret.file} as is: a trailing newline is part of "
            "the password there (metamesh strips one); write the file without it, as "
            "Kubernetes mounts a Secret's key",
        )
    ]


def _destination_findings(rd: RedisDestination) -> list[Finding]:
    policy = rd.spec.traffic_policy
    pool = policy.connection_pool if policy is not None else None
    tcp = pool.tcp if pool is not None else None
    out: list[Finding] = []
    if tcp is not None and tcp.max_connections is not None:
        out.append(
            (
                ("spec", "trafficPolicy", "connectionPool", "tcp", "maxConnections"),
                f"not applied by {DATA_PLANE}: it keeps one connection per backend and "
                "worker thread and has no circuit breaking",
            )
        )
    redis = pool.redis if pool is not None else None
    bad = [e for e in (redis.discovery_endpoints if redis else []) if not _is_host_port(e)]
    if bad and redis is not None and redis.mode == "CLUSTER":
        out.append(
            (
                ("spec", "trafficPolicy", "connectionPool", "redis", "discoveryEndpoints"),
                f"{DATA_PLANE} seeds its cluster from host:port entries only; "
                f"ignored: {', '.join(bad)}",
            )
        )
    return out


def _is_host_port(item: str) -> bool:
    host, _, number = item.rpartition(":")
    return bool(host) and number.isdigit()
