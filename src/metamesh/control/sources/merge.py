"""The merge step: the files and the registries feeding one model.

Every source turns its world into the same resource models. The file source gives one
ResourceSet per YAML file; a registry (:mod:`.zookeeper`) gives one per *pseudo-file*, e.g.
``zookeeper://127.0.0.1:2181/dubbo/<interface>/providers`` for the ServiceEntries of one Dubbo
interface. :class:`SourceMerge` puts them side by side, files first, before the file source's
per-file acceptance (:func:`~metamesh.control.sources.accept.accept`), so everything works
across sources as it does across files: a hand-written DestinationRule or MetaRouter in the
directory refers to a registry's host as it would to a ServiceEntry in another file, and a
pseudo-file is held back or kept at its last good version like any file.

Precedence. A host declared by a ServiceEntry in the directory wins over the same host from a
registry: the registry's ServiceEntry for it is left out and one warning, logged when the
conflict appears (again only if it goes away and comes back), names both, e.g.::

    org.apache.dubbo.demo.demoservice: declared by ServiceEntry dubbo/demo in mesh/demo.yaml
    and by ServiceEntry default/zk-org-apache-dubbo-demo-demoservice from
    zookeeper://127.0.0.1:2181/dubbo/org.apache.dubbo.demo.DemoService/providers;
    dubbo/demo is used, default/zk-org-apache-dubbo-demo-demoservice is ignored

So a service can be pinned by hand (its addresses, ports and endpoints written in a file) while
the registry keeps the rest. Between registries (or two interfaces that give one host) the
first in order of source name, then pseudo-file, wins, with the same warning.

:class:`MergedSources` wires a :class:`~.files.FileSource` (when a directory is given) and the
ZooKeeper and Kubernetes sources (either or both) to this step: a registry update re-runs the
file source's load without reading any file (no file changed), and the model is rebuilt only
when something in force changed. Without a
directory, registry updates are accepted and built the same way, with no files.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from metamesh.api.base import fqdn
from metamesh.api.istio import ServiceEntry
from metamesh.api.limits import DEFAULT_LIMITS, LoadLimits
from metamesh.api.loader import Loaded, ResourceSet
from metamesh.api.problems import Problem
from metamesh.control.model import MeshModel, build_model
from metamesh.control.sources.accept import Held, accept
from metamesh.control.sources.files import FileSource, OnModel, Report

if TYPE_CHECKING:
    from metamesh.control.sources.kubernetes import KubernetesSettings, KubernetesSource
    from metamesh.control.sources.zookeeper import ZooKeeperSettings, ZooKeeperSource

log = logging.getLogger("metamesh.control.sources")


def _hosts(item: Loaded) -> list[str]:
    resource = item.resource
    assert isinstance(resource, ServiceEntry)
    return [fqdn(host, resource.namespace) for host in resource.spec.hosts]


class SourceMerge:
    """Files first, then each registry's pseudo-files; see the module docstring.

    Called with the file source's per-file sets, it returns them with the registries' sets
    added (the hook :class:`~.files.FileSource` takes as ``merge``).
    """

    def __init__(self, report: Report | None = None) -> None:
        self._report = report
        #: pseudo-file -> why its ServiceEntry is left out (a host declared first elsewhere)
        self.ignored: dict[str, list[str]] = {}
        self._sources: dict[str, Mapping[str, ResourceSet]] = {}
        self._noted: set[str] = set()
        # a registry set with hosts left out, kept while its original is the one in force, so
        # an unchanged source gives the very same object (the file source compares identity)
        self._trimmed: dict[str, tuple[ResourceSet, frozenset[int], ResourceSet]] = {}

    def update(self, source: str, sets: Mapping[str, ResourceSet]) -> None:
        """``source``'s pseudo-files as they are now (replacing its previous ones)."""
        self._sources[source] = dict(sets)

    def __call__(self, files: Mapping[str, ResourceSet]) -> dict[str, ResourceSet]:
        declared: dict[str, tuple[str, str]] = {}  # host -> (where, ServiceEntry ref)
        for where, loaded in files.items():
            for item in loaded.loaded(ServiceEntry):
                for host in _hosts(item):
                    declared.setdefault(host, (where, item.resource.ref))
        combined = dict(files)
        conflicts: list[str] = []
        ignored: dict[str, list[str]] = {}
        for source in sorted(self._sources):
            for where, loaded in sorted(self._sources[source].items()):
                dropped: set[int] = set()
                for index, item in enumerate(loaded.items):
                    if not isinstance(item.resource, ServiceEntry):
                        continue
                    for host in _hosts(item):
                        first = declared.get(host)
                        if first is None:
                            continue
                        dropped.add(index)
                        conflicts.append(_conflict(host, first, (where, item.resource.ref)))
                        ignored.setdefault(where, []).append(conflicts[-1])
                    if index not in dropped:
                        for host in _hosts(item):
                            declared[host] = (where, item.resource.ref)
                combined[where] = self._without(where, loaded, frozenset(dropped))
        self._note(conflicts)
        self.ignored = ignored
        return combined

    def _without(self, where: str, loaded: ResourceSet, dropped: frozenset[int]) -> ResourceSet:
        if not dropped:
            self._trimmed.pop(where, None)
            return loaded
        kept = self._trimmed.get(where)
        if kept is not None and kept[0] is loaded and kept[1] == dropped:
            return kept[2]
        items = [item for index, item in enumerate(loaded.items) if index not in dropped]
        trimmed = ResourceSet(items, list(loaded.problems))
        self._trimmed[where] = (loaded, dropped, trimmed)
        return trimmed

    def _note(self, conflicts: list[str]) -> None:
        current = set(conflicts)
        for line in sorted(current - self._noted):
            if self._report is not None:
                self._report(line)
            else:
                log.warning("%s", line)
        self._noted = current


