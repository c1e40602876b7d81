"""The checks of a directory, redone after an edit only for the files it concerns.

:func:`~metamesh.control.sources.accept.accept` needs two checks of the files it weighs
(file -> :class:`~metamesh.api.loader.ResourceSet`, in load order): each resource's own
problems (:func:`metamesh.api.validate.check_resources`) and the references across the set
(:func:`metamesh.api.references.check_references`). :class:`FullChecks` runs them over
everything, every time (what ``metamesh validate`` does). :class:`Rechecks` keeps, between
calls, each file's problems and which *keys* its resources touch, and after an edit runs the
same two functions on a small part of the set only:

- a file's own problems depend on its set alone, so they are kept per file while its set
  is the same object (an unchanged file's is, from one load to the next); the exception is an
  authorization policy, whose warnings look at every ServiceEntry and WorkloadEntry: a file
  holding one is checked again against everything when such a resource changed anywhere;
- a file's reference problems depend on the resources that share a key with it: the
  ``(kind, namespace/name)`` of each resource (duplicates, first one wins), the hosts a
  ServiceEntry declares, a DestinationRule configures and a MetaRouter claims or routes to.
  After an edit, the *affected* files are the changed ones (added, removed or replaced) and
  every file sharing a key with their old or new version; :func:`check_references` runs on
  those plus every file sharing a key with them (so each affected resource sees all it
  refers to, in load order) and its problems replace the affected files' problems;
- ApplicationProtocols and the Redis kinds are read across the whole set: the files holding
  them are in every such run, and an edit of one checks everything again.

So an edit of one service among 10,000 checks that service's file and the few that name its
hosts, and the result is the same as a full check (the tests compare both on every case).
The problems come grouped by file (the files in no particular order, each file's in the
order the checks found them): :func:`~.accept.accept` sorts them, and reads them per file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from metamesh.api import ApplicationProtocol, MetaRouter, ServiceEntry, fqdn
from metamesh.api.authz import DubboAuthorizationPolicy, MetaAuthorizationPolicy
from metamesh.api.base import Resource
from metamesh.api.istio import DestinationRule, WorkloadEntryResource
from metamesh.api.loader import ResourceSet
from metamesh.api.problems import Problem
from metamesh.api.redis import RedisDestination, RedisService
from metamesh.api.references import check_references
from metamesh.api.validate import check_resources
from metamesh.control.sources.set_facts import SetFacts, changed_files

Key = tuple[str, ...]
Sets = Mapping[str, ResourceSet]
#: Kinds read across the whole set by the reference check.
_GLOBAL = (ApplicationProtocol, RedisService, RedisDestination)
#: What an authorization policy's own warnings look at (besides the policy).
_AUTHZ = (MetaAuthorizationPolicy, DubboAuthorizationPolicy)
_AUTHZ_INPUTS = (*_AUTHZ, ServiceEntry, WorkloadEntryResource)


class Checks(Protocol):
    """The two checks :func:`~.accept.accept` makes of the files it weighs."""

    def own(self, sets: Sets) -> list[Problem]: ...

    def references(self, sets: Sets) -> list[Problem]: ...


def merge(sets: Iterable[ResourceSet]) -> ResourceSet:
    merged = ResourceSet()
    for one in sets:
        merged.extend(one)
    return merged


class FullChecks:
    """Both checks over everything, every time."""

    def own(self, sets: Sets) -> list[Problem]:
        return check_resources(merge(sets.values()))

    def references(self, sets: Sets) -> list[Problem]:
        return check_references(merge(sets.values()))


FULL_CHECKS = FullChecks()


def resource_keys(resource: Resource) -> Iterator[Key]:
    """What the reference check relates ``resource`` to other resources by."""
    yield ("name", resource.KIND, resource.ref)
    namespace = resource.namespace
    if isinstance(resource, ServiceEntry):
        for host in resource.spec.hosts:
            yield ("host", fqdn(host, namespace))
    elif isinstance(resource, DestinationRule) and resource.spec.host:
        yield ("host", fqdn(resource.spec.host, namespace))
    elif isinstance(resource, MetaRouter):
        for host in resource.spec.hosts[:1]:
            yield ("host", fqdn(host, namespace))
        for route in resource.spec.routes:
            for target in [w.destination for w in route.route] + [route.mirror]:
                if target is not None and target.host:
                    yield ("host", fqdn(target.host, namespace))


class _SetFacts:
    """What the checks need to know of one set, computed once per set object."""

    __slots__ = ("authz", "authz_input", "global_kind", "keys")

    def __init__(self, one: ResourceSet) -> None:
        resources = [item.resource for item in one.items]
        self.keys = frozenset(k for r in resources for k in resource_keys(r))
        self.global_kind = any(isinstance(r, _GLOBAL) for r in resources)
        self.authz = any(isinstance(r, _AUTHZ) for r in resources)
        self.authz_input = any(isinstance(r, _AUTHZ_INPUTS) for r in resources)


class Rechecks:
    """Both checks, redone only where an edit reaches; see the module docstring."""

    def __init__(self) -> None:
        self._facts: SetFacts[_SetFacts] = SetFacts(_SetFacts)
        # own problems: the sets last checked, the problems of the files that have some
        self._own_sets: dict[str, ResourceSet] = {}
        self._own: dict[str, list[Problem]] = {}
        self._authz_files: set[str] = set()  # files holding an authorization policy
        # reference problems: the sets last checked, their keys' files, problems per file
        self._sets: dict[str, ResourceSet] = {}
        self._files_by_key: dict[Key, set[str]] = {}
        self._global_files: set[str] = set()
        self._crossing: dict[str, list[Problem]] = {}
        self.full_runs = 0  #: reference checks of everything (the first, a global change)
        self.partial_runs = 0  #: reference checks of a part

    # --- own problems --------------------------------------------------------------------

    def own(self, sets: Sets) -> list[Problem]:
        changed = changed_files(self._own_sets, sets)
        redo_authz = any(
            self._facts_of(one).authz_input
            for file in changed
            for one in (self._own_sets.get(file), sets.get(file))
            if one is not None
        )
        for file in changed:
            if file in sets and self._facts_of(sets[file]).authz:
                self._authz_files.add(file)
            else:
                self._authz_files.discard(file)
        redo = set(changed) | (self._authz_files if redo_authz else set())
        everything: list[Resource] | None = None
        for file in redo:
            self._own.pop(file, None)
            one = sets.get(file)
            if one is None:
                continue
            authz = file in self._authz_files
            if authz and everything is None:
                everything = [i.resource for s in sets.values() for i in s.items]
            found = check_resources(one, everything if authz else None)
            if found:
                self._own[file] = found
        self._own_sets = dict(sets)
        self._prune_facts()
        return [p for found in self._own.values() for p in found]

    # --- reference problems --------------------------------------------------------------

    def references(self, sets: Sets) -> list[Problem]:
        changed = changed_files(self._sets, sets)
        before = [self._sets[f] for f in changed if f in self._sets]
        after = [sets[f] for f in changed if f in sets]
        if not self._sets or any(self._facts_of(s).global_kind for s in (*before, *after)):
            return self._check_all(sets)
        self.partial_runs += 1
        affected = set(changed) | self._global_files
        for key in self._reindex(changed, sets):
            affected |= self._files_by_key.get(key, set())
        position = {file: i for i, file in enumerate(sets)}
        around = self._around(affected, sets) & position.keys()
        part = merge(sets[f] for f in sorted(around, key=position.__getitem__))
        for file in affected:
            self._crossing.pop(file, None)
        for problem in check_references(part):
            if problem.file in affected:
                self._crossing.setdefault(problem.file, []).append(problem)
        self._sets = dict(sets)
        self._prune_facts()
        return [p for found in self._crossing.values() for p in found]

    def _reindex(self, changed: list[str], sets: Sets) -> set[Key]:
        """Index the changed files' new sets instead of their old ones; the keys of both."""
        touched: set[Key] = set()
        for file in changed:
            old, new = self._sets.get(file), sets.get(file)
            if old is not None:
                self._unindex(file, old)
                touched |= self._facts_of(old).keys
            if new is not None:
                self._index(file, new)
                touched |= self._facts_of(new).keys
        return touched

    def _around(self, affected: set[str], sets: Sets) -> set[str]:
        """``affected`` and every file sharing a key with one of them: all they refer to."""
        around = set(affected)
        for file in affected:
            one = sets.get(file)
            if one is not None:
                for key in self._facts_of(one).keys:
                    around |= self._files_by_key[key]
        return around

    def _check_all(self, sets: Sets) -> list[Problem]:
        self.full_runs += 1
        self._files_by_key = {}
        self._global_files = set()
        self._crossing = {}
        for file, one in sets.items():
            self._index(file, one)
        problems = check_references(merge(sets.values()))
        for problem in problems:
            self._crossing.setdefault(problem.file, []).append(problem)
        self._sets = dict(sets)
        self._prune_facts()
        return [p for found in self._crossing.values() for p in found]

    def _index(self, file: str, one: ResourceSet) -> None:
        facts = self._facts_of(one)
        for key in facts.keys:
            self._files_by_key.setdefault(key, set()).add(file)
        if facts.global_kind:
            self._global_files.add(file)

    def _unindex(self, file: str, one: ResourceSet) -> None:
        facts = self._facts_of(one)
        for key in facts.keys:
            files = self._files_by_key.get(key)
            if files is not None:
                files.discard(file)
                if not files:
                    del self._files_by_key[key]
        self._global_files.discard(file)

    # --- per-set facts -------------------------------------------------------------------

    def _facts_of(self, one: ResourceSet) -> _SetFacts:
        return self._facts.of(one)

    def _prune_facts(self) -> None:
        self._facts.prune((*self._sets.values(), *self._own_sets.values()))
