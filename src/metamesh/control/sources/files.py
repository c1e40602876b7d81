"""Config sources: a directory of YAML manifests, watched, turned into mesh models.

:class:`FileSource` loads every ``*.yaml``/``*.yml`` under a directory with
:func:`metamesh.api.load_paths`, checks it with :func:`metamesh.api.validate` and, when no
problem is an error, builds the :class:`~metamesh.control.model.MeshModel` and hands it to
``on_model`` (normally :meth:`metamesh.xds.server.AdsServer.set_model`). When there are errors
each is reported (``file:line: error: Kind ns/name: field.path: message``) and nothing is
handed on: the last good model stays in force, and traffic keeps following it. The whole
directory is one unit because resources refer to each other across files (a MetaRouter names
a ServiceEntry's subsets), so a half-valid directory has no safe meaning.

Only files whose inode, modification time or size changed are parsed again (the rest come
from a per-file cache), so an edit in a directory of 1,000 services does not re-read them all.

Watching uses ``watchfiles`` (inotify on Linux): changes are grouped for ``step_ms`` of quiet
(capped at ``debounce_ms``), then the directory is reloaded once. With the ADS server's own
debounce the path from a saved file to a proxy running the new route is a few hundred
milliseconds. :meth:`FileSource.stop` ends :meth:`FileSource.run`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import watchfiles

from metamesh.api import load_paths, validate
from metamesh.api.base import DEFAULT_NAMESPACE
from metamesh.api.loader import YAML_SUFFIXES, LoadCache
from metamesh.api.problems import Problem
from metamesh.control.model import MeshModel, build_model

log = logging.getLogger("metamesh.control.sources")

OnModel = Callable[[MeshModel], None]
Report = Callable[[str], None]


def _yaml_only(change: watchfiles.Change, path: str) -> bool:
    return path.endswith(YAML_SUFFIXES)


class FileSource:
    """Watches ``directory``; see the module docstring."""

    def __init__(
        self,
        directory: str | Path,
        on_model: OnModel,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        report: Report | None = None,
        debounce_ms: int = 200,
        step_ms: int = 30,
    ) -> None:
        self.directory = Path(directory)
        self._on_model = on_model
        self._namespace = namespace
        self._report = report or (lambda line: log.warning("%s", line))
        self._debounce_ms = debounce_ms
        self._step_ms = step_ms
        self._stop = asyncio.Event()
        self.model: MeshModel | None = None  #: the last good model
        self.problems: list[Problem] = []  #: the problems of the last load
        self.loads = 0
        self._cache: LoadCache = {}  # unchanged files are not parsed again
        self.rejected = 0  #: loads refused because of errors

    def load(self) -> MeshModel | None:
        """Load and validate the directory; the new model, or None (errors reported)."""
        self.loads += 1
        resources = load_paths([self.directory], self._namespace, cache=self._cache)
        self.problems = validate(resources)
        errors = [p for p in self.problems if p.is_error]
        for problem in self.problems:
            self._report(problem.format())
        if errors:
            self.rejected += 1
            kept = "the last good config stays in force" if self.model else "nothing to serve yet"
            self._report(f"{self.directory}: {len(errors)} error(s); {kept}")
            return None
        model = build_model(resources)
        for line in model.problems:
            self._report(f"{self.directory}: warning: {line}")
        self.model = model
        self._on_model(model)
        return model

    async def run(self) -> None:
        """Reload on every change under the directory until :meth:`stop`."""
        async for _changes in watchfiles.awatch(
            self.directory,
            watch_filter=_yaml_only,
            debounce=self._debounce_ms,
            step=self._step_ms,
            stop_event=self._stop,
        ):
            self.load()

    def stop(self) -> None:
        self._stop.set()
