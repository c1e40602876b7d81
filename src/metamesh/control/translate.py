"""The pure translation: mesh model + proxy identity -> Envoy v3 xDS resources.

:func:`translate` reads a :class:`~metamesh.control.model.MeshModel` and a :class:`ProxyNode`
and returns :class:`XdsResources`: protobuf messages from ``xds-protos``, keyed by type URL and
resource name. No I/O, no clock, no globals: the same inputs always give equal messages, which
is what the table tests check and what lets the ADS server skip pushes that change nothing.

For every service visible to the node (Istio ``exportTo``) and every MetaProtocol port:

Listener ``<address>_<port>``
    one per service address, with the network filter ``envoy.filters.network.meta_protocol_proxy``
    whose ``typed_config`` is a ``udpa.type.v1.TypedStruct`` (as Aeraki's EnvoyFilter patches
    write it) of type ``aeraki.meta_protocol_proxy.v1alpha.MetaProtocolProxy``: ``statPrefix``,
    ``applicationProtocol``, ``codec.name`` (``aeraki.meta_protocol.codec.<name>``, or the
    import path of an unpackaged codec), ``rds`` (``routeConfigName: <host>_<port>`` over ADS)
    and ``metaProtocolFilters``, in order: ``metamesh.filters.rbac`` when authorization
    policies select the service, ``local_ratelimit`` and ``ratelimit`` (global) when the
    MetaRouter has them, then the router (configs: :mod:`metamesh.control.filter_configs`).
    For a workload node (one that gave its namespace) and a service with mesh workloads,
    those server-side filters run on the inbound side instead and the outbound listener has
    the router only (Aeraki's split, docs/mesh.md).
Cluster ``outbound|<port>||<host>`` and ``outbound|<port>|<subset>|<host>``
    EDS over ADS (``STRICT_DNS`` with an inline assignment for ``resolution: DNS``), lb policy,
    ring-hash size, connect timeout, circuit breakers from ``connectionPool`` (only the limits
    that are set), ``max_requests_per_connection`` (the v3 ``Cluster`` field; Envoy has since
    moved it into ``HttpProtocolOptions``, which only HTTP clusters take), outlier detection
    (Istio's mapping: a 5xx or gateway threshold is enforced at 100%, consecutive 5xx is
    switched off when only gateway errors are asked for; ``minHealthPercent`` is the healthy
    panic threshold), and the client TLS (DestinationRule ``tls``, else auto mTLS for a
    workload node) as an ``UpstreamTlsContext`` (:mod:`metamesh.control.tls_contexts`).
ClusterLoadAssignment for every EDS cluster
    the endpoints its subset's labels select; labels in ``filter_metadata["envoy.lb"]``.
RouteConfiguration ``<host>_<port>``
    exactly Aeraki's MetaProtocol RDS shape (see :mod:`metamesh.control.routes`).
The rate limit service of a global rate limit
    when ``rateLimitService`` names ``outbound|<port>||<host>`` of a known service (any port
    protocol): that cluster, with HTTP/2 upstream options (gRPC), and its endpoints.

For every endpoint the node fronts (:mod:`metamesh.control.inbound`) and MetaProtocol port:

Listener ``inbound_<endpoint address>_<endpoint port>``
    the same MetaProtocol filter (stat prefix and route configuration ``inbound|<port>||<host>``,
    the service's server-side filters, then the router), one filter chain per transport the
    PeerAuthentication admits (a ``DownstreamTlsContext`` on the TLS one).
Cluster ``inbound|<port>||<host>``
    ``STATIC``, its one endpoint the local app on 127.0.0.1 at the endpoint's port.
RouteConfiguration ``inbound|<port>||<host>``
    one route to that cluster.

:class:`ProxyNode` carries the node id, namespace, workload labels, service account and
addresses. The namespace filters services by ``exportTo`` and the Istio Sidecar that applies to
the node (:mod:`metamesh.control.scope`); ``None`` (the embedded proxy) sees every service.
A node that asks for no outbound side (``outbound`` False) gets only its inbound resources
(and the rate limit service cluster its inbound filters need).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2
from udpa.type.v1 import typed_struct_pb2

from metamesh.codecs.registry import AERAKI_PREFIX
from metamesh.control.filter_configs import (
    global_rate_limit_json,
    local_rate_limit_json,
    rbac_json,
)
from metamesh.control.inbound import APP_ADDRESS, InboundPort, cluster_tls, inbound_ports
from metamesh.control.kafka import advertise_map, kafka_filters, kafka_port
from metamesh.control.model import ClusterPolicy, MeshModel, Service, ServicePort, UpstreamTls
from metamesh.control.redis import is_redis, outbound_redis
from metamesh.control.routes import route_configuration
from metamesh.control.scope import egress_scope
from metamesh.control.tls_contexts import (
    ISTIO_TLS_MODE,
    TLS_INSPECTOR,
    TRANSPORT_SOCKET_MATCH,
    add_auto_mtls_matches,
    downstream_mtls_socket,
    upstream_tls_socket,
)
from metamesh.xds.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    ENVOY_DATA_PLANE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    TYPE_URLS,
    ProxyNode,
    XdsResources,
)

__all__ = [
    "CLUSTER_TYPE",
    "ENDPOINT_TYPE",
    "LISTENER_TYPE",
    "ROUTE_TYPE",
    "TYPE_URLS",
    "ProxyNode",
    "XdsResources",
    "cluster_name",
    "route_config_name",
    "translate",
]

META_PROTOCOL_FILTER = "envoy.filters.network.meta_protocol_proxy"
META_PROTOCOL_PROXY_TYPE = (
    "type.googleapis.com/aeraki.meta_protocol_proxy.v1alpha.MetaProtocolProxy"
)
ROUTER_FILTER = "aeraki.meta_protocol.filters.router"
LOCAL_RATELIMIT_FILTER = "aeraki.meta_protocol.filters.local_ratelimit"
GLOBAL_RATELIMIT_FILTER = "aeraki.meta_protocol.filters.ratelimit"
RBAC_FILTER = "metamesh.filters.rbac"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def cluster_name(port: int, subset: str, host: str) -> str:
    """Istio's outbound cluster name."""
    return f"outbound|{port}|{subset}|{host}"


