"""The ZooKeeper source: Dubbo providers registered under ``/dubbo``, watched with kazoo.

:class:`ZooKeeperSource` keeps, for every interface ``<root>/<interface>`` that has a
``providers`` node, the names of the provider znodes under it, and hands the ServiceEntries
they give (:func:`~metamesh.control.sources.dubbo_registry.interface_services`) to
``on_update`` as ``{pseudo-file: ResourceSet}``, one pseudo-file per interface named
``zookeeper://<hosts><root>/<interface>/providers``; the merge step
(:mod:`metamesh.control.sources.merge`) puts them beside the files.

Threads. kazoo runs its own: a connection thread (which calls the state listener) and a
callback thread (which calls watches). Neither does any work here beyond putting a note on a
queue. One worker thread of this source reads ZooKeeper (blocking kazoo calls, each bounded by
``read_timeout``), owns the tree and translates it; only finished, immutable results cross to
the control loop, with ``loop.call_soon_threadsafe``, so ``on_update`` always runs on the loop
that called :meth:`ZooKeeperSource.start` (the control thread's loop in ``metamesh up``).
Notes that arrive while the worker is busy are taken together: a burst of joins is one update.

Watches. ``get_children`` of the root and of each ``providers`` node set a child watch; a node
that is not there yet gets an ``exists`` watch, so its creation is seen. A watch fires once, and
the worker re-reads that node (setting the next watch) and posts what changed. Every
(re)connection re-reads everything, which re-creates the watches after a session expiry (a new
session has none) and catches up on what changed while ZooKeeper was away.

ZooKeeper down. kazoo reconnects forever (back-off capped at ``reconnect_max``). Meanwhile
nothing is posted, so the last good services stay in force; the state goes ``suspended`` (or
``lost`` when the session expired), the ``disconnects``/``session_expiries`` counters move, one
warning line says what stays in force, and :meth:`ZooKeeperSource.status` says since when. A
read that fails leaves that interface's last good providers in force and marks the source
stale: it reads everything again once connected (or after ``retry_delay`` if it still is).

Providers that give no endpoint (malformed URL, another protocol, disabled) are logged once
each, naming the znode, while they stay registered, and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient  # type: ignore[import-untyped]
from kazoo.exceptions import KazooException, NoNodeError  # type: ignore[import-untyped]
from kazoo.hosts import collect_hosts  # type: ignore[import-untyped]
from kazoo.protocol.states import KazooState  # type: ignore[import-untyped]
from kazoo.retry import KazooRetry  # type: ignore[import-untyped]

from metamesh.api.loader import ResourceSet
from metamesh.control.sources.dubbo_registry import (
    DEFAULT_SERVICE_PORT,
    InterfaceServices,
    interface_services,
)

log = logging.getLogger("metamesh.control.sources.zookeeper")
# kazoo logs every failed reconnect attempt; this source says once what it means instead
_kazoo_log = logging.getLogger("metamesh.control.sources.zookeeper.kazoo")
_kazoo_log.setLevel(logging.ERROR)

OnUpdate = Callable[[Mapping[str, ResourceSet]], None]

#: Counters of :class:`ZooKeeperSource` (``status()["counters"]``), one writer thread each.
COUNTERS = (
    "connects",  # sessions established or resumed
    "disconnects",  # connection lost (the last good services stay in force)
    "session_expiries",  # sessions lost: watches re-created on the next connect
    "syncs",  # updates handed to the control loop
    "read_failures",  # reads that failed (that interface keeps its last good providers)
    "malformed_providers",  # provider znodes that are not a usable URL (logged once each)
    "skipped_providers",  # valid URLs left out: another protocol, enabled=false, ...
)

_ALL = "\0all"  # read everything (every (re)connect, and after a failed read)
_ROOT = "\0root"  # read the list of interfaces


@dataclass(frozen=True, slots=True)
class ZooKeeperSettings:
    """``--zookeeper HOST:PORT[,...] --zk-root /dubbo --zk-service-port 20880``."""

    hosts: str
    root: str = "/dubbo"
    service_port: int = DEFAULT_SERVICE_PORT
    session_timeout: float = 10.0
    reconnect_max: float = 1.0
    read_timeout: float = 5.0
    retry_delay: float = 1.0
    start_wait: float = 5.0  #: how long a start waits for the first complete read

    def __post_init__(self) -> None:
        """Raises ValueError (kazoo's message) for a host list kazoo cannot read."""
        collect_hosts(self.hosts)
        if not self.root.strip("/"):
            raise ValueError(f"the registry root {self.root!r} must name a node, e.g. /dubbo")
        if not 1 <= self.service_port <= 65535:
            raise ValueError(f"service port {self.service_port} is not in 1..65535")

    @property
    def path(self) -> str:
        """The registry root as a znode path (``dubbo/`` -> ``/dubbo``)."""
        return "/" + self.root.strip("/")

    @property
    def where(self) -> str:
        return f"zookeeper://{self.hosts}{self.path}"


class ZooKeeperSource:
    """Watches the Dubbo registry at ``settings``; see the module docstring."""

    def __init__(self, settings: ZooKeeperSettings, on_update: OnUpdate, *, namespace: str) -> None:
        self.settings = settings
        self.root = settings.path
        self.namespace = namespace
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.state = "stopped"  #: connecting, connected, suspended, lost, stopped
        self.since = time.time()  #: when ``state`` was entered
        self.last_sync: float | None = None  #: when the last complete read ended
        self.stale = True  #: some interface may be behind ZooKeeper
        self.interfaces = 0
        self.providers = 0
        self._on_update = on_update
        self._loop: asyncio.AbstractEventLoop | None = None
        self._synced: asyncio.Event | None = None
        self._client: Any = None
        self._notes: queue.Queue[str | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="metamesh-zookeeper", daemon=True)
        self._closing = False
        # owned by the worker thread
        self._tree: dict[str, tuple[str, ...]] = {}
        self._groups: dict[str, frozenset[str]] = {}
        self._built: dict[str, tuple[tuple[str, ...], InterfaceServices]] = {}
        self._reported: dict[str, set[str]] = {}

    # --- lifecycle (control loop) ---------------------------------------------------

    def start(self) -> None:
        """Connect in the background; updates go to the running loop's ``on_update``."""
        self._loop = asyncio.get_running_loop()
        self._synced = asyncio.Event()
        self._set_state("connecting")
        retry = KazooRetry(max_tries=-1, delay=0.1, max_delay=self.settings.reconnect_max)
        self._client = KazooClient(
            hosts=self.settings.hosts,
            timeout=self.settings.session_timeout,
            connection_retry=retry,
            logger=_kazoo_log,
        )
        self._client.add_listener(self._on_state)
        self._worker.start()
        self._client.start_async()

    async def wait_synced(self, timeout: float) -> bool:
        """Whether a first complete read arrived within ``timeout`` seconds."""
        assert self._synced is not None, "start() first"
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop watching: end the session and the worker (no update is posted after this)."""
        self._closing = True
        self._notes.put(None)
        await asyncio.to_thread(self._shutdown)
        self._set_state("stopped")

    def _shutdown(self) -> None:
        if self._client is not None:
            self._client.stop()
            self._client.close()
        if self._worker.is_alive():
            self._worker.join(10.0)

    def status(self) -> dict[str, object]:
        """What the source serves and how fresh it is (for status displays and tests)."""
        return {
            "source": self.settings.where,
            "state": self.state,
            "since": self.since,
            "last_sync": self.last_sync,
            "stale": self.stale,
            "interfaces": self.interfaces,
            "providers": self.providers,
            "counters": dict(self.counters),
        }

    def _set_state(self, state: str) -> None:
        self.state, self.since = state, time.time()

    # --- kazoo's threads: notes only ------------------------------------------------

    def _on_state(self, state: str) -> None:
        """kazoo's connection thread: must not block or call ZooKeeper."""
        if self._closing:
            return
        where = self.settings.where
        kept = f"{self.interfaces} interface(s), {self.providers} provider(s)"
        if state == KazooState.CONNECTED:
            again = self.counters["connects"] > 0
            self.counters["connects"] += 1
            self._set_state("connected")
            log.info("%s: connected%s; reading the providers", where, " again" if again else "")
            self._notes.put(_ALL)
        elif state == KazooState.SUSPENDED:
            self.counters["disconnects"] += 1
            self._set_state("suspended")
            log.warning(
                "%s: connection lost; the last good services stay in force (%s)", where, kept
            )
        elif state == KazooState.LOST:
            self.counters["session_expiries"] += 1
            self._set_state("lost")
            log.warning(
                "%s: session lost; the last good services stay in force (%s); the watches are "
                "re-created when connected again",
                where,
                kept,
            )

    def _on_watch(self, event: Any) -> None:
        """kazoo's callback thread: which node changed."""
        path = event.path
        if not path:  # a session event (kazoo resets every watch when a session ends)
            return
        if path == self.root:
            self._notes.put(_ROOT)
        elif path.startswith(self.root + "/") and path.endswith("/providers"):
            self._notes.put(path[len(self.root) + 1 : -len("/providers")])

    # --- the worker thread ----------------------------------------------------------

    def _work(self) -> None:
        while True:
            wait = self.settings.retry_delay if self.stale and self.state == "connected" else None
            try:
                note = self._notes.get(timeout=wait)
            except queue.Empty:
                note = _ALL  # a read failed while connected: try again
            notes = {note}
            while not self._notes.empty():
                notes.add(self._notes.get_nowait())
            if None in notes or self._closing:
                return
            if self._client is None or not self._client.connected:
                self.stale = True  # the next connect reads everything
                continue
            try:
                self._read(notes)
            except Exception:  # the worker's boundary: a bug must not end the watching
                self.counters["read_failures"] += 1
                self.stale = True
                log.exception("%s: reading the providers failed", self.settings.where)

    def _read(self, notes: set[str | None]) -> None:
        complete = _ALL in notes
        failed = False
        try:
            if complete or _ROOT in notes:
                self._read_root(complete)
            if not complete:
                for interface in sorted(n for n in notes if n and n != _ROOT):
                    self._read_interface(interface)
        except (KazooException, self._client.handler.timeout_exception) as exc:
            failed = True
            self.counters["read_failures"] += 1
            log.warning(
                "%s: read failed (%s); the last good providers stay in force",
                self.settings.where,
                type(exc).__name__,
            )
        self.stale = failed or (self.stale and not complete)
        if complete and not failed:
            self.last_sync = time.time()
        self._post(first=complete and not failed)

    def _read_root(self, everything: bool) -> None:
        children = self._children(self.root) or []
        for gone in set(self._tree) - set(children):
            self._forget(gone)
        for interface in sorted(children):
            if everything or interface not in self._tree:
                self._read_interface(interface)

    def _read_interface(self, interface: str) -> None:
        nodes = self._children(f"{self.root}/{interface}/providers")
        if nodes is None:
            self._forget(interface)
        else:
            self._tree[interface] = tuple(sorted(nodes))

    def _children(self, path: str) -> list[str] | None:
        """``path``'s children, with a child watch; None, with a watch for its creation, when
        it is not there (read again if it was created between the two calls)."""
        while True:
            try:
                children: list[str] = self._call("get_children", path, self._on_watch)
                return children
            except NoNodeError:
                if self._call("exists", path, self._on_watch) is None:
                    return None

    def _call(self, method: str, path: str, watch: Callable[[Any], None]) -> Any:
        """One kazoo read, bounded by ``read_timeout`` (raises on failure)."""
        pending = getattr(self._client, f"{method}_async")(path, watch=watch)
        return pending.get(timeout=self.settings.read_timeout)

    def _forget(self, interface: str) -> None:
        self._tree.pop(interface, None)
        self._groups.pop(interface, None)
        self._built.pop(interface, None)
        self._reported.pop(interface, None)

    def _post(self, first: bool) -> None:
        """Translate what changed; hand every interface's set to the control loop."""
        sets: dict[str, ResourceSet] = {}
        providers = 0
        for interface, nodes in sorted(self._tree.items()):
            built = self._built.get(interface)
            if built is None or built[0] != nodes:
                built = (nodes, self._translate(interface, nodes))
                self._built[interface] = built
            sets[self._origin(interface)] = built[1].resources
            providers += built[1].providers
        self.interfaces, self.providers = len(sets), providers
        self.counters["syncs"] += 1
        loop = self._loop
        if loop is None or self._closing:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
            loop.call_soon_threadsafe(self._deliver, sets, first)

    def _translate(self, interface: str, nodes: tuple[str, ...]) -> InterfaceServices:
        result = interface_services(
            self._origin(interface),
            interface,
            nodes,
            namespace=self.namespace,
            service_port=self.settings.service_port,
            known_groups=self._groups.get(interface, ()),
        )
        self._groups[interface] = result.groups
        reported = self._reported.setdefault(interface, set())
        for skipped in result.skipped:
            if skipped.node in reported:
                continue
            key = "malformed_providers" if skipped.malformed else "skipped_providers"
            self.counters[key] += 1
            log.warning(
                "%s/%s/providers/%s: provider skipped: %s",
                self.settings.where,
                interface,
                skipped.node,
                skipped.reason,
            )
        self._reported[interface] = {s.node for s in result.skipped}
        return result

    def _origin(self, interface: str) -> str:
        return f"{self.settings.where}/{interface}/providers"

    # --- the control loop -----------------------------------------------------------

    def _deliver(self, sets: Mapping[str, ResourceSet], first: bool) -> None:
        if self._closing:
            return
        self._on_update(sets)
        if first and self._synced is not None:
            self._synced.set()
