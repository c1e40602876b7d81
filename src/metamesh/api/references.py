"""Checks across the whole resource set: do the names resources use point at something?

- a route (or mirror) destination's host is declared by some ServiceEntry, its subset by a
  DestinationRule for that host, and its port, when given, is one of the service's ports;
- a ServiceEntry port name selects a protocol that resolves: ``tcp-metaprotocol-<app>-...``
  needs an ApplicationProtocol ``<app>`` (dubbo and thrift are built in);
- an ApplicationProtocol's codec is registered (:mod:`metamesh.codecs.registry`);
- RedisService / RedisDestination hosts are Redis services (:mod:`metamesh.api.redis_rules`);
- no two resources of one kind share a namespace and name; at most one MetaRouter per host
  (Aeraki honours only one); a MetaRouter's or DestinationRule's host has a ServiceEntry.

Host names are compared after Istio's short-name expansion (:func:`metamesh.api.base.fqdn`),
each in its own resource's namespace. exportTo visibility across namespaces is not checked.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from metamesh.api.base import fqdn
from metamesh.api.istio import DestinationRule, ServiceEntry
from metamesh.api.loader import Loaded, ResourceSet
from metamesh.api.metaprotocol import ApplicationProtocol, Destination, MetaRouter
from metamesh.api.problems import FieldPath, Problem
from metamesh.api.protocol import (
    METAPROTOCOL,
    PortProtocolError,
    application_codecs,
    protocol_for_port,
)
from metamesh.api.redis_rules import redis_references
from metamesh.codecs.registry import available_codecs, canonical_name


class _Index:
    """Services and destination rules by FQDN, and the application protocol table."""

    def __init__(self, resources: ResourceSet) -> None:
        self.services: dict[str, list[ServiceEntry]] = defaultdict(list)
        for se in resources.of_kind(ServiceEntry):
            for host in se.spec.hosts:
                self.services[fqdn(host, se.namespace)].append(se)
        self.rules: dict[str, list[DestinationRule]] = defaultdict(list)
        for dr in resources.of_kind(DestinationRule):
            self.rules[fqdn(dr.spec.host, dr.namespace)].append(dr)
        self.app_codecs = application_codecs(resources.of_kind(ApplicationProtocol))

        self._subsets: dict[str, frozenset[str]] = {}
        self._ports: dict[str, frozenset[int]] = {}

    def subsets(self, host: str) -> frozenset[str]:
        """Computed once per host (10,000 routers name their hosts ten times each)."""
        found = self._subsets.get(host)
        if found is None:
            rules = self.rules.get(host, [])
            found = self._subsets[host] = frozenset(s.name for dr in rules for s in dr.spec.subsets)
        return found

    def ports(self, host: str) -> frozenset[int]:
        found = self._ports.get(host)
        if found is None:
            entries = self.services.get(host, [])
            found = self._ports[host] = frozenset(p.number for se in entries for p in se.spec.ports)
        return found


class _RouterMemo:
    """A router's reference problems, kept per router object with what they depended on.

    They depend on the router and on the index entries of the hosts it names (their
    ServiceEntries and DestinationRules, by identity: the sources hand unchanged files'
    resources over as the same frozen objects) and on which router claimed its host first;
    when all of that is the same, the problems of the last check are reused. So a directory
    of 10,000 routers re-checks after an edit only the routers that name what changed."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[Loaded, tuple[object, ...], list[Problem]]] = {}
        self._next: dict[int, tuple[Loaded, tuple[object, ...], list[Problem]]] = {}
        self._hosts: dict[int, tuple[MetaRouter, tuple[str, ...]]] = {}

    def problems(
        self, item: Loaded, router: MetaRouter, index: _Index, routed: dict[str, str]
    ) -> list[Problem]:
        hosts = self._named(router)
        own = fqdn(router.spec.hosts[0], router.namespace) if len(router.spec.hosts) == 1 else ""
        depends = (
            routed.get(own),
            *(
                (tuple(map(id, index.services.get(h, ()))), tuple(map(id, index.rules.get(h, ()))))
                for h in hosts
            ),
        )
        hit = self._last.get(id(item))
        if hit is not None and hit[0] is item and hit[1] == depends:
            found = hit[2]
            if own:
                routed.setdefault(own, router.ref)
        else:
            found = list(_router(item, router, index, routed))
        self._next[id(item)] = (item, depends, found)
        return found

    def _named(self, router: MetaRouter) -> tuple[str, ...]:
        hit = self._hosts.get(id(router))
        if hit is None or hit[0] is not router:
            named = {fqdn(h, router.namespace) for h in router.spec.hosts[:1]}
            for route in router.spec.routes:
                targets = [w.destination for w in route.route] + [route.mirror]
                named |= {fqdn(d.host, router.namespace) for d in targets if d and d.host}
            hit = self._hosts[id(router)] = (router, tuple(sorted(named)))
        return hit[1]

    def finish(self) -> None:
        self._last, self._next = self._next, {}
        live = {id(entry[0].resource) for entry in self._last.values()}
        self._hosts = {k: v for k, v in self._hosts.items() if k in live}


_routers = _RouterMemo()


