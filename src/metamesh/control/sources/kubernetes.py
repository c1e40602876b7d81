"""The Kubernetes source: CRDs, Services, EndpointSlices, Pods and Namespaces, watched.

:class:`KubernetesSource` runs one *reflector* task per resource, with ``kubernetes_asyncio``
(its ``ApiClient``, configuration, authentication and typed list calls, read as raw JSON):

1. **list** the resource (all namespaces), keep every object and the list's
   ``resourceVersion``;
2. **watch** from that version with ``allowWatchBookmarks``; each event updates the store and
   the version (``BOOKMARK`` events only move the version); when the server ends the stream
   (``timeoutSeconds``), watch again from the last version: nothing is listed again;
3. a ``410 Gone`` (an ``ERROR`` event in the stream, or the status of the request) means the
   version is too old for the server's history: list again (counter ``relists``);
4. any other failure (connection refused, a 5xx, a timeout, a stream cut in the middle of an
   object, JSON that does not parse) ends that watch: the reflector waits (exponential
   back-off from ``backoff_min`` to ``backoff_max``, 1 s as for every source of metamesh,
   times a random factor in [0.5, 1]) and resumes from its last version. The
   store is not touched, so **the last good model stays in force** while the API server is
   unreachable; the state says since when (``status()``), the ``failures`` counter moves, one
   warning line is logged when it starts failing and one info line when it is back.

A CRD that is not installed (404), or a resource the control plane may not read (403), is
logged once and checked again every ``recheck`` seconds; the other resources are served
meanwhile. With ``settings.injector`` the source also serves the sidecar injection webhook
(:mod:`.kubernetes_webhook`).

Changes are grouped (``debounce`` seconds of quiet) and the whole store is translated
(:class:`~.kubernetes_objects.Translator`, cached per object) into pseudo-files handed to
``on_update``, the same hook the ZooKeeper source has: the merge step (:mod:`.merge`) puts
them beside the directory's files before per-file acceptance, so an invalid object is held at
its last good version (or left out) while everything else is served. What acceptance thought
of each object goes back to the cluster through :mod:`.kubernetes_status`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from metamesh.api.loader import ResourceSet
from metamesh.api.problems import Problem
from metamesh.control.sources.accept import Held
from metamesh.control.sources.kubernetes_objects import (
    CORE_RESOURCES,
    ENDPOINT_SLICES,
    NAMESPACES,
    PODS,
    SERVICES,
    Gvr,
    KubeObjects,
    Obj,
    Translator,
    custom_resources,
    resource_name,
)
from metamesh.control.sources.kubernetes_status import LeaderLease, StatusWriter, verdict
from metamesh.control.sources.kubernetes_webhook import InjectorServer, InjectorSettings

log = logging.getLogger("metamesh.control.sources.kubernetes")

OnUpdate = Callable[[Mapping[str, ResourceSet]], None]
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"

#: Counters of :class:`KubernetesSource` (``status()["counters"]``).
COUNTERS = (
    "lists",  # complete lists (the first, and each relist)
    "relists",  # lists again after 410 Gone
    "watches",  # watch requests made
    "events",  # ADDED/MODIFIED/DELETED events applied
    "bookmarks",  # BOOKMARK events (the resourceVersion moves, nothing else)
    "failures",  # lists/watches that failed (the last good objects stay in force)
    "bad_events",  # stream lines that were not a whole JSON event (a cut stream)
    "updates",  # updates handed to the control loop
    "status_writes",  # status subresources patched (leader only)
    "events_written",  # Events created (leader only)
    "status_write_failures",  # status or Event writes that failed
    "addresses_allocated",  # ServiceEntry addresses persisted in status (leader only)
)


@dataclass(frozen=True, slots=True)
class KubernetesSettings:
    """``--kubernetes [--kubeconfig F | --in-cluster] [--kube-context C]``."""

    kubeconfig: str | None = None  #: None: $KUBECONFIG or ~/.kube/config
    in_cluster: bool = False
    context: str | None = None
    watch_timeout: int = 300  #: seconds the server keeps one watch open
    request_timeout: float = 10.0  #: list requests, and a watch's silence past its timeout
    backoff_min: float = 0.2
    backoff_max: float = 1.0  #: issue 15: back within ~1 s of the API server, whatever the outage
    recheck: float = 5.0  #: how often a resource not served (404) or forbidden (403) is retried
    debounce: float = 0.05
    start_wait: float = 10.0  #: how long a start waits for the first complete list
    write_status: bool = True  #: status conditions and Events (kubernetes_status.py)
    lease_namespace: str = "metamesh-system"  #: where the leader's Lease lives
    lease_duration: int = 15  #: seconds a leader that stopped renewing keeps the Lease
    lease_renew: float = 5.0  #: seconds between renewals
    injector: InjectorSettings | None = None  #: serve the sidecar injection webhook
    identity: str | None = None  #: this replica's name in the Lease (default: random)

    @property
    def where(self) -> str:
        if self.in_cluster:
            return "kubernetes (in-cluster)"
        return f"kubernetes ({self.kubeconfig or 'default kubeconfig'})"


def config_problem(kubeconfig: str | None, *, in_cluster: bool = False) -> str | None:
    """Why the client configuration cannot be loaded (None: it can be tried), so a command can
    say it in one line instead of failing later."""
    if in_cluster:
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            return "--in-cluster outside a pod: KUBERNETES_SERVICE_HOST is not set"
        if not os.path.exists(SERVICE_ACCOUNT_TOKEN):
            return f"--in-cluster: no service account token at {SERVICE_ACCOUNT_TOKEN}"
        return None
    paths = [kubeconfig] if kubeconfig else os.environ.get("KUBECONFIG", "").split(os.pathsep)
    paths = [p for p in paths if p] or [os.path.expanduser("~/.kube/config")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if len(missing) == len(paths):
        return f"no kubeconfig at {', '.join(missing)} (give --kubeconfig FILE or --in-cluster)"
    try:  # read it now: a broken file is one line at start, not a traceback later
        asyncio.run(_try_config(kubeconfig))
    except Exception as exc:  # kubernetes_asyncio raises ConfigException, YAML errors, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"cannot use the kubeconfig {' or '.join(paths)}: {first}"
    return None


async def _try_config(kubeconfig: str | None) -> None:
    api = await api_client(KubernetesSettings(kubeconfig=kubeconfig))
    await api.close()


async def api_client(settings: KubernetesSettings) -> client.ApiClient:
    """An ApiClient configured from the kubeconfig or the pod's service account."""
    configuration = client.Configuration()
    if settings.in_cluster:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config(
            config_file=settings.kubeconfig,
            context=settings.context,
            client_configuration=configuration,
        )
    return client.ApiClient(configuration)


