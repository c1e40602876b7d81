"""The proxy's event loop (uvloop) and a second loop on its own thread for the control side.

:func:`proxy_loop_factory` is the loop every proxy mode runs its data plane on: uvloop when it
is installed (the ``fast`` extra, part of the default install), else asyncio's; :func:`loop_name`
says which one runs, for the startup log line and the admin's ``/server_info``.

The data plane runs on the main thread's loop (uvloop when installed). Everything that talks
to a control plane -- the xDS client, and in ``metamesh up`` the ADS server and the file
watcher with its YAML parsing and translation -- runs here, on a plain asyncio loop, for two
reasons:

* grpc.aio is built and tested on asyncio's own loop; the proxy's loop stays free to be uvloop
  without depending on grpc.aio's support for it;
* parsing a large or hostile config directory, translating it and dry-running the result are
  CPU work that used to run between the proxy's reads. On this thread they hold the GIL only in
  CPython's switch-interval slices (5 ms), so traffic keeps flowing while a push is computed.

The two loops share nothing mutable. The control side hands finished, immutable
:class:`~metamesh.proxy.config.Snapshot` objects to the proxy loop with :func:`call_on`
(``run_coroutine_threadsafe``) and waits for the proxy to have applied each one before taking
the next, so snapshots are applied in order and a bind error still reaches the xDS client.

:class:`LoopThread` is started, given coroutines with :meth:`LoopThread.submit`, and joined with
:meth:`LoopThread.stop`, which cancels whatever is still running there; nothing is left behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def proxy_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when uvloop is installed; None (asyncio's default) otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """``"uvloop"`` or ``"asyncio"``: which loop runs ``loop`` (default: the running one)."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


class LoopThread:
    """One thread running one asyncio loop until :meth:`stop`."""

    def __init__(self, name: str = "metamesh-control") -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._error: BaseException | None = None

    def start(self) -> None:
        """Start the thread and return once its loop runs."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            # asyncio's own loop (not the policy's, which may be uvloop): see the docstring
            with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
                runner.run(self._serve())
        except BaseException as exc:  # surfaced by start() or stop()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on this thread's loop; a future the caller can wait on or wrap."""
        assert self.loop is not None, "LoopThread.start() first"
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` on this thread's loop (thread-safe, does not wait)."""
        assert self.loop is not None, "LoopThread.start() first"
        self.loop.call_soon_threadsafe(fn)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await, from another loop, ``coro`` run on this thread's loop."""
        return await asyncio.wrap_future(self.submit(coro))

    async def stop(self, timeout: float = 10.0) -> None:
        """Cancel what still runs on the thread, end its loop and join it (from another loop)."""
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        await asyncio.to_thread(self._thread.join, timeout)


def call_on(
    loop: asyncio.AbstractEventLoop, fn: Callable[[T], Awaitable[None]]
) -> Callable[[T], Awaitable[None]]:
    """``fn`` made callable from another loop: each call runs ``fn(arg)`` on ``loop``.

    The returned coroutine function completes when ``fn`` has completed there and re-raises
    what it raised, so the caller keeps its ordering and error handling.
    """

    async def on_loop(arg: T) -> None:
        async def run() -> None:
            await fn(arg)

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), loop))

    return on_loop