def route_config_name(host: str, port: int) -> str:
    """Aeraki's ``BuildMetaProtocolRouteName``."""
    return f"{host}_{port}"


def translate(
    model: MeshModel, node: ProxyNode | None = None, *, fragments: Fragments | None = None
) -> XdsResources:
    """Every resource ``node`` needs (see the module docstring); a real Envoy node gets
    Envoy's own filters instead (:mod:`metamesh.control.envoy`, the second back end).

    Only the services the node's scope admits are translated (``exportTo`` and Istio's
    Sidecar, :mod:`metamesh.control.scope`). ``fragments`` (``(model, service, in_mesh) ->``
    :func:`outbound_fragment`) lets a caller reuse each service's outbound resources across
    scopes and models (:mod:`metamesh.control.scoped`); the result is the same."""
    node = node or ProxyNode()
    if node.data_plane == ENVOY_DATA_PLANE:
        # Imported here: the Envoy back end builds on this module's pieces.
        from metamesh.control.envoy import translate_for_envoy

        return translate_for_envoy(model, node)
    tables: dict[str, dict[str, Any]] = {url: {} for url in TYPE_URLS}
    inbound, _ = inbound_ports(model, node)
    fronted = {x.service.host for x in inbound}
    scope = egress_scope(model, node)
    in_mesh = node.namespace is not None
    candidates = scope.candidates(model) if node.outbound else ()
    for host in sorted({*candidates, *fronted}) if fronted else candidates:
        service = model.services[host]
        visible = node.outbound and scope.admits(service)
        if visible and fragments is not None:
            merge_fragment(tables, fragments(model, service, in_mesh))
        elif visible:
            _outbound(model, service, tables, in_mesh=in_mesh)
        if visible or host in fronted:
            _rate_limit_service_cluster(model, service, tables)
    for port in inbound:
        _inbound(port, tables)
    return XdsResources(
        MappingProxyType(
            {url: MappingProxyType(dict(sorted(t.items()))) for url, t in tables.items()}
        )
    )


