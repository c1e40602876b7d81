"""Open-file limits: raise the soft limit at start, and size the client connection cap to it.

Every client and upstream connection is a file descriptor. With the common default of 1,024
open files, 2,000 idle clients used to lock every new client out (and on asyncio's loop, log
``socket.accept() out of system resource`` tens of thousands of times). Two things prevent it:

* :func:`raise_open_file_limit` lifts the soft ``RLIMIT_NOFILE`` to the hard limit at start (the
  hard limit is usually far higher: 20,000 to 1,048,576) and says what it did;
* :func:`default_max_connections` keeps the core's client connection cap below the limit with
  room to spare for upstream connections, the admin, the xDS channel and log files, so the
  process never runs out of descriptors because of clients: at the cap, a new client takes the
  place of the client idle longest (:class:`~metamesh.proxy.listener.ConnectionLimits`).
"""

from __future__ import annotations

import logging
import resource

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
