"""Validation rules of RedisService and RedisDestination (errors name the field).

Aeraki's webhook checks little here; these rules catch what would otherwise be silently
odd at run time: a route without a destination, two catch-all routes or the same prefix twice
(the later one could never match), a mirror without a target, a RedisService without hosts.
"""

from __future__ import annotations

from collections.abc import Iterator

from metamesh.api.loader import Loaded
from metamesh.api.problems import FieldPath
from metamesh.api.redis import RedisDestination, RedisService

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
