"""A MetaRoute's destinations as Envoy cluster names and weights (shared by every protocol).

Both of Envoy's protocol route tables (thrift_proxy's and dubbo_proxy's) send a route to one
cluster or to weighted clusters, and name clusters as metamesh does
(``outbound|<port>|<subset>|<host>``, :func:`metamesh.control.translate.cluster_name`), so the
cluster resources of the metamesh translation serve both. A destination of weight 0 takes no
traffic in either data plane and is left out (Envoy's thrift weights must be at least 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from metamesh.api import fqdn
from metamesh.api.metaprotocol import Destination, MetaRoute
from metamesh.control.translate import cluster_name


@dataclass(frozen=True, slots=True)
class Target:
    cluster: str
    weight: int


def destination_cluster(dst: Destination, port: int, namespace: str) -> str:
    """The cluster of one destination: its port, else the route's own port."""
    number = dst.port.number if dst.port and dst.port.number else port
    return cluster_name(number, dst.subset or "", fqdn(dst.host, namespace))


def route_targets(route: MetaRoute, port: int, namespace: str) -> list[Target]:
    """The clusters a route sends to, with their weights (one target: weight ignored)."""
    chosen = [d for d in route.route if d.destination is not None]
    targets = [
        Target(destination_cluster(d.destination, port, namespace), d.weight)
        for d in chosen
        if d.destination is not None
    ]
    if len(targets) > 1:
        targets = [t for t in targets if t.weight > 0]
    return targets
