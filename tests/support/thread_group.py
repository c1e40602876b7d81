"""Daemon threads owned by an in-process test peer, so closing the peer can join every one.

The codec relay (``tests/support/relay.py``) and the Apache Thrift server
(``tests/codecs/thrift/apache_peer.py``) serve each connection on a thread of its own. Both wake
those threads by shutting their sockets down, then :meth:`ThreadGroup.join` waits for them, so
no thread outlives the test that started it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class ThreadGroup:
    """Starts daemon threads and remembers them for :meth:`join`."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []

    def spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def join(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` seconds for each thread started so far."""
        for t in self._threads:
            t.join(timeout=timeout)
