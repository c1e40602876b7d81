"""The file source: a directory of YAML manifests, watched, turned into mesh models.

:class:`FileSource` loads every ``*.yaml``/``*.yml`` under a directory, file by file
(:func:`metamesh.api.loader.load_files`), decides which version of each file is in force
(:func:`~metamesh.control.sources.accept.accept`: a file with errors keeps its last good
version, or is left out if it never had one, and the rest is served), builds the
:class:`~metamesh.control.model.MeshModel` and hands it to ``on_model`` (normally
:meth:`metamesh.xds.server.AdsServer.set_model`). The first load and every later one follow the
same rule, so ``metamesh up`` with one broken file serves the other services at once.

What is reported, as ``file:line: severity: Kind ns/name: field.path: message`` lines:

- every error, at each load (the errors are that load's status), then one line per file held
  back saying what is in force for it instead;
- warnings (unsupported fields, a rule that can never match, ...) and notes (kinds skipped)
  once each: a reload logs only those that are new since the previous load (the line number
  is not part of the identity, so an edit that moves a warning does not repeat it);
- ``config N back in force`` when a load has no errors after one that had.

A directory that does not exist is :class:`ConfigDirectoryError` when the source is made, so a
command can print it and exit; one removed while watched is reported and the last config stays.

Loading is bounded by ``limits`` (:class:`~metamesh.api.limits.LoadLimits`): a file too large,
with too many documents, or with a document whose YAML aliases expand too far is an error of
that file (its last good version stays in force, like any other error); a directory with more
than ``max_resources`` resources is refused whole: parsing stops there, the error names the
file where the limit was passed, and the model in force stays.

The files are kept between loads (:class:`~.watched_files.WatchedFiles`). Watching uses
``watchfiles`` (inotify on Linux): its thread looks every ``step_ms`` and hands the changes
over once a step brought no new one (or ``debounce_ms`` after the first), so an edit is seen
``step_ms`` to twice that after it; 10 ms (instead of 30) took ~25 ms off every edit for
~1.5-2.5 ms more CPU per idle second. :meth:`FileSource.load` is then given the paths reported and
reads only those files; a path it cannot pin on a file (a directory created, removed or
renamed) makes it walk the whole directory, and so does a safety rescan every ``rescan_s``
(in case the watcher missed something; only files whose inode, modification time or size
changed are parsed again). Acceptance and the model are redone only for what the changed
files touch (:mod:`.rechecks`, :mod:`.model_rebuilds`), so an edit among 10,000 services
costs tens of milliseconds; with the ADS server's own debounce (20 ms of quiet) the model
is handed to the streams within ~0.1 s of the save. :meth:`FileSource.stop` ends
:meth:`FileSource.run`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

import watchfiles

from metamesh.api.base import DEFAULT_NAMESPACE
from metamesh.api.limits import DEFAULT_LIMITS, LimitExceeded, LoadLimits
from metamesh.api.loader import ResourceSet
from metamesh.api.problems import Problem
from metamesh.control.model import MeshModel
from metamesh.control.sources.accept import Acceptance, Held, accept
from metamesh.control.sources.model_rebuilds import ModelRebuilds, full_build
from metamesh.control.sources.rechecks import FULL_CHECKS, Checks, Rechecks
from metamesh.control.sources.watched_files import WatchedFiles

log = logging.getLogger("metamesh.control.sources")

OnModel = Callable[[MeshModel], None]
#: Adds other sources' sets to the files' before acceptance (:mod:`.merge`).
Merge = Callable[[dict[str, ResourceSet]], dict[str, ResourceSet]]
Report = Callable[[str], None]
#: A warning's identity across loads: everything but the line, which edits move.
ProblemKey = tuple[str, str, str, str, str, str]
_LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO}


class ConfigDirectoryError(ValueError):
    """The config directory does not exist or is not a directory (the message says which)."""


def config_directory(directory: str | Path) -> Path:
    """``directory`` as a Path; :class:`ConfigDirectoryError` if it is not a directory."""
    path = Path(directory)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise ConfigDirectoryError(f"config directory {str(path)!r} {what}")
    return path


def _key(problem: Problem) -> ProblemKey:
    p = problem
    return (p.severity, p.file, p.kind, p.name, p.field_path, p.message)


class FileSource:
    """Watches ``directory``; see the module docstring.

    ``report``, when given, receives every line instead of the logger (tests pass a list's
    ``append``); otherwise lines are logged at their severity's level.
    """

    def __init__(
        self,
        directory: str | Path,
        on_model: OnModel,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        report: Report | None = None,
        debounce_ms: int = 200,
        step_ms: int = 10,
        rescan_s: float = 300.0,
        limits: LoadLimits = DEFAULT_LIMITS,
        merge: Merge | None = None,
        incremental: bool = True,
    ) -> None:
        self.directory = config_directory(directory)
        self.limits = limits
        self._merge = merge
        self._on_model = on_model
        self._namespace = namespace
        self._report = report
        self._debounce_ms = debounce_ms
        self._step_ms = step_ms
        self._rescan_s = rescan_s
        self._stop = asyncio.Event()
        self.model: MeshModel | None = None  #: the model in force (the last handed on)
        self.problems: list[Problem] = []  #: the problems of the directory at the last load
        self.held: dict[str, Held] = {}  #: files whose current version is not in force
        self.loads = 0
        self.generation = 0  #: models handed on so far (the "config N" of the log)
        self.rejected = 0  #: loads with errors (some file held back)
        self.watched = WatchedFiles(self.directory, namespace, limits)  #: kept between loads
        #: checks again only what changed (incremental=False: everything, at every load)
        self.checks: Checks = Rechecks() if incremental else FULL_CHECKS
        self.builds = ModelRebuilds() if incremental else None  #: likewise for the model
        self._last_good: dict[str, ResourceSet] = {}
        self._noted: set[ProblemKey] = set()  # warnings and notes logged at the last load
        self._noted_model: set[str] = set()
        self._had_errors = False  # the last load had errors (for "back in force")

    def load(self, changed: Collection[str] | None = None) -> MeshModel | None:
        """Load the directory; the model handed on, or None when what is in force is unchanged.

        ``changed``: the paths the watcher reported since the last load (only those files are
        read again; see the module docstring); None walks the whole directory.
        """
        self.loads += 1
        had_errors, self._had_errors = self._had_errors, True
        if not self.directory.is_dir():
            self.rejected += 1
            self._line("error", f"{self.directory}: config directory is gone; {self._kept()}")
            return None
        try:
            if changed is None or not self.watched.update(changed):
                self.watched.scan()
        except LimitExceeded as exc:
            self.rejected += 1
            self.problems = [exc.problem]
            self._line("error", f"{exc.problem.format()}; {self._kept()}")
            return None
        current = dict(self.watched.files)
        if self._merge is not None:  # other sources' resources, as pseudo-files (merge.py)
            current = self._merge(current)
        result = accept(current, self._last_good, self.checks)
        self.problems = result.problems
        self._report_problems(result)
        differs = self._changed(result)
        self.held = {file: why for file, (why, _) in result.held.items()}
        self._last_good = dict(result.in_force)
        self._had_errors = bool(self.held)
        if self.held:
            self.rejected += 1
        model = None
        if differs:
            model = (
                self.builds.build(result.in_force) if self.builds else full_build(result.in_force)
            )
            self._report_model(model.problems)
            self.model = model
            self.generation += 1
            self._on_model(model)
        if had_errors and not self.held:
            self._line("info", f"{self.directory}: config {self.generation} back in force")
        return model

    async def run(self) -> None:
        """Reload on every change under the directory until :meth:`stop`; walk the whole
        directory every ``rescan_s`` (when the watcher is quiet, or with the next change)."""
        scanned = time.monotonic()
        async for changes in watchfiles.awatch(
            self.directory,
            watch_filter=self.watched.wants,
            debounce=self._debounce_ms,
            step=self._step_ms,
            stop_event=self._stop,
            rust_timeout=int(min(self._rescan_s, 60.0) * 1000),
            yield_on_timeout=True,
        ):
            now = time.monotonic()
            if now - scanned >= self._rescan_s:
                scanned = now
                self.load()
            elif changes:
                self.load({path for _, path in changes})

    def stop(self) -> None:
        self._stop.set()

    # --- reporting ----------------------------------------------------------------------

    def _changed(self, result: Acceptance) -> bool:
        """Whether the versions in force differ from the last load's (files by identity)."""
        if self.model is None:  # the first model, unless every file is held back
            return bool(result.in_force) or not result.held
        before, after = self._last_good, result.in_force
        return before.keys() != after.keys() or any(after[f] is not before[f] for f in after)

    def _kept(self) -> str:
        if self.model is None:
            return "nothing to serve yet"
        return f"config {self.generation} stays in force"

    def _report_problems(self, result: Acceptance) -> None:
        shown = {_key(p) for p in result.problems}
        noted: set[ProblemKey] = set()
        for problem in result.problems:
            key = _key(problem)
            if problem.is_error:
                self._line("error", problem.format())
            elif key not in self._noted:
                self._line(problem.severity, problem.format())
            noted.add(key)
        self._noted = noted
        for file, (why, reasons) in result.held.items():
            for reason in reasons:  # reference errors met only against a last good version
                if _key(reason) not in shown:
                    self._line("error", reason.format())
            count = f"{len(reasons)} error{'s' if len(reasons) != 1 else ''}"
            rest = "the rest of the directory stays in force"
            self._line("error", f"{file}: {count}; {why.value}; {rest}")

    def _report_model(self, lines: Iterable[str]) -> None:
        current = set(lines)
        for line in sorted(current - self._noted_model):
            self._line("warning", f"{self.directory}: warning: {line}")
        self._noted_model = current

    def _line(self, severity: str, line: str) -> None:
        if self._report is not None:
            self._report(line)
        else:
            log.log(_LEVELS[severity], "%s", line)
