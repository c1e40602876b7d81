"""Facts derived from one file's parsed set, kept while that very set object is held.

The incremental file source hands the same :class:`~metamesh.api.loader.ResourceSet` object for
a file until the file changes, so what the rechecks and the model rebuilds derive from a set
(its keys, hosts, kinds) is computed once per set object and looked up by identity afterwards.
:class:`SetFacts` is that memo, shared by both; :func:`changed_files` says which files' sets
differ between two loads, by the same identity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

from metamesh.api.loader import ResourceSet

F = TypeVar("F")


class SetFacts(Generic[F]):
    """``make(set)`` per set object, computed on first need; :meth:`prune` forgets the facts of
    sets no longer held once the memo has grown past twice the live sets (plus slack)."""

    def __init__(self, make: Callable[[ResourceSet], F]) -> None:
        self._make = make
        self._memo: dict[int, tuple[ResourceSet, F]] = {}

    def of(self, one: ResourceSet) -> F:
        found = self._memo.get(id(one))
        if found is None or found[0] is not one:  # an id reused by another object
            found = self._memo[id(one)] = (one, self._make(one))
        return found[1]

    def prune(self, live: Iterable[ResourceSet]) -> None:
        held = {id(s) for s in live}
        if len(self._memo) > 2 * len(held) + 64:
            self._memo = {k: v for k, v in self._memo.items() if k in held}


def changed_files(before: Mapping[str, ResourceSet], after: Mapping[str, ResourceSet]) -> list[str]:
    """Files added, removed or with another set object (by identity: no content compared)."""
    changed = [f for f, one in after.items() if before.get(f) is not one]
    changed += [f for f in before if f not in after]
    return changed
