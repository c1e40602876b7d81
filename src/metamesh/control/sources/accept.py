"""Which version of each file of a watched directory is in force: per-file acceptance.

A directory is loaded file by file (:func:`metamesh.api.loader.load_files`). A file is served
as it is now when it is valid *with the rest*: its own resources pass their checks and the
references across the set hold. Otherwise the file's last good version stays in force, or,
for a file that has never been valid (a new file, or a broken one at startup), nothing of it
is served. The rest of the directory is served either way, so a broken file never freezes the
route changes of the others, and a start with one broken file behaves like a later edit that
breaks it: the valid services are up and the broken file is reported.

Resources refer to each other across files (a MetaRouter names a ServiceEntry's subsets), so
holding one file back can break a reference in another. The choice is therefore made in
steps: first every file with errors of its own is held back (to its last good version or to
nothing); then, while the chosen set has reference errors, each file that has one steps down
too (current -> last good -> nothing). Every step moves at least one file down, so this ends;
the result has no errors. In the common case (no errors) the directory is checked once.

:func:`accept` keeps nothing itself: the caller (:class:`~.files.FileSource`) keeps the last
good versions between loads, and the checks, which may remember what they found
(:class:`~.rechecks.Rechecks` checks again only the files an edit concerns; the default
checks everything, every time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from metamesh.api.loader import ResourceSet
from metamesh.api.problems import Problem, sort_problems
from metamesh.control.sources.rechecks import FULL_CHECKS, Checks, merge


class Held(Enum):
    """What is in force for a file whose current version is not."""

    LAST_GOOD = "its last good version stays in force"
    NOTHING = "nothing from it is served until it is fixed"


@dataclass(frozen=True, slots=True)
class Acceptance:
    """The outcome of one load.

    ``problems``: every problem of the directory as it is now (what ``metamesh validate``
    prints); ``in_force``: the version served of each file (the next load's last good ones);
    ``held``: the files whose current version is not served, with the errors that held them
    (some may be reference errors met only in a step, so not in ``problems``); ``resources``:
    the merged set to build the model from.
    """

    problems: list[Problem]
    in_force: Mapping[str, ResourceSet]
    held: Mapping[str, tuple[Held, tuple[Problem, ...]]]

    @property
    def resources(self) -> ResourceSet:
        return merge(self.in_force.values())


def accept(
    current: Mapping[str, ResourceSet],
    last_good: Mapping[str, ResourceSet],
    checks: Checks = FULL_CHECKS,
) -> Acceptance:
    """The versions in force for the files ``current`` (file -> its set as loaded now).

    ``checks``: how the sets are checked; :class:`~.rechecks.Rechecks`, kept by the caller
    between loads, checks again only what changed (same result)."""
    own = checks.own(current)
    crossing = checks.references(current)
    problems = sort_problems([*own, *crossing])
    reasons: dict[str, list[Problem]] = {}
    for problem in own:
        if problem.is_error:
            reasons.setdefault(problem.file, []).append(problem)
    chosen: dict[str, ResourceSet | None] = {
        file: last_good.get(file) if file in reasons else loaded for file, loaded in current.items()
    }
    errors = [p for p in crossing if p.is_error] if not reasons else None
    while True:
        if errors is None:
            served = {file: one for file, one in chosen.items() if one is not None}
            errors = [p for p in checks.references(served) if p.is_error]
        blamed = {p.file for p in errors if chosen.get(p.file) is not None}
        if not blamed:
            break
        for problem in errors:
            if problem.file in blamed:
                reasons.setdefault(problem.file, []).append(problem)
        for file in blamed:
            stepped = last_good.get(file)
            fresh = chosen[file] is current[file] and stepped is not current[file]
            chosen[file] = stepped if fresh else None
        errors = None
    in_force = {file: one for file, one in chosen.items() if one is not None}
    held = {
        file: (
            Held.LAST_GOOD if chosen[file] is not None else Held.NOTHING,
            tuple(reasons[file]),
        )
        for file in current
        if chosen[file] is not current[file]
    }
    return Acceptance(problems, in_force, held)
