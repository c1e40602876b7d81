"""Validation rules of RedisService and RedisDestination (errors name the field).

Aeraki's webhook checks little here; these rules catch what would otherwise be silently
odd at run time: a route without a destination, two catch-all routes or the same prefix twice
(the later one could never match), a mirror without a target, a RedisService without hosts;
and, across the resource set (:func:`redis_references`), hosts that are not Redis services,
and a ``readPolicy`` reading from replicas where none are known (no destination in
``mode: CLUSTER``, whose ``CLUSTER SLOTS`` names the replicas).
"""

from __future__ import annotations

from collections.abc import Iterator

from metamesh.api.base import fqdn
from metamesh.api.istio import ServiceEntry
from metamesh.api.loader import Loaded, ResourceSet
from metamesh.api.problems import FieldPath, Problem
from metamesh.api.redis import RedisDestination, RedisDestinationRef, RedisService

Finding = tuple[FieldPath, str, bool]  # (path, message, is_warning)


def redis_service_rule(item: Loaded) -> Iterator[Finding]:
    service = item.resource
    assert isinstance(service, RedisService)
    spec = service.spec
    if not spec.host:
        yield ("spec", "host"), "a RedisService needs at least one host", False
    seen: dict[str | None, int] = {}
    for i, route in enumerate(spec.redis):
        path: FieldPath = ("spec", "redis", i)
        if route.route is None or not route.route.host:
            yield (*path, "route", "host"), "a route needs a destination host", False
        key = route.match.key if route.match is not None else None
        prefix = key.prefix if key is not None else None
        if prefix in seen:
            what = "catch-all route" if prefix is None else f"route for prefix {prefix!r}"
            yield path, f"a second {what} (routes[{seen[prefix]}] already has it)", False
        seen.setdefault(prefix, i)
        for j, mirror in enumerate(route.mirror):
            if mirror.route is None or not mirror.route.host:
                yield (*path, "mirror", j, "route", "host"), "a mirror needs a host", False
    for i, fault in enumerate(spec.faults):
        if fault.type == "ERROR" and fault.delay:
            yield ("spec", "faults", i, "delay"), "an ERROR fault has no delay", True


def redis_destination_rule(item: Loaded) -> Iterator[Finding]:
    dest = item.resource
    assert isinstance(dest, RedisDestination)
    if not dest.spec.host:
        yield ("spec", "host"), "a RedisDestination needs a host", False


def redis_references(resources: ResourceSet) -> Iterator[Problem]:
    """Hosts named by RedisServices and RedisDestinations are ServiceEntry hosts with a
    ``tcp-redis*`` port (a RedisService for any other host is never applied), and a route's
    or mirror's ``port`` is a Redis port of its host."""
    yield from _read_policies(resources)
    redis_ports: dict[str, set[int]] = {}
    for se in resources.of_kind(ServiceEntry):
        numbers = {p.number for p in se.spec.ports if _is_redis_port(p.name)}
        for host in se.spec.hosts:
            redis_ports.setdefault(fqdn(host, se.namespace), set()).update(numbers)
    for item in resources.items:
        resource = item.resource
        if isinstance(resource, RedisService):
            for i, host in enumerate(resource.spec.host):
                if not redis_ports.get(fqdn(host, resource.namespace)):
                    yield item.problem(("spec", "host", i), _not_redis(host), "warning")
            for i, route in enumerate(resource.spec.redis):
                targets: list[tuple[FieldPath, RedisDestinationRef | None]]
                targets = [(("spec", "redis", i, "route"), route.route)]
                targets += [
                    (("spec", "redis", i, "mirror", j, "route"), m.route)
                    for j, m in enumerate(route.mirror)
                ]
                for path, target in targets:
                    if target is None or not target.host:
                        continue
                    ports = redis_ports.get(fqdn(target.host, resource.namespace))
                    if not ports:
                        yield item.problem((*path, "host"), _not_redis(target.host))
                    elif target.port and target.port not in ports:
                        message = f"port {target.port} is not a Redis port of {target.host!r}"
                        yield item.problem((*path, "port"), message)
        elif (
            isinstance(resource, RedisDestination)
            and resource.spec.host
            and not redis_ports.get(fqdn(resource.spec.host, resource.namespace))
        ):
            yield item.problem(("spec", "host"), _not_redis(resource.spec.host), "warning")


def _read_policies(resources: ResourceSet) -> Iterator[Problem]:
    """A RedisService whose ``readPolicy`` reads from replicas (not ``MASTER``) is applied in
    cluster mode only: a warning when none of the hosts it sends to is a cluster."""
    destinations = resources.of_kind(RedisDestination)
    clusters = {fqdn(d.spec.host, d.namespace) for d in destinations if d.cluster_mode}
    for item in resources.items:
        rs = item.resource
        if not isinstance(rs, RedisService) or rs.spec.settings is None:
            continue
        if not rs.spec.settings.reads_replicas:
            continue
        policy = rs.spec.settings.read_policy
        targets = [fqdn(h, rs.namespace) for h in rs.spec.host]
        targets += [fqdn(r.route.host, rs.namespace) for r in rs.spec.redis if r.route]
        if not clusters.intersection(targets):
            message = (
                f"not applied: readPolicy {policy} reads from replicas, which only a "
                "destination in mode: CLUSTER knows (from CLUSTER SLOTS); none of this "
                "service's hosts or routes is one, so every read goes to the endpoint the "
                "load balancer picks"
            )
            yield item.problem(("spec", "settings", "readPolicy"), message, "warning")


def _is_redis_port(name: str) -> bool:
    parts = name.split("-")
    return len(parts) > 1 and parts[1].lower() == "redis"


def _not_redis(host: str) -> str:
    return f"no ServiceEntry declares host {host!r} with a tcp-redis port"