#: One service's outbound resources by type URL (see :func:`outbound_fragment`).
Fragment = Mapping[str, Mapping[str, Any]]
Fragments = Callable[[MeshModel, Service, bool], Fragment]


def outbound_fragment(model: MeshModel, service: Service, in_mesh: bool) -> Fragment:
    """The client side of one service on its own, for :func:`merge_fragment`."""
    tables: dict[str, dict[str, Any]] = {url: {} for url in TYPE_URLS}
    _outbound(model, service, tables, in_mesh=in_mesh)
    return {url: table for url, table in tables.items() if table}


def merge_fragment(tables: dict[str, dict[str, Any]], fragment: Fragment) -> None:
    """Add a fragment as :func:`_outbound` would have: a listener address already taken by an
    earlier host keeps its listener, other resources are set by name."""
    for url, table in fragment.items():
        if url == LISTENER_TYPE:
            for name, listener in table.items():
                tables[url].setdefault(name, listener)
        else:
            tables[url].update(table)


def _outbound(
    model: MeshModel, service: Service, tables: dict[str, dict[str, Any]], *, in_mesh: bool
) -> None:
    """The client side of ``service``: listeners on its addresses, clusters, routes.

    ``in_mesh``: the node is a workload (it gave its namespace). A node that is not (``metamesh
    up``, a proxy started without ``--namespace``) is the one-hop router: it has no workload
    identity, so it keeps the server-side policies and gets no auto mutual TLS."""
    for port in service.ports:
        if is_redis(port):
            outbound_redis(model, service, port, tables)
            continue
        if not port.is_metaprotocol:
            continue
        options = {"advertise": advertise_map(model)} if kafka_port(port) else None
        for address in service.addresses:
            listener = build_listener(
                service, port, address, server_side=not in_mesh, codec_options=options
            )
            tables[LISTENER_TYPE].setdefault(listener.name, listener)
        for subset in ("", *(s.name for s in service.subsets)):
            tls = cluster_tls(model, service, port.number, subset, auto=in_mesh)
            cluster = build_cluster(service, port.number, subset, tls)
            tables[CLUSTER_TYPE][cluster.name] = cluster
            if cluster.type == cluster_pb2.Cluster.EDS:
                tables[ENDPOINT_TYPE][cluster.name] = build_load_assignment(
                    cluster.name, service, port, subset
                )
        routes = route_configuration(model, service, port.number)
        tables[ROUTE_TYPE][routes.name] = routes


def _inbound(port: InboundPort, tables: dict[str, dict[str, Any]]) -> None:
    """The server side of one workload port: listener, ``inbound|`` cluster and route."""
    listener = build_inbound_listener(port)
    tables[LISTENER_TYPE][listener.name] = listener
    cluster = cluster_pb2.Cluster(
        name=port.cluster,
        type=cluster_pb2.Cluster.STATIC,
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
    )
    cluster.load_assignment.cluster_name = port.cluster
    endpoint = cluster.load_assignment.endpoints.add().lb_endpoints.add().endpoint
    endpoint.address.CopyFrom(socket_address(APP_ADDRESS, port.app_port))
    tables[CLUSTER_TYPE][cluster.name] = cluster
    route = rc.Route(name="default", match=rc.RouteMatch(prefix="/"))
    route.route.cluster = port.cluster
    vhost = rc.VirtualHost(name="inbound", domains=["*"], routes=[route])
    tables[ROUTE_TYPE][port.cluster] = route_pb2.RouteConfiguration(
        name=port.cluster, virtual_hosts=[vhost]
    )


