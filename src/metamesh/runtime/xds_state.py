"""The proxy side of state-of-the-world ADS, without I/O: ACK/NACK, subscriptions, assembly.

:class:`ClientState` is fed the :class:`DiscoveryResponse` s of one ADS stream and returns what
to do: the requests to send and, when the resources it holds form a complete, consistent
config, the proxy :class:`~metamesh.proxy.config.Snapshot` to apply. The asyncio adapter
(:mod:`metamesh.runtime.xds_client`) only moves messages, so every rule here is tested
without a socket.

- **Subscriptions.** CDS and LDS are wildcard. EDS asks for the clusters of type ``EDS`` in
  the accepted CDS, RDS for the route configurations the accepted listeners name. Every
  request of a type carries the names currently wanted, so an ACK also carries a subscription
  change the server may have skipped as stale (it ignores requests with an old nonce).
- **Validation per response.** A response replaces its type's table in a *candidate* set
  (the other three types as last accepted); the candidate is converted by the injected
  ``convert`` (:func:`metamesh.control.to_proxy.to_snapshot`) and checked by ``check`` (codecs
  resolve, route tables compile). An error NACKs the response with the message as
  ``error_detail`` and the previous table stays; otherwise the response is ACKed with its
  version.
- **Consistency.** The converted candidate is only handed out when it is complete: CDS and LDS
  received, a ClusterLoadAssignment for every EDS cluster, every listener's route
  configuration present and every cluster a route names present. Until then the proxy keeps
  serving its last config (during a push the server sends CDS, EDS, LDS, RDS one by one).
- **Reconnects.** :meth:`start_stream` forgets the per-stream nonces but keeps the accepted
  tables and their versions, so the first requests on a new stream say what the proxy runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2

from metamesh.proxy.config import Snapshot
from metamesh.xds.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    ProxyNode,
    XdsResources,
)

Convert = Callable[[XdsResources, str], Snapshot]
Check = Callable[[Snapshot], None]
DiscoveryRequest = Any  # envoy.service.discovery.v3.DiscoveryRequest (untyped generated code)
DiscoveryResponse = Any

MESSAGE_CLASSES: Mapping[str, Any] = MappingProxyType(
    {
        CLUSTER_TYPE: cluster_pb2.Cluster,
        ENDPOINT_TYPE: endpoint_pb2.ClusterLoadAssignment,
        LISTENER_TYPE: listener_pb2.Listener,
        ROUTE_TYPE: route_pb2.RouteConfiguration,
    }
)
INVALID_ARGUMENT = 3  # google.rpc.Code


def node_message(node: ProxyNode) -> Any:
    """An Envoy ``Node`` with Istio's ``NAMESPACE``, ``LABELS``, ``SERVICE_ACCOUNT`` and
    ``INSTANCE_IPS`` (comma-separated, as Istio's agent sends them) metadata keys, and
    ``METAMESH_OUTBOUND: "false"`` for an inbound-only proxy."""
    from envoy.config.core.v3 import base_pb2

    message = base_pb2.Node(id=node.node_id)
    if node.namespace is not None:
        message.metadata.update({"NAMESPACE": node.namespace})
    if node.labels:
        message.metadata.update({"LABELS": dict(node.labels)})
    if node.service_account:
        message.metadata.update({"SERVICE_ACCOUNT": node.service_account})
    if node.instance_ips:
        message.metadata.update({"INSTANCE_IPS": ",".join(node.instance_ips)})
    if not node.outbound:
        message.metadata.update({"METAMESH_OUTBOUND": "false"})
    if node.admin:  # for the control plane's mesh dashboard
        message.metadata.update({"METAMESH_ADMIN": node.admin})
    return message


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one response asks of the adapter."""

    requests: tuple[DiscoveryRequest, ...] = ()
    snapshot: Snapshot | None = None
    nack: str | None = None


@dataclass(slots=True)
class TypeState:
    accepted: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    received: bool = False
    nonce: str = ""
    names: frozenset[str] = frozenset()
    subscribed: bool = False


class ClientState:
    """One proxy's view of the control plane; see the module docstring."""

    def __init__(self, node: ProxyNode, convert: Convert, check: Check | None = None) -> None:
        self.node = node
        self._node_message = node_message(node)
        self._convert = convert
        self._check = check
        self.types = {url: TypeState() for url in MESSAGE_CLASSES}
        self.nacks = 0

    # --- stream lifecycle -------------------------------------------------------------

    def start_stream(self) -> list[DiscoveryRequest]:
        """The first requests on a new stream: CDS and LDS wildcard, EDS/RDS names held."""
        out = []
        for url in (CLUSTER_TYPE, LISTENER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE):
            state = self.types[url]
            state.nonce = ""
            wildcard = url in (CLUSTER_TYPE, LISTENER_TYPE)
            state.subscribed = wildcard or bool(state.names)
            if state.subscribed:
                out.append(self._request(url))
        return out

    # --- responses --------------------------------------------------------------------

    def on_response(self, response: DiscoveryResponse) -> Outcome:
        url = response.type_url
        state = self.types.get(url)
        if state is None:
            return Outcome()  # a type this client never asked for
        state.nonce = response.nonce
        try:
            table = self._unpack(url, response.resources)
            candidate = {u: s.accepted for u, s in self.types.items()}
            candidate[url] = table
            snapshot = self._convert(_resources(candidate), response.version_info)
            if self._check is not None:
                self._check(_present_part(snapshot))
        except Exception as exc:  # config boundary: any failure is a NACK, counted
            self.nacks += 1
            message = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            return Outcome((self._request(url, error=message),), nack=message)
        state.accepted, state.version, state.received = table, response.version_info, True
        requests = [self._request(url)]
        requests.extend(self._resubscribe(snapshot))
        return Outcome(tuple(requests), snapshot if self.complete(snapshot) else None)

    def _unpack(self, url: str, resources: Iterable[Any]) -> dict[str, Any]:
        cls = MESSAGE_CLASSES[url]
        table: dict[str, Any] = {}
        for packed in resources:
            message = cls()
            if not packed.Unpack(message):
                raise ValueError(f"resource of type {packed.type_url} in a {url} response")
            name = message.cluster_name if url == ENDPOINT_TYPE else message.name
            table[name] = message
        return table

    def _resubscribe(self, snapshot: Snapshot) -> list[DiscoveryRequest]:
        wanted = {
            ENDPOINT_TYPE: frozenset(self.eds_clusters()),
            ROUTE_TYPE: frozenset(x.route_config_name for x in snapshot.listeners.values()),
        }
        out = []
        for url, names in wanted.items():
            state = self.types[url]
            if names != state.names or (names and not state.subscribed):
                state.names = names
                state.subscribed = True
                out.append(self._request(url))
        return out

    def eds_clusters(self) -> list[str]:
        accepted = self.types[CLUSTER_TYPE].accepted
        return [n for n, c in accepted.items() if c.type == cluster_pb2.Cluster.EDS]

    def complete(self, snapshot: Snapshot) -> bool:
        """Every resource the config references is present (see the module docstring)."""
        if not (self.types[CLUSTER_TYPE].received and self.types[LISTENER_TYPE].received):
            return False
        endpoints = self.types[ENDPOINT_TYPE].accepted
        if any(name not in endpoints for name in self.eds_clusters()):
            return False
        if any(
            x.route_config_name not in snapshot.route_configs for x in snapshot.listeners.values()
        ):
            return False
        return all(
            name in snapshot.clusters
            for x in snapshot.listeners.values()
            for name in route_clusters(snapshot, x.route_config_name)
        )

    def _request(self, url: str, error: str | None = None) -> DiscoveryRequest:
        state = self.types[url]
        request = discovery_pb2.DiscoveryRequest(
            node=self._node_message,
            type_url=url,
            version_info=state.version,
            response_nonce=state.nonce,
            resource_names=sorted(state.names),
        )
        if error is not None:
            request.error_detail.code = INVALID_ARGUMENT
            request.error_detail.message = error
        return request


def route_clusters(snapshot: Snapshot, route_config_name: str) -> set[str]:
    """Every cluster a route configuration sends to (primary, weighted and mirrors)."""
    out: set[str] = set()
    for route in snapshot.route_configs[route_config_name].routes:
        action = route.route
        if action.cluster:
            out.add(action.cluster)
        out.update(c.name for c in action.weighted_clusters)
        out.update(m.cluster for m in action.request_mirror_policies)
    return out


def _resources(tables: Mapping[str, Mapping[str, Any]]) -> XdsResources:
    return XdsResources(MappingProxyType({u: MappingProxyType(dict(t)) for u, t in tables.items()}))


def _present_part(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` without listeners whose route configuration has not arrived yet."""
    listeners = [
        x for x in snapshot.listeners.values() if x.route_config_name in snapshot.route_configs
    ]
    return Snapshot.build(
        listeners,
        list(snapshot.clusters.values()),
        list(snapshot.route_configs.values()),
        version=snapshot.version,
    )


def resources_to_snapshot(
    to_snapshot: Callable[..., Snapshot],
) -> Convert:
    """Adapt :func:`metamesh.control.to_proxy.to_snapshot` to the :data:`Convert` shape."""

    def convert(resources: XdsResources, version: str) -> Snapshot:
        return to_snapshot(
            resources.listeners.values(),
            resources.clusters.values(),
            resources.endpoints,
            resources.routes.values(),
            version=version,
        )

    return convert
