"""The xDS resource tables the server serves: type URLs, a node's identity, a snapshot.

These live in the xds layer, below the control plane, so that the ADS server depends only on
the shape of what it serves; :mod:`metamesh.control.translate` produces them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
#: The route tables of Envoy's own protocol filters, served to Envoy nodes over their RDS.
THRIFT_ROUTE_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.thrift_proxy.v3.RouteConfiguration"
)
DUBBO_ROUTE_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3.MultipleRouteConfiguration"
)
TYPE_URLS = (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    THRIFT_ROUTE_TYPE,
    DUBBO_ROUTE_TYPE,
)
#: ``ProxyNode.data_plane`` values.
METAMESH_DATA_PLANE = "metamesh"
ENVOY_DATA_PLANE = "envoy"


@dataclass(frozen=True, slots=True)
class ProxyNode:
    """Who asks: Envoy ``node.id``, the workload namespace (None = all) and its labels.

    A workload's proxy also says its service account and addresses (Istio's node metadata
    ``SERVICE_ACCOUNT`` and ``INSTANCE_IPS``), by which the control plane finds the endpoints
    it fronts (:mod:`metamesh.control.inbound`). ``outbound`` False (metadata
    ``METAMESH_OUTBOUND: "false"``) asks for the inbound side only: on one host without
    network namespaces, two workloads' proxies cannot both listen on the services' addresses.
    ``data_plane`` is ``"envoy"`` for a real Envoy (its ``user_agent_name``, or node metadata
    ``METAMESH_DATA_PLANE: envoy``), which gets Envoy's native filters
    (:mod:`metamesh.control.envoy`), else ``"metamesh"``. ``listen_address`` (metadata
    ``METAMESH_LISTEN_ADDRESS``) makes an Envoy node's outbound listeners bind that address
    instead of the services' own, so an Envoy can run beside another proxy on one host.
    ``admin`` (metadata ``METAMESH_ADMIN``, ``HOST:PORT``) is where the proxy's admin answers,
    for the control plane's mesh dashboard (:mod:`metamesh.telemetry.aggregator`).
    """

    node_id: str = ""
    namespace: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    service_account: str | None = None
    instance_ips: tuple[str, ...] = ()
    outbound: bool = True
    data_plane: str = METAMESH_DATA_PLANE
    listen_address: str | None = None
    admin: str | None = None


@dataclass(frozen=True, slots=True)
class XdsResources:
    """``{type_url: {name: message}}`` for the four resource types, names sorted."""

    by_type: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))

    def of(self, type_url: str) -> Mapping[str, Any]:
        return self.by_type.get(type_url, MappingProxyType({}))

    @property
    def listeners(self) -> Mapping[str, Any]:
        return self.of(LISTENER_TYPE)

    @property
    def clusters(self) -> Mapping[str, Any]:
        return self.of(CLUSTER_TYPE)

    @property
    def endpoints(self) -> Mapping[str, Any]:
        return self.of(ENDPOINT_TYPE)

    @property
    def routes(self) -> Mapping[str, Any]:
        return self.of(ROUTE_TYPE)