def _rate_limit_service_cluster(
    model: MeshModel, service: Service, tables: dict[str, dict[str, Any]]
) -> None:
    """The gRPC cluster a global rate limit names, when it is a known service's port.

    ``rateLimitService`` names a cluster (``outbound|<port>||<host>``); its port is usually a
    plain gRPC port, for which no MetaProtocol cluster exists, so it is emitted here (HTTP/2
    upstream, as Envoy needs for gRPC). Unknown names are left to whoever defines them.
    """
    limit = service.router.spec.global_rate_limit if service.router is not None else None
    if limit is None:
        return
    parts = limit.rate_limit_service.split("|")
    if len(parts) != 4 or parts[0] != "outbound" or not parts[1].isdigit():
        return
    target = model.services.get(parts[3])
    port = target.port(int(parts[1])) if target is not None else None
    if target is None or port is None or limit.rate_limit_service in tables[CLUSTER_TYPE]:
        return
    cluster = build_cluster(target, port.number, parts[2])
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.explicit_http_config.http2_protocol_options.SetInParent()
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Pack(options)
    tables[CLUSTER_TYPE][cluster.name] = cluster
    if cluster.type == cluster_pb2.Cluster.EDS:
        tables[ENDPOINT_TYPE][cluster.name] = build_load_assignment(
            cluster.name, target, port, parts[2]
        )


# --- listeners ---------------------------------------------------------------------------


def ads_config_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def codec_name(codec: str) -> str:
    """Aeraki's spelling for registered codecs; import paths (``pkg.mod:Class``) unchanged."""
    return codec if ":" in codec or codec.startswith(AERAKI_PREFIX) else AERAKI_PREFIX + codec


def meta_protocol_filters(service: Service, *, server_side: bool = True) -> list[dict[str, Any]]:
    """The listener's filters, in the order they run: authorization first (a denied request
    spends no rate limit token), then the local and the global rate limit, then the router.

    These server-side policies run where Aeraki runs them, on the inbound side, for a service
    with mesh workloads; a mesh workload's outbound listener of such a service has the router
    only (``server_side`` False). A service without any (no proxy beside its servers) keeps
    them on the outbound listener."""
    if not server_side and service.has_workloads:
        return [{"name": ROUTER_FILTER}]
    filters: list[dict[str, Any]] = []
    if service.authorization:
        filters.append({"name": RBAC_FILTER, "config": rbac_json(service.authorization)})
    spec = service.router.spec if service.router is not None else None
    if spec is not None and spec.local_rate_limit is not None:
        config = local_rate_limit_json(service.host, spec.local_rate_limit)
        filters.append({"name": LOCAL_RATELIMIT_FILTER, "config": config})
    if spec is not None and spec.global_rate_limit is not None:
        config = global_rate_limit_json(spec.global_rate_limit)
        filters.append({"name": GLOBAL_RATELIMIT_FILTER, "config": config})
    filters.append({"name": ROUTER_FILTER})
    return filters


