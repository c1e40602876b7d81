"""The model of a directory, rebuilt after an edit only for the hosts it concerns.

:func:`metamesh.control.model.build_model` reads the whole resource set. Most of it is per
host: a host's :class:`~metamesh.control.model.Service` depends on its ServiceEntries (the
first one in load order wins; the others are reported), its DestinationRule and MetaRouter
(the first of each), the address allocated to it when its entry has none, and the kinds read
across the set (:class:`~metamesh.control.model.ModelParts`: ApplicationProtocols,
WorkloadEntries, authorization policies; and the tables carried beside the services:
PeerAuthentications, the Redis kinds, Sidecars).

:class:`ModelRebuilds` keeps the services, their problems and the files declaring each host
between builds (file -> :class:`~metamesh.api.loader.ResourceSet`, in load order; an
unchanged file is the very same set object). After an edit it rebuilds only the hosts that
the changed files' old and new versions name, from those hosts' files alone
(:func:`~metamesh.control.model.build_services` on that part of the set), plus the hosts
whose allocated address moved (the allocation is redone only when the hosts without
addresses or the addresses taken changed). An edit of a file holding a PeerAuthentication,
Redis kind or Sidecar recomputes the parts from the files holding such kinds; one holding an
ApplicationProtocol, WorkloadEntry or authorization policy (read by every service) rebuilds
everything. The result equals a full build (the tests compare both on every case).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

from metamesh.api import (
    ApplicationProtocol,
    DestinationRule,
    DubboAuthorizationPolicy,
    MetaAuthorizationPolicy,
    MetaRouter,
    ServiceEntry,
    fqdn,
)
from metamesh.api.istio import WorkloadEntryResource
from metamesh.api.loader import ResourceSet
from metamesh.api.redis import RedisDestination, RedisService
from metamesh.api.security import PeerAuthentication
from metamesh.api.sidecar import Sidecar
from metamesh.control.model import (
    MeshModel,
    ModelParts,
    Service,
    ServiceMemo,
    allocate_addresses,
    assemble_model,
    build_model,
    build_services,
    model_parts,
)
from metamesh.control.sources.rechecks import merge
from metamesh.control.sources.set_facts import SetFacts, changed_files

Sets = Mapping[str, ResourceSet]
#: Read by every service's build: an edit of one rebuilds everything.
_SERVICE_WIDE = (
    ApplicationProtocol,
    WorkloadEntryResource,
    MetaAuthorizationPolicy,
    DubboAuthorizationPolicy,
)
#: Only in the model's tables beside the services.
_TABLES = (PeerAuthentication, RedisService, RedisDestination, Sidecar)


def full_build(sets: Sets) -> MeshModel:
    """The model of everything, built from scratch."""
    return build_model(merge(sets.values()))


class _SetFacts:
    """What a rebuild needs to know of one set, computed once per set object."""

    __slots__ = ("hosts", "service_wide", "tables", "taken", "unaddressed")

    def __init__(self, one: ResourceSet) -> None:
        resources = [item.resource for item in one.items]
        self.hosts = frozenset(h for r in resources for h in _hosts(r))
        self.service_wide = any(isinstance(r, _SERVICE_WIDE) for r in resources)
        self.tables = self.service_wide or any(isinstance(r, _TABLES) for r in resources)
        entries = [r for r in resources if isinstance(r, ServiceEntry)]
        self.unaddressed = tuple(
            fqdn(h, se.namespace) for se in entries if not se.spec.addresses for h in se.spec.hosts
        )
        self.taken = tuple(a for se in entries for a in se.spec.addresses)


def _addressing(sets: Iterable[_SetFacts]) -> tuple[Counter[str], Counter[str]]:
    """What ``sets`` add to the address allocation: hosts without addresses, addresses taken."""
    unaddressed: Counter[str] = Counter()
    taken: Counter[str] = Counter()
    for facts in sets:
        unaddressed.update(facts.unaddressed)
        taken.update(facts.taken)
    return unaddressed, taken


def _hosts(resource: object) -> Iterator[str]:
    """The hosts whose service ``resource`` takes part in."""
    if isinstance(resource, ServiceEntry):
        for host in resource.spec.hosts:
            yield fqdn(host, resource.namespace)
    elif isinstance(resource, DestinationRule) and resource.spec.host:
        yield fqdn(resource.spec.host, resource.namespace)
    elif isinstance(resource, MetaRouter) and resource.spec.hosts:
        yield fqdn(resource.spec.hosts[0], resource.namespace)


class ModelRebuilds:
    """Models built again only where an edit reaches; see the module docstring."""

    def __init__(self) -> None:
        self._facts: SetFacts[_SetFacts] = SetFacts(_SetFacts)
        self._sets: dict[str, ResourceSet] = {}
        self._files_by_host: dict[str, set[str]] = {}
        self._table_files: set[str] = set()
        self._unaddressed: Counter[str] = Counter()
        self._taken: Counter[str] = Counter()
        self._vips: dict[str, str] = {}
        self._parts: ModelParts | None = None
        self._services: dict[str, Service] = {}
        self._problems: dict[str, list[str]] = {}  # hosts with problems only
        self._memo = ServiceMemo()  # full builds reuse the services of unchanged resources
        self.full_builds = 0
        self.partial_builds = 0

    def build(self, sets: Sets) -> MeshModel:
        changed = changed_files(self._sets, sets)
        before = [self._facts_of(self._sets[f]) for f in changed if f in self._sets]
        after = [self._facts_of(sets[f]) for f in changed if f in sets]
        facts = [*before, *after]
        if self._parts is None or any(f.service_wide for f in facts):
            return self._build_all(sets)
        self.partial_builds += 1
        hosts = self._reindex(changed, sets)
        if _addressing(before) != _addressing(after):
            hosts |= self._allocate()
        position = {file: i for i, file in enumerate(sets)}
        if any(f.tables for f in facts):
            tables = sorted(self._table_files, key=position.__getitem__)
            self._parts = model_parts(merge(sets[f] for f in tables))
        files = {f for h in hosts for f in self._files_by_host.get(h, ())}
        part = merge(sets[f] for f in sorted(files, key=position.__getitem__))
        built = build_services(part, self._parts, self._vips)
        self._sets = dict(sets)
        self._update(hosts, built)
        self._prune_facts()
        return self._model()

    def _reindex(self, changed: list[str], sets: Sets) -> set[str]:
        """Index the changed files' new sets instead of their old ones; the hosts of both."""
        hosts: set[str] = set()
        for file in changed:
            old, new = self._sets.get(file), sets.get(file)
            if old is not None:
                self._unindex(file, old)
                hosts |= self._facts_of(old).hosts
            if new is not None:
                self._index(file, new)
                hosts |= self._facts_of(new).hosts
        return hosts

    def _build_all(self, sets: Sets) -> MeshModel:
        self.full_builds += 1
        self._sets = dict(sets)
        self._files_by_host, self._table_files = {}, set()
        self._unaddressed, self._taken = Counter(), Counter()
        for file, one in sets.items():
            self._index(file, one)
        resources = merge(sets.values())
        self._parts = model_parts(resources)
        self._vips = allocate_addresses(sorted(+self._unaddressed), taken=sorted(+self._taken))
        built = build_services(resources, self._parts, self._vips, self._memo)
        self._services = {host: service for host, (service, _) in built.items()}
        self._problems = {host: found for host, (_, found) in built.items() if found}
        self._prune_facts()
        return self._model()

    def _allocate(self) -> set[str]:
        """Allocate the addresses again; the hosts whose allocated address moved."""
        vips = allocate_addresses(sorted(+self._unaddressed), taken=sorted(+self._taken))
        moved = {h for h in vips.keys() | self._vips.keys() if vips.get(h) != self._vips.get(h)}
        self._vips = vips
        return moved

    def _update(self, hosts: set[str], built: Mapping[str, tuple[Service, list[str]]]) -> None:
        added = False
        for host in hosts:
            result = built.get(host)
            self._problems.pop(host, None)
            if result is None:
                self._services.pop(host, None)
                continue
            added |= host not in self._services
            self._services[host] = result[0]
            if result[1]:
                self._problems[host] = result[1]
        if added:
            self._services = {h: self._services[h] for h in sorted(self._services)}

    def _model(self) -> MeshModel:
        assert self._parts is not None
        problems = (p for host in sorted(self._problems) for p in self._problems[host])
        return assemble_model(self._services, problems, self._parts)

    def _index(self, file: str, one: ResourceSet) -> None:
        facts = self._facts_of(one)
        for host in facts.hosts:
            self._files_by_host.setdefault(host, set()).add(file)
        if facts.tables:
            self._table_files.add(file)
        self._unaddressed.update(facts.unaddressed)
        self._taken.update(facts.taken)

    def _unindex(self, file: str, one: ResourceSet) -> None:
        facts = self._facts_of(one)
        for host in facts.hosts:
            files = self._files_by_host.get(host)
            if files is not None:
                files.discard(file)
                if not files:
                    del self._files_by_host[host]
        self._table_files.discard(file)
        self._unaddressed.subtract(facts.unaddressed)
        self._taken.subtract(facts.taken)

    def _facts_of(self, one: ResourceSet) -> _SetFacts:
        return self._facts.of(one)

    def _prune_facts(self) -> None:
        self._facts.prune(self._sets.values())
