"""Run a ProxyServer on its own event loop in a background thread (for blocking real clients)."""

from __future__ import annotations

import asyncio
import inspect
import threading
from types import TracebackType
from typing import Any

from metamesh.proxy.config import Snapshot
from metamesh.runtime.server import ProxyServer


class ProxyThread:
    """``with ProxyThread(snapshot) as p:`` then connect to ``p.port(listener)``."""

    def __init__(self, snapshot: Snapshot, **server_options: Any) -> None:
        self.snapshot = snapshot
        self.server_options: dict[str, Any] = {"admin_port": None, **server_options}
        self.loop = asyncio.new_event_loop()
        self.server: ProxyServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.server = ProxyServer(self.snapshot, **self.server_options)
            self.loop.run_until_complete(self.server.start())
        except BaseException as e:  # reported to the test thread
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_until_complete(self.server.wait_stopped())
        self.loop.close()

    def __enter__(self) -> ProxyThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def port(self, listener: str) -> int:
        assert self.server is not None
        return self.server.listener_port(listener)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the proxy's loop thread (to read core state safely)."""
        fut: asyncio.Future[Any] = asyncio.run_coroutine_threadsafe(_call(fn, *args), self.loop)
        return fut.result(10)

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        server = self.server
        if server is not None and not self.loop.is_closed():
            asyncio.run_coroutine_threadsafe(server.close(), self.loop).result(10)
        self._thread.join(10)


async def _call(fn: Any, *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):  # a coroutine of the loop (the exporter's flush)
        result = await result
    return result