def meta_protocol_proxy(
    service: Service,
    port: ServicePort,
    inbound: InboundPort | None = None,
    *,
    server_side: bool = True,
    codec_options: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``MetaProtocolProxy`` fields, in protojson spelling, as Aeraki writes them (the
    inbound side's stat prefix and route configuration are its ``inbound|`` cluster), with
    ``codec.options`` when given (Kafka's ``advertise``)."""
    name = inbound.cluster if inbound is not None else None
    codec: dict[str, Any] = {"name": codec_name(port.codec or "")}
    if codec_options:
        codec["options"] = dict(codec_options)
    return {
        "statPrefix": name or cluster_name(port.number, "", service.host),
        "applicationProtocol": port.application or "",
        "codec": codec,
        "rds": {
            "routeConfigName": name or route_config_name(service.host, port.number),
            "configSource": {"ads": {}, "resourceApiVersion": "V3"},
        },
        "metaProtocolFilters": kafka_filters(port)
        + meta_protocol_filters(service, server_side=server_side or inbound is not None),
    }


def typed_struct(type_url: str, value: Mapping[str, Any]) -> any_pb2.Any:
    struct = struct_pb2.Struct()
    struct.update(dict(value))
    packed = any_pb2.Any()
    packed.Pack(typed_struct_pb2.TypedStruct(type_url=type_url, value=struct))
    return packed


def build_listener(
    service: Service,
    port: ServicePort,
    address: str,
    *,
    server_side: bool = True,
    codec_options: Mapping[str, str] | None = None,
) -> listener_pb2.Listener:
    proxy = meta_protocol_proxy(service, port, server_side=server_side, codec_options=codec_options)
    return listener_pb2.Listener(
        name=f"{address}_{port.number}",
        address=socket_address(address, port.number),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name=META_PROTOCOL_FILTER,
                        typed_config=typed_struct(META_PROTOCOL_PROXY_TYPE, proxy),
                    )
                ]
            )
        ],
    )


def build_inbound_listener(port: InboundPort) -> listener_pb2.Listener:
    """``inbound_<address>_<port>``: one filter chain per transport the PeerAuthentication
    admits (see :mod:`metamesh.control.tls_contexts`)."""
    proxy = meta_protocol_proxy(port.service, port.port, port)
    listener = listener_pb2.Listener(
        name=f"inbound_{port.address}_{port.listen_port}",
        address=socket_address(port.address, port.listen_port),
        traffic_direction=base_pb2.INBOUND,
    )

    def chain(transport: str) -> listener_components_pb2.FilterChain:
        filters = [
            listener_components_pb2.Filter(
                name=META_PROTOCOL_FILTER,
                typed_config=typed_struct(META_PROTOCOL_PROXY_TYPE, proxy),
            )
        ]
        made = listener_components_pb2.FilterChain(filters=filters)
        if port.tls_mode != "DISABLE":
            made.filter_chain_match.transport_protocol = transport
        if transport == "tls":
            made.transport_socket.CopyFrom(downstream_mtls_socket())
        return made

    if port.tls_mode in ("STRICT", "PERMISSIVE"):
        listener.filter_chains.append(chain("tls"))
    if port.tls_mode in ("PERMISSIVE", "DISABLE"):
        listener.filter_chains.append(chain("raw_buffer"))
    if port.tls_mode == "PERMISSIVE":
        inspector = listener.listener_filters.add(name=TLS_INSPECTOR)
        inspector.typed_config.Pack(tls_inspector_pb2.TlsInspector())
    return listener


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=address, port_value=port)
    )


# --- clusters and endpoints --------------------------------------------------------------


def duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def build_cluster(
    service: Service, port: int, subset: str, tls: UpstreamTls | None = None
) -> cluster_pb2.Cluster:
    name = cluster_name(port, subset, service.host)
    policy = service.policy(port, subset)
    cluster = cluster_pb2.Cluster(
        name=name, lb_policy=cluster_pb2.Cluster.LbPolicy.Value(policy.lb_policy)
    )
    sni = f"outbound_.{port}_.{subset}_.{service.host}"
    socket = upstream_tls_socket(tls, sni) if tls is not None else None
    if socket is not None and tls is not None and tls.auto:
        add_auto_mtls_matches(cluster, socket)
    elif socket is not None:
        cluster.transport_socket.CopyFrom(socket)
    if service.resolution in ("DNS", "DNS_ROUND_ROBIN"):
        cluster.type = cluster_pb2.Cluster.STRICT_DNS
        service_port = service.port(port)
        assert service_port is not None
        cluster.load_assignment.CopyFrom(
            build_load_assignment(name, service, service_port, subset, dns_fallback=True)
        )
    else:
        cluster.type = cluster_pb2.Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(ads_config_source())
    if policy.connect_timeout is not None:
        cluster.connect_timeout.CopyFrom(duration(policy.connect_timeout))
    if policy.max_requests_per_connection is not None:
        cluster.max_requests_per_connection.value = policy.max_requests_per_connection
    if policy.minimum_ring_size is not None and policy.lb_policy == "RING_HASH":
        cluster.ring_hash_lb_config.minimum_ring_size.value = policy.minimum_ring_size
    _circuit_breakers(cluster, policy)
    _outlier_detection(cluster, policy)
    return cluster


