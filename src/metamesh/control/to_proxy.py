"""Received xDS resources -> the proxy's own config snapshot (:mod:`metamesh.proxy.config`).

This is the reverse of :mod:`metamesh.control.translate`, for the proxy's xDS client: it reads
Envoy v3 messages (whoever produced them) and builds the frozen dataclasses the proxy core runs
on. Anything it cannot use raises :class:`XdsConversionError` with a message naming the
resource, which the client sends back as a NACK's ``error_detail``.

- Listener: the ``envoy.filters.network.meta_protocol_proxy`` filter's ``TypedStruct``
  (``udpa.type.v1`` or ``xds.type.v3``) gives codec (``codec.name`` or
  ``protocol.codec.name``), ``rds.routeConfigName`` (or an inline ``routeConfig.name``),
  ``statPrefix``, the filter names and the configs of the filters that take one (local and
  global rate limit, RBAC; see :mod:`metamesh.control.filter_configs`).
- Listener and Cluster TLS: the ``envoy.transport_sockets.tls`` transport sockets as
  :mod:`metamesh.control.tls_contexts` reads them (listener ``tls_mode`` STRICT/PERMISSIVE,
  cluster ``tls_mode``/``tls_sni``/``tls_subject_alt_names``/``tls_files``).
- Cluster: lb policy (``MAGLEV`` runs as ``RING_HASH``, anything else unknown as round robin),
  connect timeout (Envoy's 5 s default when unset), the default-priority circuit-breaker
  thresholds (Envoy's 1024 default per unset limit), outlier detection (below), endpoints
  from the matching ClusterLoadAssignment (EDS) or the inline ``load_assignment``; labels from
  the endpoint's ``filter_metadata["envoy.lb"]``.
- RouteConfiguration: every route of every virtual host, in order; header matchers become
  metadata matchers (``exact``/``prefix``/``safe_regex``/``present``, also the ``string_match``
  forms, ``invert_match`` kept); ``hash_policy`` header names; mirror percentages from
  ``runtime_fraction``; ``request/response_headers_to_add`` become mutations; ``timeout``,
  ``retry_policy`` (``retry_on`` must name metamesh conditions; Envoy's default of one retry
  when ``num_retries`` is unset) and, from ``metadata.filter_metadata["metamesh"]``,
  ``retryNonIdempotent`` and ``fault``.

Outlier detection: the proxy counts every failure kind (error responses, resets, connect
failures, timeouts) against one ``consecutive_errors`` threshold, so the smallest *enforced*
Envoy threshold is taken: ``consecutive_5xx`` (Envoy's default 5, enforced at 100% unless
``enforcing_consecutive_5xx`` is 0), ``consecutive_gateway_failure`` (only when its
enforcement is set above 0, Envoy's default being 0) and ``consecutive_local_origin_failure``
(with ``split_external_local_origin_errors``). Nothing enforced means no detection. Interval,
base ejection time and max ejection percent keep Envoy's defaults (10 s, 30 s, 10%).
Envoy's ``max_requests_per_connection`` is carried (0 = unlimited): an upstream connection that
has carried that many requests takes no more, drains and closes (a fresh one takes over).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import json_format, struct_pb2
from udpa.type.v1 import typed_struct_pb2 as udpa_typed_struct
from xds.type.v3 import typed_struct_pb2 as xds_typed_struct

from metamesh.codecs.message import ErrorKind
from metamesh.control.filter_configs import parse_duration, proxy_filter_config
from metamesh.control.redis_options import (
    OptionsError,
    cluster_protocol_options,
    listener_codec_options,
)
from metamesh.control.tls_contexts import (
    TRANSPORT_SOCKET_MATCH,
    TlsConfigError,
    client_tls,
    listener_tls_mode,
)
from metamesh.proxy import config as cfg

META_PROTOCOL_FILTER = "envoy.filters.network.meta_protocol_proxy"
DEFAULT_CONNECT_TIMEOUT = 5.0
_DENOMINATORS = {
    percent_pb2.FractionalPercent.HUNDRED: 100,
    percent_pb2.FractionalPercent.TEN_THOUSAND: 10_000,
    percent_pb2.FractionalPercent.MILLION: 1_000_000,
}
_LB = {
    cluster_pb2.Cluster.ROUND_ROBIN: cfg.LbPolicy.ROUND_ROBIN,
    cluster_pb2.Cluster.RANDOM: cfg.LbPolicy.RANDOM,
    cluster_pb2.Cluster.LEAST_REQUEST: cfg.LbPolicy.LEAST_REQUEST,
    cluster_pb2.Cluster.RING_HASH: cfg.LbPolicy.RING_HASH,
    cluster_pb2.Cluster.MAGLEV: cfg.LbPolicy.RING_HASH,
}


class XdsConversionError(ValueError):
    """An xDS resource the proxy cannot run; the message names it."""


def to_snapshot(
    listeners: Iterable[Any],
    clusters: Iterable[Any],
    load_assignments: Mapping[str, Any],
    route_configs: Iterable[Any],
    version: str = "0",
) -> cfg.Snapshot:
    """A proxy snapshot from Listener, Cluster, ClusterLoadAssignment and RouteConfiguration."""
    return cfg.Snapshot.build(
        [to_listener(x) for x in listeners],
        [to_cluster(c, load_assignments.get(c.name)) for c in clusters],
        [to_route_configuration(r) for r in route_configs],
        version=version,
    )


# --- listeners ---------------------------------------------------------------------------


def typed_struct_value(packed: Any, where: str) -> dict[str, Any]:
    """The ``value`` of a packed ``TypedStruct`` (either package) as a plain dict."""
    for cls in (udpa_typed_struct.TypedStruct, xds_typed_struct.TypedStruct):
        if packed.Is(cls.DESCRIPTOR):
            message = cls()
            packed.Unpack(message)
            value: dict[str, Any] = json_format.MessageToDict(message.value)
            return value
    raise XdsConversionError(f"{where}: typed_config is {packed.type_url}, expected a TypedStruct")


def to_listener(listener: Any) -> cfg.Listener:
    where = f"Listener {listener.name!r}"
    chains = [
        chain
        for chain in listener.filter_chains
        if any(f.name == META_PROTOCOL_FILTER for f in chain.filters)
    ]
    found = [f for chain in chains for f in chain.filters if f.name == META_PROTOCOL_FILTER]
    if not found:
        raise XdsConversionError(f"{where}: no {META_PROTOCOL_FILTER} filter")
    try:
        tls_mode = listener_tls_mode(listener, chains)
    except TlsConfigError as e:
        raise XdsConversionError(str(e)) from None
    proxy = typed_struct_value(found[0].typed_config, where)
    codec = (proxy.get("protocol") or {}).get("codec") or proxy.get("codec") or {}
    if not codec.get("name"):
        raise XdsConversionError(f"{where}: MetaProtocolProxy has no codec name")
    routes = (proxy.get("rds") or {}).get("routeConfigName") or (
        proxy.get("routeConfig") or {}
    ).get("name")
    if not routes:
        raise XdsConversionError(f"{where}: MetaProtocolProxy has no rds.routeConfigName")
    items = proxy.get("metaProtocolFilters") or []
    filters = tuple(f.get("name", "") for f in items)
    configs = []
    for i, item in enumerate(items):
        at = f"{where}: metaProtocolFilters[{i}] ({item.get('name', '')}).config"
        try:
            config = proxy_filter_config(item.get("name", ""), item.get("config"), at)
        except ValueError as e:
            raise XdsConversionError(str(e)) from None
        if config is not None:
            configs.append((item["name"], config))
    socket = listener.address.socket_address
    extra: dict[str, Any] = {}
    if "maxFrameSize" in codec:
        extra["max_frame_size"] = int(codec["maxFrameSize"])
    if codec.get("options"):
        try:
            extra["codec_options"] = listener_codec_options(codec["options"], where)
        except OptionsError as e:
            raise XdsConversionError(str(e)) from None
    if proxy.get("idleTimeout") is not None:
        try:
            idle = parse_duration(proxy["idleTimeout"], f"{where}: MetaProtocolProxy.idleTimeout")
        except ValueError as e:
            raise XdsConversionError(str(e)) from None
        if idle < 0:
            raise XdsConversionError(f"{where}: MetaProtocolProxy.idleTimeout is negative")
        extra["idle_timeout"] = idle  # 0 disables it, as in Envoy; absent: the proxy's default
    if proxy.get("maxConnections") is not None:
        cap = proxy["maxConnections"]
        if not isinstance(cap, (int, float)) or cap != int(cap) or cap < 0:
            raise XdsConversionError(
                f"{where}: MetaProtocolProxy.maxConnections must be a whole number >= 0"
            )
        extra["max_connections"] = int(cap)  # TypedStruct numbers arrive as floats
    return cfg.Listener(
        name=listener.name,
        address=socket.address,
        port=socket.port_value,
        codec=codec["name"],
        route_config_name=routes,
        stat_prefix=proxy.get("statPrefix", ""),
        filters=filters or ("aeraki.meta_protocol.filters.router",),
        filter_configs=tuple(configs),
        tls_mode=tls_mode,
        **extra,
    )


# --- clusters ----------------------------------------------------------------------------


def to_cluster(cluster: Any, assignment: Any | None) -> cfg.Cluster:
    try:
        protocol_options = cluster_protocol_options(cluster)
    except OptionsError as e:
        raise XdsConversionError(str(e)) from None
    if assignment is None and cluster.type != cluster_pb2.Cluster.EDS:
        assignment = cluster.load_assignment  # EDS not received yet: no endpoints until it is
    thresholds = next(
        (t for t in cluster.circuit_breakers.thresholds if t.priority == 0),
        None,
    )
    breakers = cfg.CircuitBreakers()
    if thresholds is not None:
        defaults = cfg.CircuitBreakers()
        breakers = cfg.CircuitBreakers(
            max_connections=_u32(thresholds, "max_connections", defaults.max_connections),
            max_pending_requests=_u32(
                thresholds, "max_pending_requests", defaults.max_pending_requests
            ),
            max_requests=_u32(thresholds, "max_requests", defaults.max_requests),
        )
    return cfg.Cluster(
        name=cluster.name,
        endpoints=to_endpoints(assignment) if assignment is not None else (),
        lb_policy=_LB.get(cluster.lb_policy, cfg.LbPolicy.ROUND_ROBIN),
        circuit_breakers=breakers,
        connect_timeout=cluster.connect_timeout.ToNanoseconds() / 1e9
        if cluster.HasField("connect_timeout")
        else DEFAULT_CONNECT_TIMEOUT,
        outlier_detection=to_outlier_detection(cluster.outlier_detection)
        if cluster.HasField("outlier_detection")
        else None,
        max_requests_per_connection=cluster.max_requests_per_connection.value or None
        if cluster.HasField("max_requests_per_connection")
        else None,
        protocol_options=protocol_options,
        **_tls_fields(cluster),
    )


def _tls_fields(cluster: Any) -> dict[str, Any]:
    """The cluster's ``UpstreamTlsContext`` as the proxy's ``tls_*`` fields."""
    try:
        tls = client_tls(cluster)
    except TlsConfigError as e:
        raise XdsConversionError(str(e)) from None
    if tls is None:
        return {}
    return {
        "tls_mode": tls.mode,
        "tls_sni": tls.sni,
        "tls_subject_alt_names": tls.subject_alt_names,
        "tls_files": (tls.client_certificate, tls.private_key, tls.ca_certificates),
        "tls_endpoint_match": tls.endpoint_match,
    }


def to_outlier_detection(od: Any) -> cfg.OutlierDetection | None:
    """Envoy's outlier detection as the proxy's (see the module docstring)."""
    thresholds = []
    if _u32(od, "enforcing_consecutive_5xx", 100) > 0:
        thresholds.append(_u32(od, "consecutive_5xx", 5))
    if _u32(od, "enforcing_consecutive_gateway_failure", 0) > 0:
        thresholds.append(_u32(od, "consecutive_gateway_failure", 5))
    if (
        od.split_external_local_origin_errors
        and _u32(od, "enforcing_consecutive_local_origin_failure", 100) > 0
    ):
        thresholds.append(_u32(od, "consecutive_local_origin_failure", 5))
    thresholds = [t for t in thresholds if t > 0]
    if not thresholds:
        return None
    defaults = cfg.OutlierDetection()
    return cfg.OutlierDetection(
        consecutive_errors=min(thresholds),
        interval=_seconds(od, "interval", defaults.interval),
        base_ejection_time=_seconds(od, "base_ejection_time", defaults.base_ejection_time),
        max_ejection_percent=float(
            _u32(od, "max_ejection_percent", int(defaults.max_ejection_percent))
        ),
    )


def _seconds(message: Any, field: str, default: float) -> float:
    if not message.HasField(field):
        return default
    return float(getattr(message, field).ToNanoseconds() / 1e9)


def _u32(message: Any, field: str, default: int) -> int:
    return int(getattr(message, field).value) if message.HasField(field) else default


def to_endpoints(assignment: Any) -> tuple[cfg.Endpoint, ...]:
    out = []
    for group in assignment.endpoints:
        for lb in group.lb_endpoints:
            socket = lb.endpoint.address.socket_address
            meta = lb.metadata.filter_metadata if lb.HasField("metadata") else {}
            labels = meta.get("envoy.lb")
            transport = meta.get(TRANSPORT_SOCKET_MATCH)
            out.append(
                cfg.Endpoint(
                    address=socket.address,
                    port=socket.port_value,
                    weight=lb.load_balancing_weight.value
                    if lb.HasField("load_balancing_weight")
                    else 1,
                    labels=_labels(labels),
                    transport_match=_labels(transport),
                )
            )
    return tuple(out)


def _labels(struct: struct_pb2.Struct | None) -> tuple[tuple[str, str], ...]:
    if struct is None:
        return ()
    return tuple(sorted((k, str(v)) for k, v in json_format.MessageToDict(struct).items()))


# --- routes ------------------------------------------------------------------------------


def to_route_configuration(config: Any) -> cfg.RouteConfiguration:
    return cfg.RouteConfiguration(
        name=config.name,
        routes=tuple(
            to_route(route, f"RouteConfiguration {config.name!r}")
            for vhost in config.virtual_hosts
            for route in vhost.routes
        ),
    )


def to_matcher(header: Any, where: str) -> cfg.MetadataMatcher:
    kind = header.WhichOneof("header_match_specifier")
    name, invert = header.name, header.invert_match
    if kind == "exact_match":
        return cfg.MetadataMatcher(name, cfg.MatchKind.EXACT, header.exact_match, invert)
    if kind == "prefix_match":
        return cfg.MetadataMatcher(name, cfg.MatchKind.PREFIX, header.prefix_match, invert)
    if kind == "safe_regex_match":
        regex = header.safe_regex_match.regex
        return cfg.MetadataMatcher(name, cfg.MatchKind.SAFE_REGEX, regex, invert)
    if kind == "present_match":
        return cfg.MetadataMatcher(name, cfg.MatchKind.PRESENT, "", invert == header.present_match)
    if kind == "string_match":
        sm = header.string_match
        which = sm.WhichOneof("match_pattern")
        if which == "exact":
            return cfg.MetadataMatcher(name, cfg.MatchKind.EXACT, sm.exact, invert)
        if which == "prefix":
            return cfg.MetadataMatcher(name, cfg.MatchKind.PREFIX, sm.prefix, invert)
        if which == "safe_regex":
            return cfg.MetadataMatcher(name, cfg.MatchKind.SAFE_REGEX, sm.safe_regex.regex, invert)
    raise XdsConversionError(f"{where}: header matcher {name!r} uses unsupported {kind}")


def to_route(route: Any, where: str) -> cfg.Route:
    where = f"{where} route {route.name!r}"
    action = route.route
    mirrors = tuple(
        cfg.RequestMirrorPolicy(m.cluster, _percent(m)) for m in action.request_mirror_policies
    )
    meta = route_metadata(route)
    return cfg.Route(
        name=route.name,
        match=tuple(to_matcher(h, where) for h in route.match.headers),
        route=cfg.RouteAction(
            cluster=action.cluster,
            weighted_clusters=tuple(
                cfg.WeightedCluster(c.name, c.weight.value)
                for c in action.weighted_clusters.clusters
            ),
            hash_policy=tuple(
                h.header.header_name for h in action.hash_policy if h.HasField("header")
            ),
            request_mirror_policies=mirrors,
            timeout=_seconds(action, "timeout", 0.0) or None,
            retry_policy=to_retry_policy(action, meta, where)
            if action.HasField("retry_policy")
            else None,
        ),
        request_mutation=tuple(
            (h.header.key, h.header.value) for h in route.request_headers_to_add
        ),
        response_mutation=tuple(
            (h.header.key, h.header.value) for h in route.response_headers_to_add
        ),
        fault=to_fault(meta["fault"], f"{where} fault") if meta.get("fault") else None,
    )


def route_metadata(route: Any) -> dict[str, Any]:
    """The route's ``filter_metadata["metamesh"]`` as a dict (empty when absent)."""
    if not route.HasField("metadata") or "metamesh" not in route.metadata.filter_metadata:
        return {}
    value: dict[str, Any] = json_format.MessageToDict(route.metadata.filter_metadata["metamesh"])
    return value


