"""Open-file limits: raise the soft limit at start, and size the client connection cap to it.

Every client and upstream connection is a file descriptor. With the common default of 1,024
open files, 2,000 idle clients used to lock every new client out (and on asyncio's loop, log
``socket.accept() out of system resource`` tens of thousands of times). Two things prevent it:

* :func:`raise_open_file_limit` lifts the soft ``RLIMIT_NOFILE`` to the hard limit at start (the
  hard limit is usually far higher: 20,000 to 1,048,576) and says what it did;
* :func:`default_max_connections` keeps the core's client connection cap below the limit with
  room to spare for upstream connections, the admin, the xDS channel and log files, so the
  process never runs out of descriptors because of clients: at the cap, a new client takes the
  place of the client idle longest (:class:`~metamesh.proxy.listener.ConnectionLimits`);
* when descriptors run short anyway (no cap, many upstreams), :class:`DescriptorGuard` makes
  the listeners (:class:`GuardedListener`) leave libuv's accept path (which drops clients
  quietly on ``EMFILE``) past half the limit for our own accept loop, which sees the error,
  and pause accepting just below the limit (new clients wait in the listen backlog) until
  enough are free; each pause counted, logged once per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from metamesh.proxy.listener import ConnectionLimits

log = logging.getLogger("metamesh.proxy")

#: Descriptors kept for everything that is not a client: at least this many, or a tenth.
RESERVE_MIN = 64
#: Highest soft limit set when the hard limit is unlimited.
UNLIMITED_CAP = 1 << 20


def raise_open_file_limit() -> int:
    """Set the soft open-file limit to the hard one (logged); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("open-file limit stays at %d (raising to %d failed: %s)", soft, target, exc)
            return soft
        log.info("open-file limit raised from %d to %d (the hard limit)", soft, target)
        return target
    log.info("open-file limit %d", soft)
    return UNLIMITED_CAP if soft == resource.RLIM_INFINITY else soft


