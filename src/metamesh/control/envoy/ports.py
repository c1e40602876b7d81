"""Which listeners of the metamesh translation an Envoy node gets in Envoy's own filters.

:func:`envoy_ports` walks the model as :func:`metamesh.control.translate.translate` does
(outbound: the visible services' MetaProtocol ports on each address; inbound: the ports of
the endpoints the node fronts) and names each listener and route table, so the Envoy back end
can swap their MetaProtocol pieces without re-deriving addresses, filter chains or TLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metamesh.control.inbound import inbound_ports
from metamesh.control.model import MeshModel, Service, ServicePort
from metamesh.control.redis import is_redis
from metamesh.control.translate import route_config_name
from metamesh.xds.resources import ProxyNode

Tables = dict[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class EnvoyPort:
    """One listener of the metamesh translation that Envoy gets in its own filters."""

    service: Service
    port: ServicePort
    listener: str  # the listener's name in the metamesh translation
    routes: str  # the route configuration's name (metamesh's and Envoy's)
    stat_prefix: str
    inbound: bool


def envoy_ports(model: MeshModel, node: ProxyNode) -> list[EnvoyPort]:
    """The MetaProtocol listeners ``node`` has (outbound, then inbound), as translate makes them."""
    found: list[EnvoyPort] = []
    if node.outbound:
        for host in sorted(model.services):
            service = model.services[host]
            if not service.visible_to(node.namespace):
                continue
            for port in service.ports:
                if not port.is_metaprotocol or is_redis(port):
                    continue
                name = route_config_name(host, port.number)
                for address in service.addresses:
                    listener = f"{address}_{port.number}"
                    found.append(EnvoyPort(service, port, listener, name, name, False))
    for inbound in inbound_ports(model, node)[0]:
        listener = f"inbound_{inbound.address}_{inbound.listen_port}"
        name = inbound.cluster
        found.append(EnvoyPort(inbound.service, inbound.port, listener, name, name, True))
    return found