def to_retry_policy(action: Any, meta: Mapping[str, Any], where: str) -> cfg.RetryPolicy:
    policy = action.retry_policy
    retry_on = tuple(x.strip() for x in policy.retry_on.split(",") if x.strip())
    unknown = [x for x in retry_on if x not in cfg.RETRY_ON_VALUES]
    if unknown:
        raise XdsConversionError(
            f"{where}: retry_on {', '.join(unknown)} not supported "
            f"(metamesh retries on {', '.join(cfg.RETRY_ON_VALUES)})"
        )
    default = cfg.RetryPolicy()
    back = policy.retry_back_off
    return cfg.RetryPolicy(
        num_retries=_u32(policy, "num_retries", 1),
        retry_on=retry_on or default.retry_on,
        per_try_timeout=_seconds(policy, "per_try_timeout", 0.0) or None,
        backoff_base=_seconds(back, "base_interval", default.backoff_base),
        backoff_max=_seconds(back, "max_interval", 0.0) or None,
        retry_non_idempotent=bool(meta.get("retryNonIdempotent", False)),
    )


def to_fault(fault: Mapping[str, Any], where: str) -> cfg.FaultInjection:
    """metamesh's ``fault`` route metadata (:func:`metamesh.control.routes.fault_json`)."""
    delay = fault.get("delay")
    abort = fault.get("abort")
    try:
        return cfg.FaultInjection(
            delay=cfg.FaultDelay(
                parse_duration(delay["fixedDelay"], f"{where}.delay.fixedDelay"),
                float(delay.get("percentage", 100.0)),
            )
            if delay and "fixedDelay" in delay
            else None,
            abort=cfg.FaultAbort(
                ErrorKind(str(abort.get("errorKind", ErrorKind.FAULT_ABORT.value)).lower()),
                str(abort.get("message") or cfg.FaultAbort().message),
                float(abort.get("percentage", 100.0)),
            )
            if abort
            else None,
        )
    except ValueError as e:
        raise XdsConversionError(f"{where}: {e}") from None