class _PortMemo:
    """A ServiceEntry's port problems depend on it and the application protocols only."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[Loaded, dict[str, str], list[Problem]]] = {}
        self._next: dict[int, tuple[Loaded, dict[str, str], list[Problem]]] = {}

    def problems(self, item: Loaded, se: ServiceEntry, index: _Index) -> list[Problem]:
        hit = self._last.get(id(item))
        if hit is not None and hit[0] is item and hit[1] == index.app_codecs:
            found = hit[2]
        else:
            found = list(_service_ports(item, se, index))
        self._next[id(item)] = (item, index.app_codecs, found)
        return found

    def finish(self) -> None:
        self._last, self._next = self._next, {}


_ports = _PortMemo()


def check_references(resources: ResourceSet) -> list[Problem]:
    index = _Index(resources)
    problems = list(_duplicates(resources))
    routed_hosts: dict[str, str] = {}
    for item in resources.items:
        resource = item.resource
        if isinstance(resource, MetaRouter):
            problems.extend(_routers.problems(item, resource, index, routed_hosts))
        elif isinstance(resource, ServiceEntry):
            problems.extend(_ports.problems(item, resource, index))
        elif isinstance(resource, ApplicationProtocol):
            problems.extend(_codec(item, resource))
        elif isinstance(resource, DestinationRule) and resource.spec.host:
            host = fqdn(resource.spec.host, resource.namespace)
            if host not in index.services:
                message = f"no ServiceEntry declares host {host!r}"
                problems.append(item.problem(("spec", "host"), message, "warning"))
    problems.extend(redis_references(resources))
    _routers.finish()
    _ports.finish()
    return problems


def _duplicates(resources: ResourceSet) -> Iterator[Problem]:
    seen: dict[tuple[str, str], Loaded] = {}
    for item in resources.items:
        key = (item.resource.KIND, item.resource.ref)
        first = seen.setdefault(key, item)
        if first is not item:
            where = f"{first.origin.file}:{first.origin.line_of()}"
            yield item.problem(
                ("metadata", "name"), f"duplicate resource (first defined at {where})"
            )


def _router(
    item: Loaded, router: MetaRouter, index: _Index, routed_hosts: dict[str, str]
) -> Iterator[Problem]:
    if len(router.spec.hosts) == 1:
        host = fqdn(router.spec.hosts[0], router.namespace)
        if host not in index.services:
            message = f"no ServiceEntry declares host {host!r}; this router applies to nothing"
            yield item.problem(("spec", "hosts", 0), message, "warning")
        elif host in routed_hosts:
            message = f"MetaRouter {routed_hosts[host]} already routes {host!r}; only one is used"
            yield item.problem(("spec", "hosts", 0), message, "warning")
        routed_hosts.setdefault(host, router.ref)
    for i, route in enumerate(router.spec.routes):
        path: FieldPath = ("spec", "routes", i)
        for j, weighted in enumerate(route.route):
            if weighted.destination is not None:
                where = (*path, "route", j, "destination")
                yield from _destination(item, where, weighted.destination, router, index)
        if route.mirror is not None:
            yield from _destination(item, (*path, "mirror"), route.mirror, router, index)


def _destination(
    item: Loaded, path: FieldPath, dest: Destination, router: MetaRouter, index: _Index
) -> Iterator[Problem]:
    if not dest.host:
        return
    host = fqdn(dest.host, router.namespace)
    if host not in index.services:
        yield item.problem((*path, "host"), f"no ServiceEntry declares host {host!r}")
        return
    if dest.subset and dest.subset not in index.subsets(host):
        known = ", ".join(sorted(index.subsets(host))) or "none"
        message = f"no DestinationRule for {host!r} defines subset {dest.subset!r} (known: {known})"
        yield item.problem((*path, "subset"), message)
    if dest.port is not None and dest.port.number not in index.ports(host):
        known = ", ".join(str(p) for p in sorted(index.ports(host))) or "none"
        message = f"port {dest.port.number} is not a port of {host!r} (ports: {known})"
        yield item.problem((*path, "port", "number"), message)


def _service_ports(item: Loaded, se: ServiceEntry, index: _Index) -> Iterator[Problem]:
    for i, port in enumerate(se.spec.ports):
        path: FieldPath = ("spec", "ports", i, "name")
        try:
            protocol = protocol_for_port(port.name, index.app_codecs)
        except PortProtocolError as exc:
            yield item.problem(path, str(exc))
            continue
        if protocol is None:
            continue
        if not port.name.lower().startswith("tcp-"):
            message = (
                f"port name {port.name!r} selects {protocol.protocol} but does not start with "
                "'tcp-', so Istio would not treat the port as opaque TCP"
            )
            yield item.problem(path, message, "warning")
        if protocol.protocol == METAPROTOCOL and protocol.codec not in available_codecs():
            message = (
                f"application protocol {protocol.application!r} uses codec "
                f"{protocol.codec!r}, which is not registered"
            )
            yield item.problem(path, message)


def _codec(item: Loaded, ap: ApplicationProtocol) -> Iterator[Problem]:
    if not ap.spec.codec:
        return
    name = canonical_name(ap.spec.codec)
    known = available_codecs()
    if name not in known:
        message = f"unknown codec {ap.spec.codec!r} (registered: {', '.join(known)})"
        yield item.problem(("spec", "codec"), message)
