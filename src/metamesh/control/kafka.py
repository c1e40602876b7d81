"""Kafka ports (``tcp-kafka*``): served by the Kafka codec, with broker addresses kept in the mesh.

A ``tcp-kafka`` port becomes a MetaProtocol port whose codec is ``kafka`` (see
:func:`kafka_port`), so everything MetaProtocol gives applies to it: MetaRouter routes on the
codec's metadata (``topic``, ``client_id``, ``api``...), authorization, rate limits, metrics;
and :func:`kafka_filters` adds ``metamesh.filters.command_stats`` to its listeners, keyed by the
codec's ``command`` (``Produce/orders``, ``Metadata``, ...).

Kafka clients connect to the brokers the Metadata response lists, not to the address they
bootstrapped from. The proxy rewrites those addresses (the codec's ``advertise`` option), and
:func:`advertise_map` builds that option from the model: each endpoint of each Kafka service
(``address:port``, what that broker must advertise) maps to the service's listener (its first
address and the port). One broker per service: a ServiceEntry host with several endpoints
would balance a client's requests across brokers, which Kafka does not allow (a partition's
requests must reach its leader); docs/kafka.md shows a ServiceEntry per broker.
"""

from __future__ import annotations

from typing import Any

from metamesh.control.model import MeshModel, ServicePort
from metamesh.control.redis import COMMAND_STATS_FILTER

KAFKA = "kafka"


def kafka_port(port: ServicePort) -> bool:
    return port.codec == KAFKA


def kafka_filters(port: ServicePort) -> list[dict[str, Any]]:
    """Filters a Kafka listener runs first: per-API (and per API and topic) request counts,
    what Envoy's kafka_broker filter always gives (refused requests counted too)."""
    return [{"name": COMMAND_STATS_FILTER}] if kafka_port(port) else []


def advertise_map(model: MeshModel) -> str:
    """``broker:port=listener:port,...`` for every Kafka service endpoint of the model."""
    pairs: set[str] = set()
    for service in model.services.values():
        if not service.addresses:
            continue
        for port in service.ports:
            if not kafka_port(port):
                continue
            listener = f"{service.addresses[0]}:{port.number}"
            for endpoint in service.endpoints:
                pairs.add(f"{endpoint.address}:{endpoint.port_for(port)}={listener}")
    return ",".join(sorted(pairs))