def _percent(mirror: Any) -> float:
    if not mirror.HasField("runtime_fraction"):
        return 100.0
    fraction = mirror.runtime_fraction.default_value
    return float(fraction.numerator * 100.0 / _DENOMINATORS.get(fraction.denominator, 100))


def route_extensions(route: Any) -> dict[str, Any]:
    """metamesh's route extensions as carried by :mod:`metamesh.control.routes`.

    ``{"timeout": s, "retries": {...}, "fault": {...}, "retryNonIdempotent": bool}``, only
    the keys present.
    """
    out: dict[str, Any] = {}
    action = route.route
    if action.HasField("timeout"):
        out["timeout"] = action.timeout.ToNanoseconds() / 1e9
    if action.HasField("retry_policy"):
        policy = action.retry_policy
        retries: dict[str, Any] = {
            "attempts": policy.num_retries.value,
            "retryOn": [x for x in policy.retry_on.split(",") if x],
        }
        if policy.HasField("per_try_timeout"):
            retries["perTryTimeout"] = policy.per_try_timeout.ToNanoseconds() / 1e9
        out["retries"] = retries
    meta = route.metadata.filter_metadata.get("metamesh") if route.HasField("metadata") else None
    if meta is not None:
        out.update(json_format.MessageToDict(meta))
    return out


__all__ = [
    "XdsConversionError",
    "route_extensions",
    "to_cluster",
    "to_listener",
    "to_route_configuration",
    "to_snapshot",
]
