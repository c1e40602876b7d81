"""The proxy process: listeners, upstream connects, per-turn flushing, timers and drain.

:class:`ProxyServer` runs one :class:`~metamesh.proxy.connection.ConnectionManager` on the
current event loop (uvloop when the CLI finds it). Its job is mechanical:

* **Time once per turn, coalesced writes, one precise timer.** The per-turn half lives in
  :class:`~metamesh.runtime.protocols.Turn` (compiled in the native build): the loop clock is
  read once per turn, each dirty peer is written once per turn (one syscall per peer per turn
  instead of one per frame), and a single ``call_at`` stays armed for the core's earliest
  deadline (request timeouts, retry back-offs, delayed faults, ends of ejections, connect
  timeouts). The server executes the control actions the flush hands it; a slow housekeeping
  tick flushes the access log and retries listeners that could not bind.
* **Tasks are owned.** Every connect task and rate limit check (:mod:`.ratelimit_client`) is
  kept in a set until done and cancelled on close.
* **Garbage collection tuned for a request loop.** Every proxied request allocates a few
  short-lived container objects (messages, metadata maps, in-flight records); with CPython's
  default thresholds the collector runs every 700 allocations and its older generations keep
  re-walking the whole heap, which cost ~15% of the core's CPU per Dubbo request.
  :func:`tune_gc` freezes what exists at start-up (config, modules) out of the collector's
  view and collects the young generation 14x less often (``ProxyServer(tune_gc=False)`` opts
  out).
* **Drain.** :meth:`drain` stops accepting, closes each client as soon as it is owed nothing
  (with Dubbo's read-only notice first, and a lingering close), answers what is left at the
  deadline with protocol-native errors and returns as soon as every client is done; SIGTERM
  and SIGINT trigger it in :meth:`serve_forever`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import logging
import random
import signal
import ssl
from collections.abc import Callable, Coroutine
from typing import IO, TYPE_CHECKING, Any, cast

from metamesh.proxy.codec_ref import resolve_codec
from metamesh.proxy.config import Cluster, Snapshot
from metamesh.proxy.connection import (
    ACCESS_LOG,
    CLOSE_DOWNSTREAM,
    CLOSE_UPSTREAM,
    CONNECT,
    LOG,
    ConnectionLimits,
    ConnectionManager,
)
from metamesh.proxy.core import SPAN
from metamesh.proxy.filters.ratelimit import RATELIMIT_CHECK
from metamesh.proxy.upstream import Upstream, UpstreamState
from metamesh.runtime.access_log import AccessLogFile
from metamesh.runtime.fd_limits import (
    ERROR_PAUSE,
    FAST,
    PAUSED,
    DescriptorGuard,
    GuardedListener,
)
from metamesh.runtime.intercept import marked_connection
from metamesh.runtime.protocols import DownstreamProtocol, Turn, UpstreamProtocol
from metamesh.runtime.ratelimit_client import RateLimitClient
from metamesh.runtime.tls import TlsCredentials, origination_context, peer_sans_ok
from metamesh.runtime.tls_protocols import TlsClientProtocol, TlsServerProtocol

if TYPE_CHECKING:
    from metamesh.runtime.handover import HandOverListener
    from metamesh.runtime.otlp import SpanExporter
    from metamesh.runtime.sidecar import Sidecar
    from metamesh.runtime.workers import WorkerSet

log = logging.getLogger("metamesh.proxy")

TIMER_INTERVAL = 0.1
#: Seconds a drained client connection may stay half-open (our FIN sent) before it is closed.
LINGER = 1.0
ACCEPT_ERROR_LOG_EVERY = 10.0
MAX_REBIND_BACKOFF = 5.0  # seconds between attempts to bind a listener whose address is taken
#: Collector thresholds while serving (CPython's defaults are 700, 10, 10).
GC_THRESHOLDS = (10_000, 20, 20)


def tune_gc() -> None:
    """Move every object alive now out of the collector's view; collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class ProxyServer:
    """Serve ``snapshot``'s listeners; see the module docstring."""

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        admin_port: int | None = 15000,
        admin_host: str = "127.0.0.1",
        access_log: IO[str] | AccessLogFile | None = None,
        rng: random.Random | None = None,
        high_water: int = 256 * 1024,
        low_water: int = 64 * 1024,
        tune_gc: bool = True,
        limits: ConnectionLimits | None = None,
        tls: TlsCredentials | None = None,
        sidecar: Sidecar | None = None,
        workers: WorkerSet | None = None,
    ) -> None:
        #: ``--workers N``: this process is worker 0 of N (runtime/workers.py); it serves its
        #: share of the local rate limits and hands every snapshot to the others.
        self.workers = workers
        if workers is not None:
            workers.snapshot = snapshot
            snapshot = workers.share(snapshot)
        #: Listeners bind with SO_REUSEPORT (every worker binds each listener), unless worker 0
        #: accepts for all and hands connections over (runtime/handover.py).
        self.reuse_port = workers is not None and not workers.hands_over
        #: A worker in hand-over mode binds nothing: worker 0 sends it its connections.
        self.accepts_handed_over = False
        #: Ports to bind for listeners configured on port 0 (a worker binds worker 0's port).
        self.port_overrides: dict[str, int] = {}
        self.core = ConnectionManager(
            snapshot, resolve_codec, rng, access_log=access_log is not None, limits=limits
        )
        self.admin_port = admin_port
        self.admin_host = admin_host
        #: The workload certificate for ``tls_mode`` listeners (None: none can be served).
        self.tls = tls
        #: SIMPLE / MUTUAL client contexts by (certificate, key, CA) file names.
        self._origination: dict[tuple[str, str, str], ssl.SSLContext] = {}
        self.access_log = access_log
        #: Exports the core's trace spans (runtime/tracing.py ``enable_tracing``), or None.
        self.tracing: SpanExporter | None = None
        self.tune_gc = tune_gc
        self.high_water = high_water
        self.low_water = low_water
        self.readers: set[DownstreamProtocol] = set()
        self.upstream_congested = 0
        self.draining = False
        self.ready = False
        #: The state of the config sources feeding this proxy's control plane, when they run
        #: in this process (``metamesh up`` with ZooKeeper or Kubernetes): the admin's
        #: ``/ready`` detail and ``/server_info`` ``config_sources``.
        self.config_sources: Callable[[], dict[str, Any]] | None = None
        #: The xDS client's last rejected config (``proxy --xds``, ``up``): the dashboard's
        #: NACK per proxy. None when the config is static.
        self.last_nack: Callable[[], str | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.turn: Turn | None = None
        self._servers: dict[str, GuardedListener | HandOverListener] = {}
        self._admin: asyncio.Server | None = None
        self._connects: dict[Upstream, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = asyncio.Event()
        #: listeners in the config that could not bind yet: name -> (next attempt, backoff s)
        self.unbound: dict[str, tuple[float, float]] = {}
        #: Accepts that failed for lack of file descriptors (see _on_loop_error).
        self.accept_errors = 0
        self._accept_error_logged_at = -1e9
        #: How listeners accept near the open-file limit (set by :meth:`start`; fd_limits.py).
        self.fd_guard: DescriptorGuard | None = None
        self._fd_recount_at = 0.0
        self._fd_check_due = False
        self.ratelimit = RateLimitClient(lambda: self.core.snapshot.clusters)
        #: Interception and DNS (runtime/sidecar.py): listeners then take their connections
        #: from the capture ports instead of binding, and upstream sockets carry its mark.
        self.sidecar = sidecar

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every listener (and the admin server) on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(self._on_loop_error)
        self.turn = Turn(self.core, self._loop, self._execute)
        self.fd_guard = DescriptorGuard.for_this_process()
        for name in self.core.listeners:
            await self._listen(name)
        if self.sidecar is not None:
            await self.sidecar.start(self)
        if self.admin_port is not None:
            from metamesh.runtime.admin import start_admin

            self._admin = await start_admin(self, self.admin_host, self.admin_port)
        self._timer = self._loop.call_later(TIMER_INTERVAL, self._on_timer)
        if self.workers is not None:  # the other workers bind the ports this one got
            self.workers.ports = self._zero_ports()
            await self.workers.start(self)
        if self.tune_gc:
            tune_gc()
        if self.fd_guard is not None:  # what the listeners, admin and the rest hold
            self.fd_guard.recount(self._fd_tracked())
        self.ready = True

    async def _listen(self, name: str) -> None:
        if self.sidecar is not None and not self.sidecar.binds_listeners:
            return  # served through the capture ports (runtime/capture.py)
        if self.accepts_handed_over:
            return  # worker 0 accepts and hands the connections over (runtime/handover.py)
        cfg = self.core.listeners[name].config
        loop = self._loop
        assert loop is not None
        if cfg.tls_mode and self.tls is None:
            raise OSError(
                f"listener {name} asks for {cfg.tls_mode} TLS but the proxy has no certificate"
            )
        factory = self.protocol_factory(name)
        counted = self._counting(factory)
        port = self.port_overrides.get(name, cfg.port)
        if self.workers is not None and self.workers.hands_over:
            from metamesh.runtime.handover import HandOverListener, listen_socket

            sock = listen_socket(cfg.address, port)
            targets = self.workers.handover_targets
            self._servers[name] = HandOverListener(self, name, sock, counted, targets)
            self._servers[name].set_mode(self.fd_guard.mode if self.fd_guard else FAST)
            return
        server = await loop.create_server(
            counted, cfg.address, port, reuse_address=True, reuse_port=self.reuse_port or None
        )
        listener = GuardedListener(self, loop, factory, counted, server)
        self._servers[name] = listener
        listener.set_mode(self.fd_guard.mode if self.fd_guard else FAST)

    def protocol_factory(self, name: str) -> Callable[[], asyncio.Protocol]:
        """The protocol of a new client connection of listener ``name``."""
        turn = self.turn
        assert turn is not None

        def factory() -> asyncio.Protocol:
            # the mode in force when the client connects (a PeerAuthentication edit applies
            # to new connections; established ones keep theirs)
            inner = DownstreamProtocol(self, turn, name)
            state = self.core.listeners.get(name)
            mode = state.config.tls_mode if state is not None else ""
            if not mode:
                return cast(asyncio.Protocol, inner)
            if self.tls is None:  # a listener bound plaintext, now asked for TLS (no certificate)
                return cast(asyncio.Protocol, _Refused())
            return cast(asyncio.Protocol, TlsServerProtocol(self.tls, mode, inner))

        return factory

    def _counting(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """``factory``, telling the descriptor guard of each connection accepted (for the
        loop's own accept path: the guard is consulted after that callback, not in it)."""
        guard = self.fd_guard
        if guard is None:
            return factory

        def counted() -> asyncio.Protocol:
            if guard.accepted(self._fd_tracked()) and not self._fd_check_due:
                self._fd_check_due = True
                asyncio.get_running_loop().call_soon(self._check_descriptors)
            return factory()

        return counted

    def _zero_ports(self) -> dict[str, int]:
        """The ports bound for listeners configured on port 0 (for the other workers)."""
        return {
            name: self.listener_port(name)
            for name, state in self.core.listeners.items()
            if state.config.port == 0 and name in self._servers
        }

    def listener_port(self, name: str) -> int:
        """The port a listener is bound to (useful when configured with port 0)."""
        server = self._servers.get(name)
        if server is None:  # intercepting: the listener's own port, reached by redirect
            return self.core.listeners[name].config.port
        port: int = server.sockets[0].getsockname()[1]
        return port

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop serving traffic (set by :meth:`start`)."""
        return self._loop

    @property
    def bound_admin_port(self) -> int | None:
        if self._admin is None:
            return None
        port: int = self._admin.sockets[0].getsockname()[1]
        return port

    async def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Swap config; opens new listeners, stops accepting on removed ones. A listener that
        cannot bind raises OSError after every other new listener is bound. With workers, the
        others have applied ``snapshot`` too when this returns."""
        workers = self.workers
        if workers is not None:
            workers.snapshot = snapshot
            try:
                await self._apply_own(workers.share(snapshot))
            finally:
                await workers.apply(snapshot, self._zero_ports())
        else:
            await self._apply_own(snapshot)

    async def _apply_own(self, snapshot: Snapshot) -> None:
        self.core.apply_snapshot(snapshot)
        for name in list(self._servers):
            if name not in self.core.listeners:
                self._servers.pop(name).close()
        for name in list(self.unbound):
            if name not in self.core.listeners:
                del self.unbound[name]
        failed: OSError | None = None
        for name in self.core.listeners:
            if name not in self._servers:
                try:
                    await self._listen(name)
                except OSError as exc:  # bind the others anyway, then report the first failure
                    failed = failed or exc
                    self._bind_failed(name)
        if failed is not None:
            raise failed

    def _bind_failed(self, name: str) -> None:
        """Retry a listener that could not bind (address in use...) with a capped backoff."""
        backoff = (
            min(self.unbound[name][1] * 2, MAX_REBIND_BACKOFF) if name in self.unbound else 0.5
        )
        self.unbound[name] = (self.now() + backoff, backoff)

    async def _rebind(self, name: str) -> None:
        if name not in self.core.listeners or name in self._servers or self.draining:
            self.unbound.pop(name, None)
            return
        try:
            await self._listen(name)
        except OSError as exc:
            self._bind_failed(name)
            log.debug("listener %s still cannot bind: %s", name, exc)
            return
        self.unbound.pop(name, None)
        cfg = self.core.listeners[name].config
        log.info("listener %s bound on %s:%s after a retry", name, cfg.address, cfg.port)

    async def drain(self, timeout: float = 10.0) -> None:
        """Graceful shutdown, finished as soon as every client is done (at most ``timeout``).

        1. Stop accepting (listeners closed), ``/ready`` answers DRAINING.
        2. The core tells each client its protocol's going-away notice (Dubbo's read-only
           event) and closes it at the first moment it is owed nothing and is not mid-frame
           (:meth:`~metamesh.proxy.connection.ConnectionManager.start_drain`); requests that
           still arrive are served. Closing is a lingering close: our side sends FIN once the
           last reply is written and reads (and drops) until the client closes too, up to
           :data:`LINGER` seconds, so a request racing our FIN cannot turn into a reset that
           destroys the reply before it.
        3. At ``timeout``, what is still owed is answered with a protocol-native error and
           every connection is closed.
        """
        if self.draining:
            await self._stopped.wait()
            return
        self.draining = True
        self.ready = False
        if self.sidecar is not None:  # interception rules go first, then stop accepting
            self.sidecar.release()
        for server in self._servers.values():
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        others = self._spawn(self.workers.drain(timeout)) if self.workers is not None else None
        self.core.start_drain()
        self.flush()
        while not self.core.drained and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if not self.core.drained:
            log.warning(
                "drain deadline (%.1fs): closing %d client connection(s), answering %d request(s)"
                " in flight with an error",
                timeout,
                len(self.core.downstreams),
                self.core.stats.active_requests,
            )
            self.core.end_drain(self.now())
            self.flush()
        linger_until = min(deadline, loop.time() + LINGER)
        while self.readers and loop.time() < linger_until:
            await asyncio.sleep(0.01)
        for reader in list(self.readers):
            if reader.transport is not None:
                reader.transport.close()
        self.core.close_all()
        self.flush()
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if others is not None:  # every worker done (or killed a few seconds past the deadline)
            await asyncio.gather(others, return_exceptions=True)
        await self.close()

    async def close(self) -> None:
        """Release everything immediately (no drain)."""
        if self._timer is not None:
            self._timer.cancel()
        if self.turn is not None:
            self.turn.cancel()
        for server in self._servers.values():
            server.close()
        self.core.close_all()
        self.flush()
        for _ in range(3):  # let the transports run their connection_lost callbacks
            await asyncio.sleep(0)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.ratelimit.close()
        if self.workers is not None:
            await self.workers.stop()
        if self.sidecar is not None:
            await self.sidecar.stop()
        if self._admin is not None:
            self._admin.close()
        if self.access_log is not None:
            self.access_log.flush()
        if self.tracing is not None:  # send the spans still queued
            await self.tracing.close()
        self._stopped.set()

    async def serve_forever(self, drain_timeout: float = 10.0) -> None:
        """Run until SIGTERM/SIGINT, then drain."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_drain, drain_timeout)
        await self._stopped.wait()

    def request_drain(self, timeout: float = 10.0) -> None:
        log.info("draining (deadline %.1fs)", timeout)
        self._spawn(self.drain(timeout))

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # -- per-turn machinery --------------------------------------------------------------

    def now(self) -> float:
        """The loop time of this turn (see :meth:`Turn.now`)."""
        if self.turn is None:  # not started: no turn to share a clock read with
            return asyncio.get_running_loop().time()
        return self.turn.now()

    def flush(self) -> None:
        """Write every dirty peer's output now and execute the core's actions."""
        if self.turn is not None:
            self.turn.flush()

    def _execute(self, action: tuple[Any, ...]) -> None:
        op = action[0]
        if op == CONNECT:
            up: Upstream = action[1]
            self._connects[up] = self._spawn(self._connect(up))
        elif op == CLOSE_DOWNSTREAM:
            handle = action[1].handle
            if handle is not None and handle.transport is not None:
                transport = handle.transport
                if self.draining and transport.can_write_eof():
                    transport.write_eof()  # lingering close (see drain)
                else:
                    transport.close()
        elif op == CLOSE_UPSTREAM:
            up = action[1]
            task = self._connects.get(up)
            if task is not None and not task.done():
                task.cancel()
            if up.handle is not None and up.handle.transport is not None:
                up.handle.transport.close()
        elif op == LOG:
            log.log(action[1], "%s", action[2])
        elif op == SPAN and self.tracing is not None:
            self.tracing.arrived()
        elif op == ACCESS_LOG and self.access_log is not None:
            if isinstance(self.access_log, AccessLogFile):  # --access-log-format
                self.access_log.record(action[1], action[2])
            else:
                self.access_log.write(json.dumps(action[1], separators=(",", ":")) + "\n")
        elif op == RATELIMIT_CHECK:  # an owned task per check; answers resume the request
            self._spawn(self.ratelimit.check(action, self._resume_request))

    def _resume_request(self, req: Any, token: int, allowed: bool | None) -> None:
        self.core.resume_request(req, token, allowed, self.now())

    async def _connect(self, up: Upstream) -> None:
        loop = self._loop
        turn = self.turn
        assert loop is not None and turn is not None
        e = up.endpoint
        config = up.cluster.config
        try:
            context = self._client_context(config) if config.tls_for(e) else None
            mark = self.sidecar.mark if self.sidecar is not None else None
            where: dict[str, Any] = (  # with interception: a socket carrying the proxy's mark
                {"host": e.address, "port": e.port}
                if mark is None
                else {"sock": await marked_connection(loop, e.address, e.port, mark)}
            )
            if context is None:
                transport, protocol = await loop.create_connection(
                    lambda: cast(asyncio.Protocol, UpstreamProtocol(self, turn, up)), **where
                )
            else:  # TLS over memory BIOs (runtime/tls_protocols.py: cheaper per request)
                tls = TlsClientProtocol(
                    context, config.tls_sni or None, UpstreamProtocol(self, turn, up)
                )
                transport, _ = await loop.create_connection(
                    lambda: cast(asyncio.Protocol, tls), **where
                )
                try:
                    await tls.handshake
                except BaseException:  # failed, or cancelled (the connect timed out)
                    transport.abort()
                    raise
                protocol = tls.inner
        except OSError as exc:  # ssl.SSLError included: a refused handshake is a failed connect
            self.core.upstream_connect_failed(up, exc.strerror or str(exc), self.now())
        else:
            if cast(UpstreamProtocol, protocol).refused:  # the peer had no mesh identity
                transport.close()
                reason = "the endpoint's certificate has none of the expected identities"
                self.core.upstream_connect_failed(up, reason, self.now())
            elif up.state is UpstreamState.CLOSED:  # timed out or closed while connecting
                transport.close()
        finally:
            self._connects.pop(up, None)

    def spawn_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task this server owns (cancelled by :meth:`close`)."""
        return self._spawn(coro)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_timer(self) -> None:
        loop = self._loop
        assert loop is not None
        now = self.now()
        self.core.on_timer(now)  # a safety net; deadlines normally fire on their own
        if self.access_log is not None:
            self.access_log.flush()
        for name, (due, backoff) in list(self.unbound.items()):
            if now >= due:
                self.unbound[name] = (now + backoff, backoff)  # one attempt in flight at a time
                self._spawn(self._rebind(name))
        guard = self.fd_guard
        if guard is not None:
            if guard.mode == PAUSED:  # every tick, to resume soon
                self._check_descriptors()
            elif now >= self._fd_recount_at and (
                guard.mode != FAST or guard.estimate(self._fd_tracked()) >= guard.calm
            ):
                self._fd_recount_at = now + max(1.0, guard.counted / 20_000)  # O(descriptors)
                self._check_descriptors()
        self._timer = loop.call_later(TIMER_INTERVAL, self._on_timer)

    def _client_context(self, config: Cluster) -> ssl.SSLContext | None:
        """The TLS context of connections to ``config``'s endpoints (None: plaintext)."""
        mode = config.tls_mode
        if not mode:
            return None
        if mode == "ISTIO_MUTUAL":
            if self.tls is None:
                raise OSError(f"{mode} TLS to {config.name}, but no workload certificate here")
            return self.tls.client_context
        context = self._origination.get(config.tls_files)
        if context is None:  # files read once per set of names (a new DestinationRule: anew)
            try:
                context = origination_context(*config.tls_files)
            except (OSError, ssl.SSLError) as exc:
                raise OSError(f"{mode} TLS to {config.name}: {exc}") from exc
            self._origination[config.tls_files] = context
        return context

    def upstream_identity_ok(self, transport: asyncio.BaseTransport, config: Cluster) -> bool:
        """The TLS upstream presented an identity ``config`` accepts: for ISTIO_MUTUAL a mesh
        identity (see :class:`TlsCredentials`), else one of the cluster's SANs if any."""
        sslobj = transport.get_extra_info("ssl_object")
        sans = config.tls_subject_alt_names
        if config.tls_mode != "ISTIO_MUTUAL":
            return peer_sans_ok(sslobj, sans)
        tls = self.tls
        return tls is not None and tls.peer_identity_ok(sslobj, sans)

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Out of file descriptors (EMFILE/ENFILE) while accepting: counted, logged once per
        :data:`ACCEPT_ERROR_LOG_EVERY` s instead of once per attempt (asyncio's loop retries
        every second and logged each time; uvloop's libuv drops the client quietly). Anything
        else goes to the loop's default handler."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            self.accept_errors += 1
            self._log_accept_error(exc.strerror or "EMFILE")
            return
        loop.default_exception_handler(context)

    def _fd_tracked(self) -> int:
        """The core's connections less the clients it was ever told of (the guard's input)."""
        core = self.core
        stats = core.stats
        return (
            stats.active_downstream_connections
            + len(core.upstreams)
            - stats.downstream_connections_total
        )

    def count_accept(self) -> None:
        """Our accept loop accepted a connection (see :class:`GuardedListener`)."""
        guard = self.fd_guard
        if guard is not None and guard.accepted(self._fd_tracked()):
            self._check_descriptors()

    def _check_descriptors(self) -> None:
        """Count the descriptors in use and switch the listeners to the mode the guard says
        (see :class:`~metamesh.runtime.fd_limits.DescriptorGuard`); a pause is counted as an
        accept error and logged once per :data:`ACCEPT_ERROR_LOG_EVERY` s."""
        self._fd_check_due = False
        guard = self.fd_guard
        if guard is None:
            return
        before = guard.mode
        used = guard.recount(self._fd_tracked())
        mode = guard.decide(used, self.now())
        if mode != before:
            self._set_accept_mode(mode)
            if mode == PAUSED:
                self.accept_errors += 1
                self._log_accept_error(
                    f"{used} of {guard.limit} in use, accepting paused until below {guard.low}"
                )
            else:
                log.debug("accepting (%s): %d file descriptors in use", mode, used)

    def accept_failed(self, exc: OSError) -> None:
        """An accept of our own failed for lack of descriptors: counted, accepting paused."""
        self.accept_errors += 1
        guard = self.fd_guard
        if guard is not None:  # the timer resumes once the guard allows
            guard.accept_failed(self.now())
        else:
            asyncio.get_running_loop().call_later(ERROR_PAUSE, self._set_accept_mode, FAST)
        self._set_accept_mode(PAUSED)
        self._log_accept_error(f"{exc.strerror}, accepting paused")

    def _set_accept_mode(self, mode: str) -> None:
        if not self.draining:
            for listener in self._servers.values():
                listener.set_mode(mode)

    def _log_accept_error(self, what: str) -> None:
        now = self.now()
        if now - self._accept_error_logged_at >= ACCEPT_ERROR_LOG_EVERY:
            self._accept_error_logged_at = now
            log.warning(
                "out of file descriptors while accepting (%s); %d time(s) so far, logged once "
                "per %.0f s",
                what,
                self.accept_errors,
                ACCEPT_ERROR_LOG_EVERY,
            )

    def set_upstream_congested(self, delta: int) -> None:
        """Pause reading from every client while any upstream's write buffer is full."""
        before = self.upstream_congested
        self.upstream_congested += delta
        if before == 0 and self.upstream_congested > 0:
            for reader in self.readers:
                if reader.transport is not None:
                    reader.transport.pause_reading()
        elif before > 0 and self.upstream_congested == 0:
            for reader in self.readers:
                if reader.transport is not None and not reader.paused_by_self:
                    reader.transport.resume_reading()


class _Refused(asyncio.Protocol):
    """A connection to a TLS listener while the proxy has no certificate: closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()
