"""The Redis part of the mesh model: RedisService and RedisDestination by host.

Kept apart from :mod:`metamesh.control.model` so that the general model only carries one
field (:class:`RedisTables`); :mod:`metamesh.control.redis` translates it. Hosts are made
fully qualified the Istio way (``redis`` in namespace ``ns`` is
``redis.ns.svc.cluster.local``); when two resources name the same host, the first in
(namespace, name) order wins and the other is reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from metamesh.api.base import fqdn
from metamesh.api.loader import ResourceSet
from metamesh.api.redis import RedisDestination, RedisService


@dataclass(frozen=True, slots=True)
class RedisTables:
    services: Mapping[str, RedisService] = field(default_factory=lambda: MappingProxyType({}))
    destinations: Mapping[str, RedisDestination] = field(
        default_factory=lambda: MappingProxyType({})
    )
    problems: tuple[str, ...] = ()


def redis_tables(resources: ResourceSet) -> RedisTables:
    problems: list[str] = []
    services: dict[str, RedisService] = {}
    for rs in sorted(resources.of_kind(RedisService), key=lambda r: (r.namespace, r.name)):
        for host in rs.spec.host:
            key = fqdn(host, rs.namespace)
            if key in services:
                problems.append(
                    f"RedisService {rs.ref}: host {key} already has RedisService "
                    f"{services[key].ref}; ignored"
                )
                continue
            services[key] = rs
    destinations: dict[str, RedisDestination] = {}
    for rd in sorted(resources.of_kind(RedisDestination), key=lambda r: (r.namespace, r.name)):
        key = fqdn(rd.spec.host, rd.namespace)
        if key in destinations:
            problems.append(
                f"RedisDestination {rd.ref}: host {key} already has RedisDestination "
                f"{destinations[key].ref}; ignored"
            )
            continue
        destinations[key] = rd
    return RedisTables(MappingProxyType(services), MappingProxyType(destinations), tuple(problems))