def _conflict(host: str, first: tuple[str, str], other: tuple[str, str]) -> str:
    return (
        f"{host}: declared by ServiceEntry {first[1]} in {first[0]} and by ServiceEntry "
        f"{other[1]} from {other[0]}; {first[1]} is used, {other[1]} is ignored"
    )


class _RegistriesOnly:
    """The file source's acceptance and model building, for registries without a directory."""

    def __init__(self, on_model: OnModel, merge: SourceMerge) -> None:
        self._on_model = on_model
        self._merge = merge
        self._last_good: dict[str, ResourceSet] = {}
        self.model: MeshModel | None = None
        self.problems: list[Problem] = []  #: as FileSource's: the last load's problems
        self.held: dict[str, Held] = {}  #: pseudo-files whose current version is not in force

    def load(self) -> MeshModel | None:
        result = accept(self._merge({}), self._last_good)
        self.problems = result.problems
        self.held = {where: why for where, (why, _) in result.held.items()}
        for problem in result.problems:
            if problem.is_error:
                log.error("%s", problem.format())
        before, self._last_good = self._last_good, dict(result.in_force)
        same = before.keys() == self._last_good.keys() and all(
            self._last_good[k] is before[k] for k in before
        )
        if same and self.model is not None:
            return None
        self.model = build_model(result.resources)
        self._on_model(self.model)
        return self.model


class MergedSources:
    """A directory (optional) and the registries (ZooKeeper, Kubernetes) feeding ``on_model``.

    Used like a :class:`~.files.FileSource`: :meth:`start` (on the control loop; waits up to
    each registry's ``start_wait`` for its first complete read, so the first model has its
    services), :meth:`load`, :meth:`run` until :meth:`stop` (which also ends the registries).
    After every load, the Kubernetes source is told what acceptance thought of its objects
    (status conditions and Events, :mod:`.kubernetes_status`).
    """

    def __init__(
        self,
        directory: str | Path | None,
        on_model: OnModel,
        *,
        namespace: str,
        zookeeper: ZooKeeperSettings | None = None,
        kubernetes: KubernetesSettings | None = None,
        limits: LoadLimits = DEFAULT_LIMITS,
    ) -> None:
        self.merge = SourceMerge()
        self.files = (
            FileSource(directory, on_model, namespace=namespace, merge=self.merge, limits=limits)
            if directory is not None
            else None
        )
        self._only = _RegistriesOnly(on_model, self.merge) if self.files is None else None
        self.zookeeper: ZooKeeperSource | None = None
        self.kubernetes: KubernetesSource | None = None
        if zookeeper is not None:
            from metamesh.control.sources.zookeeper import ZooKeeperSource

            self.zookeeper = ZooKeeperSource(zookeeper, self._on_zookeeper, namespace=namespace)
        if kubernetes is not None:
            from metamesh.control.sources.kubernetes import KubernetesSource

            self.kubernetes = KubernetesSource(kubernetes, self._on_kubernetes, namespace=namespace)
        self._stop = asyncio.Event()

    def _on_zookeeper(self, sets: Mapping[str, ResourceSet]) -> None:
        self.merge.update("zookeeper", sets)
        self.load(changed=())  # no file changed: the directory is not walked again

    def _on_kubernetes(self, sets: Mapping[str, ResourceSet]) -> None:
        self.merge.update("kubernetes", sets)
        self.load(changed=())

    async def start(self) -> None:
        if self.zookeeper is not None:
            self.zookeeper.start()
        if self.kubernetes is not None:
            await self.kubernetes.start()
        waits = []
        if self.zookeeper is not None:
            settings = self.zookeeper.settings
            waits.append((settings.where, settings.start_wait, self.zookeeper.wait_synced))
        if self.kubernetes is not None:
            kube = self.kubernetes.settings
            waits.append((kube.where, kube.start_wait, self.kubernetes.wait_synced))
        for where, wait, synced in waits:
            if not await synced(wait):
                log.warning(
                    "%s: no complete read within %.0fs; starting without its services, which "
                    "follow when it answers",
                    where,
                    wait,
                )

    def load(self, changed: Collection[str] | None = None) -> MeshModel | None:
        """Load everything; ``changed``: the files changed, as for :meth:`FileSource.load`."""
        if self.files is not None:
            model = self.files.load(changed)
            problems, held = self.files.problems, self.files.held
        else:
            assert self._only is not None
            model = self._only.load()
            problems, held = self._only.problems, self._only.held
        if self.kubernetes is not None:
            self.kubernetes.accepted(problems, held, self.merge.ignored)
        return model

    @property
    def model(self) -> MeshModel | None:
        if self.files is not None:
            return self.files.model
        return self._only.model if self._only is not None else None

    async def run(self) -> None:
        try:
            if self.files is not None:
                await self.files.run()
            else:
                await self._stop.wait()
        finally:
            if self.zookeeper is not None:
                await self.zookeeper.close()
            if self.kubernetes is not None:
                await self.kubernetes.close()

    def stop(self) -> None:
        if self.files is not None:
            self.files.stop()
        self._stop.set()

    def status(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.zookeeper is not None:
            out["zookeeper"] = self.zookeeper.status()
        if self.kubernetes is not None:
            out["kubernetes"] = self.kubernetes.status()
        return out