class _Gone(Exception):
    """410: the resourceVersion is older than the server's history."""


class _Cut(Exception):
    """The stream ended in the middle of a line, or a line was not JSON."""


class KubernetesSource:
    """Watches the cluster; see the module docstring."""

    def __init__(
        self, settings: KubernetesSettings, on_update: OnUpdate, *, namespace: str = "default"
    ) -> None:
        self.settings = settings
        self.namespace = namespace
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.state = "stopped"  #: connecting, synced, unreachable, stopped
        self.since = time.time()
        self.last_sync: float | None = None
        self.store = KubeObjects()
        self.versions: dict[str, str | None] = {}  #: resource -> last resourceVersion seen
        self.api: client.ApiClient | None = None
        self.resources: list[tuple[Gvr, str]] = [*custom_resources()]
        self._core = [(gvr, "") for gvr in CORE_RESOURCES]
        self._on_update = on_update
        self._translator = Translator()
        self._tasks: list[asyncio.Task[None]] = []
        self._listed: set[str] = set()
        self._failing: set[str] = set()
        self._missing: set[str] = set()
        self._rng = random.Random()
        self._synced = asyncio.Event()
        self._dirty = asyncio.Event()
        self._closing = False
        self.writer: StatusWriter | None = None
        self.injector: InjectorServer | None = None
        self._verdicts: (
            tuple[list[Problem], Mapping[str, Held], Mapping[str, list[str]] | None] | None
        ) = None
        self.lease: LeaderLease | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and start the reflectors (raises for an unusable kubeconfig, or an injector
        certificate that cannot be loaded)."""
        if self.settings.injector is not None:
            self.injector = InjectorServer(self.settings.injector)
            await self.injector.start()
        self.api = await api_client(self.settings)
        self._set_state("connecting")
        for gvr, _ in [*self._core, *self.resources]:
            self._tasks.append(asyncio.create_task(self._reflect(gvr), name=resource_name(gvr)))
        self._tasks.append(asyncio.create_task(self._publish(), name="kubernetes-publish"))
        if self.settings.write_status:
            self.writer = StatusWriter(self.api, self.counters)
            self.lease = LeaderLease(
                self.api,
                self.settings.lease_namespace,
                identity=self.settings.identity,
                duration=self.settings.lease_duration,
                renew=self.settings.lease_renew,
            )
            self._tasks.append(asyncio.create_task(self.lease.run(self._leading), name="lease"))

    async def wait_synced(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.writer is not None:
            await self.writer.close()
        if self.injector is not None:
            await self.injector.close()
        if self.api is not None:
            await self.api.close()
        self._set_state("stopped")

    def status(self) -> dict[str, object]:
        return {
            "source": self.settings.where,
            "state": self.state,
            "since": self.since,
            "last_sync": self.last_sync,
            "failing": sorted(self._failing),
            "leader": self.lease.leading if self.lease is not None else None,
            "objects": sum(len(t) for t in self.store.by_resource.values()),
            "counters": dict(self.counters),
        }

    def accepted(
        self,
        problems: list[Problem],
        held: Mapping[str, Held],
        ignored: Mapping[str, list[str]] | None = None,
    ) -> None:
        """What the last load thought of the objects: status and Events (leader only);
        ``ignored``: objects left out by the merge step (a host declared first elsewhere)."""
        self._verdicts = (problems, held, ignored)
        if self.writer is None or not self.writer.enabled:
            return
        objects = self._translator.objects
        verdicts = {where: verdict(where, problems, held, ignored) for where in objects}
        self.writer.update(objects, verdicts)

    def _leading(self, leading: bool) -> None:
        if self.writer is None:
            return
        self.writer.enabled = leading
        self.writer.forget()
        if leading and self._verdicts is not None:
            self.accepted(*self._verdicts)
        if leading:
            self.writer.allocate(self._translator.objects)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()

    # --- one resource -----------------------------------------------------------------------

    async def _reflect(self, gvr: Gvr) -> None:
        name = resource_name(gvr)
        delay = self.settings.backoff_min
        version: str | None = None
        while not self._closing:
            try:
                if version is None:
                    version = await self._list(gvr)
                began = time.monotonic()
                version = await self._watch(gvr, version)
                if time.monotonic() - began < 1.0:  # a server that ends watches at once: pace
                    await asyncio.sleep(delay * self._rng.uniform(0.5, 1.0))
                    delay = min(delay * 2, self.settings.backoff_max)
                else:
                    delay = self.settings.backoff_min
            except _Gone:
                self.counters["relists"] += 1
                log.info("%s: %s: resourceVersion too old (410 Gone); listing again", self._w, name)
                version = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the reflector's boundary: back off and resume
                if self._failed(gvr, exc):  # not served or forbidden: looked at now and then
                    await asyncio.sleep(self.settings.recheck)
                else:
                    await asyncio.sleep(delay * self._rng.uniform(0.5, 1.0))
                    delay = min(delay * 2, self.settings.backoff_max)
            self.versions[name] = version

    @property
    def _w(self) -> str:
        return self.settings.where

    def _failed(self, gvr: Gvr, exc: Exception) -> bool:
        """Count and log a failure; True when the resource is not served or forbidden."""
        name = resource_name(gvr)
        missing = isinstance(exc, ApiException) and exc.status == 404 and gvr[0]
        forbidden = isinstance(exc, ApiException) and exc.status == 403
        if missing or forbidden:  # not this resource's turn: the others are served without it
            if name not in self._missing:
                self._missing.add(name)
                why = "is forbidden (RBAC?)" if forbidden else "is not served (CRD not installed?)"
                log.warning(
                    "%s: %s %s; checking again every %.0fs",
                    self._w,
                    name,
                    why,
                    self.settings.recheck,
                )
            self._listed.add(name)  # nothing to wait for
            self._check_synced()
            return True
        self.counters["failures"] += 1
        if not self._failing:
            self._set_state("unreachable")
            log.warning(
                "%s: %s failed (%s); the last good config stays in force; retrying",
                self._w,
                name,
                _describe(exc),
            )
        self._failing.add(name)
        return False

    def _recovered(self, name: str) -> None:
        self._missing.discard(name)
        if name in self._failing:
            self._failing.discard(name)
            if not self._failing:
                log.info("%s: answering again; following the cluster", self._w)
                self._set_state("synced" if self._synced.is_set() else "connecting")

    async def _list(self, gvr: Gvr) -> str:
        response = await self._request(gvr, watch=False)
        try:
            body = json.loads(await response.read())
        finally:
            response.release()
        items = body.get("items") or []
        group, version, _ = gvr
        for item in items:  # a list's items carry no apiVersion/kind: give them theirs
            item.setdefault("apiVersion", f"{group}/{version}" if group else version)
            item.setdefault("kind", (body.get("kind") or "").removesuffix("List"))
        self.store.replace(gvr, items)
        self.counters["lists"] += 1
        name = resource_name(gvr)
        self._recovered(name)
        self._listed.add(name)
        self._changed()
        self._check_synced()
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, gvr: Gvr, version: str) -> str:
        response = await self._request(gvr, watch=True, version=version)
        self.counters["watches"] += 1
        name = resource_name(gvr)
        self._recovered(name)  # the server answers
        try:
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        version = self._event(gvr, line, version)
            if buffer.strip():
                self.counters["bad_events"] += 1
                raise _Cut(f"the watch stream of {name} ended in the middle of an event")
        finally:
            response.release()
        return version

    def _event(self, gvr: Gvr, line: bytes, version: str) -> str:
        try:
            event = json.loads(line)
            kind, obj = event["type"], event["object"]
        except (ValueError, KeyError, TypeError) as exc:
            self.counters["bad_events"] += 1
            raise _Cut(f"a watch event of {resource_name(gvr)} is not JSON") from exc
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone
            raise ApiException(status=obj.get("code"), reason=obj.get("message"))
        new_version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
        if kind == "BOOKMARK":
            self.counters["bookmarks"] += 1
            return new_version
        self.store.apply(gvr, kind, obj)
        self.counters["events"] += 1
        self._changed()
        return new_version

    async def _request(self, gvr: Gvr, *, watch: bool, version: str | None = None) -> Any:
        """The list (or watch) call of ``gvr``, through kubernetes_asyncio, unparsed."""
        assert self.api is not None
        kwargs: dict[str, Any] = {"_preload_content": False}
        if watch:
            kwargs |= {
                "watch": True,
                "resource_version": version,
                "allow_watch_bookmarks": True,
                "timeout_seconds": self.settings.watch_timeout,
                "_request_timeout": aiohttp.ClientTimeout(
                    total=None,
                    connect=self.settings.request_timeout,
                    sock_read=self.settings.watch_timeout + self.settings.request_timeout,
                ),
            }
        else:
            kwargs["_request_timeout"] = self.settings.request_timeout
        group, api_version, plural = gvr
        call: Awaitable[Any]
        if gvr == NAMESPACES:
            call = client.CoreV1Api(self.api).list_namespace(**kwargs)
        elif gvr == SERVICES:
            call = client.CoreV1Api(self.api).list_service_for_all_namespaces(**kwargs)
        elif gvr == PODS:
            call = client.CoreV1Api(self.api).list_pod_for_all_namespaces(**kwargs)
        elif gvr == ENDPOINT_SLICES:
            call = client.DiscoveryV1Api(self.api).list_endpoint_slice_for_all_namespaces(**kwargs)
        else:
            call = client.CustomObjectsApi(self.api).list_cluster_custom_object(
                group, api_version, plural, **kwargs
            )
        response: Any = await call
        status = getattr(response, "status", 200)
        if status == 410:
            response.release()
            raise _Gone
        if status >= 400:
            text = await response.text()
            response.release()
            raise ApiException(status=status, reason=text[:200])
        return response

    # --- publishing -------------------------------------------------------------------------

    def _check_synced(self) -> None:
        wanted = {resource_name(g) for g, _ in [*self._core, *self.resources]}
        if not self._synced.is_set() and wanted <= self._listed:
            self._synced.set()
            self.last_sync = time.time()
            self._set_state("synced")
            self._dirty.set()

    def _changed(self) -> None:
        self._dirty.set()

    async def _publish(self) -> None:
        """Hand the translated store on after ``debounce`` of quiet (once the first lists are
        in, so the first update is complete)."""
        while True:
            await self._dirty.wait()
            while True:
                self._dirty.clear()
                await asyncio.sleep(self.settings.debounce)
                if not self._dirty.is_set():
                    break
            if not self._synced.is_set():
                continue
            self.last_sync = time.time()
            sets = self._translator.sets(self.store, self.resources)
            self.counters["updates"] += 1
            try:
                self._on_update(sets)
                if self.writer is not None:
                    self.writer.allocate(self._translator.objects)
            except Exception:  # the publisher's boundary: a bug must not end the watching
                log.exception("%s: applying an update failed", self._w)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["COUNTERS", "KubernetesSettings", "KubernetesSource", "Obj", "api_client"]
