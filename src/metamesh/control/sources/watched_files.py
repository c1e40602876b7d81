"""The files of a watched directory, kept between loads and updated from the watcher's paths.

:class:`WatchedFiles` holds what every ``*.yaml``/``*.yml`` file under the directory loaded
(:func:`metamesh.api.loader.load_files`), in load order (sorted paths), between loads. A full
:meth:`~WatchedFiles.scan` walks the directory and stats every file (only files whose inode,
modification time or size changed are parsed again); it is what the first load, a periodic
safety rescan and anything the watcher reports that cannot be pinned on one file do. After an
edit, :meth:`~WatchedFiles.update` takes the paths the watcher reported and touches only
those: a file that exists is loaded again, one that is gone is dropped. So an edit among
10,000 files costs one file's parse, not a walk and 10,000 stats.

What :meth:`~WatchedFiles.update` refuses (it returns False, and the caller scans): a path
outside the directory, a directory (created, removed or renamed: inotify names the directory
only, not the files it carried), and any load while an earlier one went over
``max_resources`` (the scan says again where). :meth:`~WatchedFiles.wants` is the watcher's
filter: YAML files, and directories (new ones, or ones known to hold YAML files), so that a
directory rename is seen at all.

A file's unchanged version is the very same :class:`~metamesh.api.loader.ResourceSet` object
as before, which is how the later stages (acceptance, model) tell what changed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import watchfiles

from metamesh.api.limits import LoadLimits
from metamesh.api.loader import YAML_SUFFIXES, LoadCache, ResourceSet, load_file, load_files


def _load_order(file: str) -> list[str]:
    """Sort key matching :func:`~metamesh.api.loader.load_files` (Path order: by parts)."""
    return file.split(os.sep)


class WatchedFiles:
    """The loaded files of ``directory``; see the module docstring."""

    def __init__(self, directory: Path, namespace: str, limits: LoadLimits) -> None:
        self.directory = directory
        self.files: dict[str, ResourceSet] = {}  #: file -> what it loaded, in load order
        self.scans = 0  #: full walks so far (the first load's included)
        self._namespace = namespace
        self._limits = limits
        self._cache: LoadCache = {}
        self._root = os.path.abspath(directory)
        self._dirs: set[str] = set()  # absolute paths of the directories holding YAML files
        self._total = 0  # objects read, over every file (towards max_resources)
        self._must_scan = True

    def scan(self) -> dict[str, ResourceSet]:
        """Walk the whole directory (raises :class:`~metamesh.api.limits.LimitExceeded`)."""
        self.scans += 1
        self._must_scan = True  # until the walk completes
        loaded = load_files([self.directory], self._namespace, self._cache, self._limits)
        self.files = {str(f): one for f, one in loaded.items()}
        self._total = sum(one.objects_read for one in self.files.values())
        self._dirs = set()
        for file in self.files:
            self._add_dirs(file)
        self._must_scan = False
        return self.files

    def update(self, paths: Iterable[str]) -> bool:
        """Apply the watcher's ``paths``; False (nothing changed) when only a scan will do.

        Raises :class:`~metamesh.api.limits.LimitExceeded` when a changed file takes the
        directory over ``max_resources``; the next load then scans.
        """
        if self._must_scan:
            return False
        keys = []
        for path in paths:
            key = self._key(path)
            if key is None or os.path.isdir(path) or os.path.abspath(path) in self._dirs:
                return False
            if key.endswith(YAML_SUFFIXES):
                keys.append(key)
        added = False
        for key in keys:
            added |= self._reload(key)
        if added:
            self.files = {f: self.files[f] for f in sorted(self.files, key=_load_order)}
        return True

    def wants(self, change: watchfiles.Change, path: str) -> bool:
        """The watch filter: YAML files, and directories (see the module docstring)."""
        if path.endswith(YAML_SUFFIXES):
            return True
        return os.path.abspath(path) in self._dirs or os.path.isdir(path)

    def _key(self, path: str) -> str | None:
        """``path`` (as the watcher reports it) spelt like the scan's keys; None if outside."""
        absolute = os.path.abspath(path)
        if not absolute.startswith(self._root + os.sep):
            return None
        return str(self.directory / absolute[len(self._root) + 1 :])

    def _reload(self, key: str) -> bool:
        """Load ``key`` again, or drop it if gone; True when it is a new file."""
        file = Path(key)
        old = self.files.get(key)
        before = old.objects_read if old is not None else 0
        if not file.is_file():
            if old is not None:
                del self.files[key]
                self._cache.pop(file, None)
                self._total -= before
            return False
        self._must_scan = True  # until loaded within the limit
        loaded = load_file(file, self._namespace, self._cache, self._limits, self._total - before)
        self._must_scan = False
        self.files[key] = loaded
        self._total += loaded.objects_read - before
        if old is None:
            self._add_dirs(key)
        return old is None

    def _add_dirs(self, file: str) -> None:
        """Note the directories above ``file`` (up to the root) as holding YAML files."""
        parent = os.path.dirname(os.path.abspath(file))
        while (parent == self._root or parent.startswith(self._root + os.sep)) and (
            parent not in self._dirs
        ):
            self._dirs.add(parent)
            parent = os.path.dirname(parent)