def _circuit_breakers(cluster: cluster_pb2.Cluster, policy: ClusterPolicy) -> None:
    limits = {
        "max_connections": policy.max_connections,
        "max_pending_requests": policy.max_pending_requests,
        "max_requests": policy.max_requests,
        "max_retries": policy.max_retries,
    }
    if all(v is None for v in limits.values()):
        return
    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds()
    for key, value in limits.items():
        if value is not None:
            getattr(thresholds, key).value = value
    cluster.circuit_breakers.thresholds.append(thresholds)


def _outlier_detection(cluster: cluster_pb2.Cluster, policy: ClusterPolicy) -> None:
    od = policy.outlier
    if od is None:
        return
    out = outlier_detection_pb2.OutlierDetection()
    if od.consecutive_5xx is not None:
        out.consecutive_5xx.value = od.consecutive_5xx
        out.enforcing_consecutive_5xx.value = 100 if od.consecutive_5xx else 0
    else:
        out.enforcing_consecutive_5xx.value = 0
    if od.consecutive_gateway_errors is not None:
        out.consecutive_gateway_failure.value = od.consecutive_gateway_errors
        out.enforcing_consecutive_gateway_failure.value = (
            100 if od.consecutive_gateway_errors else 0
        )
    if od.consecutive_local_origin_failures is not None:
        out.consecutive_local_origin_failure.value = od.consecutive_local_origin_failures
    out.split_external_local_origin_errors = od.split_external_local_origin_errors
    if od.interval is not None:
        out.interval.CopyFrom(duration(od.interval))
    if od.base_ejection_time is not None:
        out.base_ejection_time.CopyFrom(duration(od.base_ejection_time))
    if od.max_ejection_percent is not None:
        out.max_ejection_percent.value = od.max_ejection_percent
    cluster.outlier_detection.CopyFrom(out)
    if od.min_health_percent is not None:
        cluster.common_lb_config.healthy_panic_threshold.CopyFrom(
            percent_pb2.Percent(value=float(od.min_health_percent))
        )


def build_load_assignment(
    name: str, service: Service, port: ServicePort, subset: str, *, dns_fallback: bool = False
) -> endpoint_pb2.ClusterLoadAssignment:
    """The endpoints of one cluster, grouped by locality (in first-seen order)."""
    groups: dict[str, list[endpoint_components_pb2.LbEndpoint]] = {}
    chosen = service.endpoints_for(subset)
    for ep in chosen:
        lb_endpoint = endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=socket_address(ep.address, ep.port_for(port))
            ),
            load_balancing_weight=wrappers_pb2.UInt32Value(value=ep.weight),
        )
        if ep.labels:
            lb_endpoint.metadata.filter_metadata["envoy.lb"].update(dict(ep.labels))
        if ep.service_account:  # a mesh workload: auto mTLS picks it (Istio's label)
            lb_endpoint.metadata.filter_metadata[TRANSPORT_SOCKET_MATCH].update(ISTIO_TLS_MODE)
        groups.setdefault(ep.locality, []).append(lb_endpoint)
    if dns_fallback and not chosen and not subset:
        groups[""] = [
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(
                    address=socket_address(service.host, port.number)
                )
            )
        ]
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    for locality, lb_endpoints in groups.items():
        group = cla.endpoints.add()
        if locality:
            region, _, rest = locality.partition("/")
            zone, _, sub_zone = rest.partition("/")
            group.locality.region, group.locality.zone = region, zone
            group.locality.sub_zone = sub_zone
        group.lb_endpoints.extend(lb_endpoints)
    return cla