def default_max_connections(open_files: int) -> int:
    """The client connection cap for a process allowed ``open_files`` descriptors."""
    return max(1, open_files - max(RESERVE_MIN, open_files // 10))


def process_limits(
    idle_timeout: float = 3600.0,
    frame_timeout: float = 30.0,
    max_connections: int | None = None,
    unread_timeout: float = 60.0,
    max_unread_bytes: int = 64 * 1024 * 1024,
) -> ConnectionLimits:
    """The limits a proxy process runs with: raises the open-file limit first, then caps
    client connections below it unless ``max_connections`` is given (0: no cap)."""
    open_files = raise_open_file_limit()
    cap = default_max_connections(open_files) if max_connections is None else max_connections
    limits = ConnectionLimits(idle_timeout, frame_timeout, cap, unread_timeout, max_unread_bytes)
    log.info(
        "client connections: cap %s, idle timeout %s, frame timeout %s",
        cap or "none",
        f"{idle_timeout:g}s" if idle_timeout > 0 else "off",
        f"{frame_timeout:g}s" if frame_timeout > 0 else "off",
    )
    return limits


# -- accepting near the limit ------------------------------------------------------------------

#: How listeners accept (:class:`DescriptorGuard` decides, :class:`GuardedListener` follows).
FAST: Final = "fast"  # the loop's own server (uvloop: libuv's C accept path)
CAREFUL: Final = "careful"  # our accept loop, which sees EMFILE/ENFILE
PAUSED: Final = "paused"  # nobody accepts: new connections wait in the listen backlog
#: Seconds accepting stays paused after an accept failed with EMFILE/ENFILE.
ERROR_PAUSE: Final = 0.5
#: Seconds after a failed accept the listeners keep our accept loop, whatever the count (the
#: shortage may be the system's, ENFILE, which the process's own count does not show).
ERROR_CAREFUL: Final = 10.0


def open_descriptors() -> int | None:
    """The descriptors this process has open now (Linux ``/proc``), None where unknown; the
    open-file limit when not one more can be opened (counting needs one)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself holds
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return None


class DescriptorGuard:
    """Decides how listeners accept, from the descriptors in use (sans-IO: counts and time are
    arguments).

    uvloop's libuv hides ``EMFILE``: it accepts and closes the queued connections with a
    reserved descriptor and reports nothing, so clients were dropped silently and nothing was
    counted. So listeners leave libuv's accept path before the limit comes near:

    * below ``careful`` (half the limit) they accept the fast way (:data:`FAST`);
    * from ``careful`` on, our own accept loop takes over (:data:`CAREFUL`, 45-65 us more per
      new connection): an ``EMFILE``/``ENFILE`` is seen there, counted, and pauses accepting
      for :data:`ERROR_PAUSE` s (then stays on our loop for :data:`ERROR_CAREFUL` s);
    * at ``high`` (the limit less a thirty-second, at least 8, kept for the upstream
      connections of the clients already accepted) accepting pauses (:data:`PAUSED`) until the
      count is below ``low``; the kernel queues new clients in the listen backlog meanwhile.

    The count is estimated per accepted connection (an addition and a comparison: the count
    of last time plus the connections accepted since and the change in the core's client and
    upstream connections, less the accepted ones that reached the core), and counted for real
    (``/proc/self/fd``, O(descriptors)) only when the estimate crosses a mark, and on the
    server's timer while not :data:`FAST`.
    """

    def __init__(self, limit: int, count: Callable[[], int | None] = open_descriptors) -> None:
        self.limit = limit
        room = max(8, limit // 32)
        #: Pause accepting at this many descriptors in use, resume below ``low``.
        self.high = max(2, limit - room)
        self.low = max(1, self.high - room)
        #: Leave libuv's accept path at this many, return to it below ``calm``.
        self.careful = min(self.low, max(1, limit // 2))
        self.calm = max(0, self.careful - room)
        self.mode: str = FAST
        self.paused_until = 0.0
        self.failed_at = -1e9
        #: Times accepting was paused (at ``high``, or after a failed accept).
        self.pauses = 0
        self._count = count
        self.counted = 0  # descriptors at the last count
        self._accepts = 0  # connections accepted, ever
        self._base = 0  # (accepts + tracked) at the last count

    def accepted(self, tracked: int) -> bool:
        """A connection was accepted; True when the estimate reaches the next mark (then
        :meth:`recount` and :meth:`decide`). ``tracked``: the core's client and upstream
        connections less the clients it was ever told of (see :meth:`estimate`)."""
        self._accepts += 1
        mark = self.careful if self.mode == FAST else self.high
        return self.counted + self._accepts + tracked - self._base >= mark

    def estimate(self, tracked: int) -> int:
        """The descriptors in use, estimated without a count."""
        return self.counted + self._accepts + tracked - self._base

    def recount(self, tracked: int) -> int:
        """Count the descriptors in use now (the estimate where they cannot be counted)."""
        n = self._count()
        if n is None:
            return self.estimate(tracked)
        self.counted, self._base = n, self._accepts + tracked
        return n

    def decide(self, used: int, now: float) -> str:
        """The mode for ``used`` descriptors in use at ``now`` (also kept in ``mode``)."""
        mode = self.mode
        if used >= self.high:
            if mode != PAUSED:
                self.pauses += 1
            mode = PAUSED
        elif mode == PAUSED and (used >= self.low or now < self.paused_until):
            pass
        elif (
            used >= self.careful
            or (mode != FAST and used >= self.calm)
            or now - self.failed_at < ERROR_CAREFUL
        ):
            mode = CAREFUL
        else:
            mode = FAST
        self.mode = mode
        return mode

    def accept_failed(self, now: float) -> None:
        """An accept failed for lack of descriptors: pause for :data:`ERROR_PAUSE` s."""
        if self.mode != PAUSED:
            self.pauses += 1
        self.mode = PAUSED
        self.paused_until = now + ERROR_PAUSE
        self.failed_at = now

    @classmethod
    def for_this_process(cls) -> DescriptorGuard | None:
        """A guard for the soft open-file limit in force (None: unlimited or not countable)."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or open_descriptors() is None:
            return None
        return cls(soft)


class AcceptOwner(Protocol):
    """What a :class:`GuardedListener` asks of its server."""

    def count_accept(self) -> None: ...
    def accept_failed(self, exc: OSError) -> None: ...
    def spawn_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...


class GuardedListener:
    """A listener's sockets, accepted from the way the :class:`DescriptorGuard` says.

    :data:`FAST`: an ``asyncio.Server`` (created by the caller) accepts. Leaving it, a
    duplicate of each listening socket is kept and the server closed (the sockets stay open
    through the duplicates: queued connections are not reset), then :data:`CAREFUL` reads
    them with our accept loop and :data:`PAUSED` does not. Closes like an ``asyncio.Server``.
    Modes change from timer and reader callbacks, never inside the server's accept callback
    (closing a uvloop server there drops the connection being accepted).
    """

    def __init__(
        self,
        owner: AcceptOwner,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], asyncio.Protocol],
        fast_factory: Callable[[], asyncio.Protocol],
        server: asyncio.Server,
    ) -> None:
        self._owner = owner
        self._loop = loop
        self._factory = factory  # for our accept loop (which counts accepts itself)
        self._fast_factory = fast_factory  # for the server (counts each accept it makes)
        self._servers = [server]
        self._held: list[socket.socket] = []
        self._reading = False
        self._closed = False
        self.mode: str = FAST

    @property
    def sockets(self) -> tuple[Any, ...]:
        if self._held:
            return tuple(self._held)
        return tuple(s for server in self._servers for s in server.sockets)

    def set_mode(self, mode: str) -> None:
        if self._closed or mode == self.mode:
            return
        if self.mode == FAST:
            try:
                held = [socket.socket(fileno=os.dup(s.fileno())) for s in self.sockets]
            except OSError as exc:  # no descriptor to hold the socket with: stay as we are
                log.debug("listener stays on the fast accept path: %s", exc)
                return
            for server in self._servers:
                server.close()
            self._servers, self._held = [], held
        self.mode = mode
        if mode == CAREFUL and not self._reading:
            for sock in self._held:
                self._loop.add_reader(sock.fileno(), self._on_readable, sock)
            self._reading = True
        elif mode != CAREFUL and self._reading:
            self._stop_reading()
        if mode == FAST:
            self._owner.spawn_task(self._serve_fast())

    async def _serve_fast(self) -> None:
        held, self._held = self._held, []
        for i, sock in enumerate(held):
            try:
                server = await self._loop.create_server(self._fast_factory, sock=sock)
            except OSError as exc:  # the rest keep being accepted by our loop
                log.debug("listener stays on our accept loop: %s", exc)
                self._held, self.mode, self._reading = held[i:], CAREFUL, True
                for rest in self._held:
                    self._loop.add_reader(rest.fileno(), self._on_readable, rest)
                return
            if self._closed or self.mode != FAST:  # changed while this ran
                server.close()
            else:
                self._servers.append(server)

    def _on_readable(self, sock: socket.socket) -> None:
        owner = self._owner
        for _ in range(64):
            if self.mode != CAREFUL:
                return
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    owner.accept_failed(exc)
                    return
                continue  # ECONNABORTED and the like: that client only
            conn.setblocking(False)
            owner.spawn_task(self._loop.connect_accepted_socket(self._factory, conn))
            owner.count_accept()

    def _stop_reading(self) -> None:
        self._reading = False
        for sock in self._held:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock.fileno())

    def close(self) -> None:
        if self._reading:
            self._stop_reading()
        self._closed = True
        for server in self._servers:
            server.close()
        for sock in self._held:
            sock.close()
        self._held = []

    async def wait_closed(self) -> None:
        for server in self._servers:
            await server.wait_closed()
