"""A free TCP port on 127.0.0.1, for a server that must bind a port known in advance (a
restart on the same port, a config written before the process starts)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick; a race is possible but rare)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
