"""``--workers N``: the proxy as N processes, each serving every listener on its own loop.

The process the user starts is worker 0. It serves traffic like a single-process proxy and it
is also the only one that talks to the outside: it holds the xDS client (one ADS stream and one
node for the whole proxy, so the control plane sees one proxy), the admin server and the config
sources of ``metamesh up``. :class:`WorkerSet` starts workers 1..N-1 as child processes
(``python -m metamesh.runtime.worker``) and keeps them in step:

* **Listeners are shared with SO_REUSEPORT.** Every worker binds each listener itself with
  ``SO_REUSEPORT`` and the kernel spreads new connections over the workers' sockets by a hash
  of the connection. A listener configured on port 0 is bound by worker 0 first and the others
  are told its port. Each worker has its own uvloop loop, upstream pools and health state.
  ``--worker-accept handover`` is the other design (:mod:`.handover`: worker 0 accepts and
  deals the connections round robin); docs/workers.md has both measured, and why this one is
  the default.
* **Config reaches every worker.** Worker 0 applies each snapshot (from ``--config`` or xDS)
  and sends it down a socketpair to every other worker (:mod:`.worker_wire`), waiting for each
  to have applied it, so an xDS ACK means the whole proxy runs the config. Snapshots are
  immutable; a worker that is (re)started gets the one in force.
* **Rate limits** are split evenly (:mod:`.bucket_share`).
* **A worker that dies is restarted** with a warning and ``metamesh_worker_restarts_total``;
  the others keep serving (its listening sockets close with it and the kernel sends new
  connections to the rest). A worker that keeps dying is restarted with a growing delay.
* **The admin answers for the whole proxy** (:mod:`.worker_admin`): worker 0 asks the others
  over the same socketpairs and merges their answers.
* **Drain.** SIGTERM to worker 0 drains every worker (each with the usual drain of issue 15)
  and worker 0 exits once all are done. The workers run in their own session, so a terminal's
  Ctrl-C reaches worker 0 only; a worker whose pipe to worker 0 closes (worker 0 killed) drains
  and exits by itself, and one sent SIGTERM directly drains too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from metamesh.proxy.config import Snapshot
from metamesh.runtime.bucket_share import share_local_rate_limits
from metamesh.runtime.worker_wire import dumps, encode, read_message

if TYPE_CHECKING:
    from metamesh.runtime.identity import IdentitySettings
    from metamesh.runtime.server import ProxyServer
    from metamesh.runtime.tracing import TracingSettings

log = logging.getLogger("metamesh.workers")

#: Seconds a worker has to start and apply the config in force before it is restarted.
START_TIMEOUT = 60.0
#: A worker that lived less than this is restarted after a growing delay (capped).
QUICK_DEATH = 5.0
MAX_RESTART_DELAY = 5.0
#: Seconds an admin question may take a worker (a busy worker is left out of the answer).
ASK_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker process needs to serve like worker 0 (sent to it when it starts)."""

    count: int
    log_level: str = "INFO"
    access_log: str | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    tls_files: tuple[str, str, str, str] | None = None
    tracing: TracingSettings | None = None
    drain_timeout: float = 10.0
    #: How connections reach the workers: ``"reuseport"`` (each binds every listener with
    #: SO_REUSEPORT) or ``"handover"`` (worker 0 accepts and sends them, runtime/handover.py).
    accept: str = "reuseport"
    #: ``--access-log-format`` (None: JSON lines), compiled again by each worker.
    access_log_format: str | None = None
    #: ``--ca``: each worker keeps its own certificate for the proxy's identity (its own
    #: agent, as worker 0 has), so no private key crosses a pipe.
    identity: IdentitySettings | None = None


def worker_status(server: ProxyServer) -> dict[str, Any]:
    """What ``/server_info`` ``workers`` says of a worker beyond its pid and state."""
    stats = server.core.stats
    return {
        "config_version": server.core.snapshot.version,
        "clients": stats.active_downstream_connections,
        "requests_in_flight": stats.active_requests,
    }


class WorkerHandle:
    """One child worker: its process, its pipe, the questions waiting for its answers."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        #: Worker 0's end of the datagram socketpair connections are handed over on.
        self.fd_channel: socket.socket | None = None
        self.state = "STARTING"
        self.restarts = 0
        self.started_at = 0.0
        self.config_version: str | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._seq = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def request(self, kind: str, *args: Any) -> Any:
        """Send ``(kind, seq, *args)``; the worker's answer (ConnectionError if it is gone)."""
        if self.writer is None or self.writer.is_closing():
            raise ConnectionError(f"worker {self.index} is not running")
        self._seq += 1
        seq = self._seq
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        try:
            self.writer.write(encode((kind, seq, *args)))
            await self.writer.drain()
            return await future
        finally:
            self._pending.pop(seq, None)

    async def read_answers(self, reader: asyncio.StreamReader) -> None:
        """Resolve questions with the worker's ``("done", seq, result)`` answers until EOF."""
        try:
            while (message := await read_message(reader)) is not None:
                if message[0] == "done":
                    future = self._pending.get(message[1])
                    if future is not None and not future.done():
                        future.set_result(message[2])
        finally:
            self.fail_pending()

    def fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"worker {self.index} exited"))


class WorkerSet:
    """Workers 1..N-1 of a proxy whose worker 0 is this process (see the module docstring)."""

    def __init__(self, spec: WorkerSpec, snapshot: Snapshot | None = None) -> None:
        self.spec = spec
        self.count = spec.count
        #: The snapshot as configured (each worker cuts its rate limit shares from it).
        self.snapshot = snapshot or Snapshot()
        #: Ports of listeners configured on port 0, as worker 0 bound them.
        self.ports: dict[str, int] = {}
        self.handles = [WorkerHandle(i) for i in range(1, spec.count)]
        self.stopping = False
        self._server: ProxyServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def hands_over(self) -> bool:
        return self.spec.accept == "handover"

    def handover_targets(self) -> list[socket.socket | None]:
        """Where new connections go in hand-over mode: None for worker 0, then the channel
        of every live worker."""
        channels = [h.fd_channel for h in self.handles if h.state == "LIVE"]
        return [None, *(c for c in channels if c is not None)]

    def share(self, snapshot: Snapshot, index: int = 0) -> Snapshot:
        return share_local_rate_limits(snapshot, index, self.count)

    async def start(self, server: ProxyServer) -> None:
        """Start every worker and wait until each serves the snapshot in force."""
        self._server = server
        started = await asyncio.gather(
            *(self._spawn(h) for h in self.handles), return_exceptions=True
        )
        for handle, result in zip(self.handles, started, strict=True):
            if isinstance(result, BaseException):
                await self.stop()
                raise OSError(f"worker {handle.index} did not start: {result}")

    async def _spawn(self, handle: WorkerHandle) -> None:
        parent_end, child_end = socket.socketpair()
        fds_parent, fds_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        fds_parent.setblocking(False)
        if handle.fd_channel is not None:
            handle.fd_channel.close()
        handle.fd_channel = fds_parent
        try:
            handle.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "metamesh.runtime.worker",
                str(child_end.fileno()),
                str(fds_child.fileno()),
                pass_fds=(child_end.fileno(), fds_child.fileno()),
                start_new_session=True,
            )
        finally:
            child_end.close()
            fds_child.close()
        handle.state = "STARTING"
        handle.started_at = time.monotonic()
        reader, handle.writer = await asyncio.open_connection(sock=parent_end)
        self._own(handle.read_answers(reader))
        self._own(self._watch(handle, handle.process))
        assert self._server is not None
        local = self._server.core.stats.local
        await asyncio.wait_for(
            handle.request("init", self.spec, handle.index, local), START_TIMEOUT
        )
        applied = None
        while applied is not self.snapshot:  # one that arrived meanwhile is sent too
            applied = self.snapshot
            await asyncio.wait_for(self._apply_one(handle, applied), START_TIMEOUT)
        handle.state = "LIVE"
        log.info("worker %d started (pid %s)", handle.index, handle.pid)

    async def _apply_one(
        self, handle: WorkerHandle, snapshot: Snapshot, pickled: bytes | None = None
    ) -> None:
        """Have ``handle``'s worker apply ``snapshot`` (``pickled``: it already pickled)."""
        data = pickled if pickled is not None else dumps(snapshot)
        error = await handle.request("apply", data, dict(self.ports))
        handle.config_version = snapshot.version
        if error:
            log.warning("worker %d: %s", handle.index, error)

    async def apply(self, snapshot: Snapshot, ports: dict[str, int]) -> None:
        """Hand ``snapshot`` to every running worker; return once each has applied it. A
        worker that is starting or gone gets it when it (re)starts."""
        self.snapshot = snapshot
        self.ports = ports
        live = [h for h in self.handles if h.state == "LIVE"]
        pickled = dumps(snapshot) if live else None  # once for every worker
        results = await asyncio.gather(
            *(self._apply_one(h, snapshot, pickled) for h in live), return_exceptions=True
        )
        for handle, result in zip(live, results, strict=True):
            if isinstance(result, BaseException):
                log.warning(
                    "worker %d missed config %s: %s", handle.index, snapshot.version, result
                )

    async def ask(self, target: str) -> list[tuple[int, str, bytes]]:
        """Every live worker's admin answer to ``target`` (a worker that fails to answer in
        :data:`ASK_TIMEOUT` is left out, and says so in the log)."""
        live = [h for h in self.handles if h.state == "LIVE"]
        results = await asyncio.gather(
            *(asyncio.wait_for(h.request("admin", target), ASK_TIMEOUT) for h in live),
            return_exceptions=True,
        )
        answers = []
        for handle, result in zip(live, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("worker %d did not answer %s: %r", handle.index, target, result)
            else:
                answers.append(result)
        return answers

    async def _watch(self, handle: WorkerHandle, process: asyncio.subprocess.Process) -> None:
        """Restart ``handle``'s worker when its process ends while the proxy serves."""
        code = await process.wait()
        handle.fail_pending()
        if handle.writer is not None:
            handle.writer.close()
        if self.stopping or handle.process is not process:
            handle.state = "EXITED"
            return
        handle.state = "RESTARTING"
        handle.restarts += 1
        lived = time.monotonic() - handle.started_at
        delay = min(0.1 * 2**handle.restarts, MAX_RESTART_DELAY) if lived < QUICK_DEATH else 0.0
        log.warning(
            "worker %d (pid %s) exited with %s after %.1f s; restarting it (restart %d)",
            handle.index,
            process.pid,
            f"signal {-code}" if code < 0 else f"code {code}",
            lived,
            handle.restarts,
        )
        await asyncio.sleep(delay)
        if self.stopping:
            handle.state = "EXITED"
            return
        try:
            await self._spawn(handle)
        except (OSError, TimeoutError, ConnectionError) as exc:
            log.error("worker %d could not be restarted: %s", handle.index, exc)
            if handle.process is not None and handle.process.returncode is None:
                handle.process.kill()  # its watch restarts it again

    async def drain(self, timeout: float) -> None:
        """Drain every worker (each finishes its clients, at most ``timeout``) and wait for
        their exits; a worker still there a few seconds after the deadline is killed."""
        self.stopping = True
        live = [h for h in self.handles if h.process is not None and h.state != "EXITED"]
        for handle in live:
            handle.state = "DRAINING"
            if handle.writer is not None and not handle.writer.is_closing():
                with contextlib.suppress(ConnectionError):
                    handle.writer.write(encode(("drain", 0, timeout)))
        await self._wait_exits(live, timeout + 5.0)

    async def stop(self) -> None:
        """Stop every worker now (SIGKILL after a short grace) and forget their tasks."""
        self.stopping = True
        live = [h for h in self.handles if h.process is not None and h.process.returncode is None]
        for handle in live:
            assert handle.process is not None
            with contextlib.suppress(ProcessLookupError):
                handle.process.terminate()
        await self._wait_exits(live, 5.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _wait_exits(self, handles: list[WorkerHandle], timeout: float) -> None:
        processes = [h.process for h in handles if h.process is not None]
        if not processes:
            return
        _, pending = await asyncio.wait(
            [asyncio.ensure_future(p.wait()) for p in processes], timeout=timeout
        )
        for task in pending:
            task.cancel()
        for process in processes:
            if process.returncode is None:
                log.warning("worker pid %s did not exit in time: killed", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for handle in handles:
            handle.state = "EXITED"

    def _own(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def info(self, server: ProxyServer) -> list[dict[str, Any]]:
        """``/server_info`` ``workers``: one entry per worker, worker 0 (this process) first,
        with what each says of itself (clients, requests in flight, config version)."""
        state = "LIVE" if server.ready else "DRAINING" if server.draining else "PRE_INITIALIZING"
        entries: list[dict[str, Any]] = [
            {"worker": 0, "pid": os.getpid(), "state": state, "restarts": 0}
        ]
        entries[0].update(worker_status(server))
        live = [h for h in self.handles if h.state == "LIVE"]
        answers = await asyncio.gather(
            *(asyncio.wait_for(h.request("status"), ASK_TIMEOUT) for h in live),
            return_exceptions=True,
        )
        status = {h.index: a for h, a in zip(live, answers, strict=True) if isinstance(a, dict)}
        for h in self.handles:
            entry: dict[str, Any] = {
                "worker": h.index,
                "pid": h.pid,
                "state": h.state,
                "restarts": h.restarts,
            }
            entry.update(status.get(h.index, {"config_version": h.config_version}))
            entries.append(entry)
        return entries

    def metrics(self) -> Iterator[Metric]:
        """``metamesh_workers`` (live worker processes) and restarts per worker."""
        live = 1 + sum(1 for h in self.handles if h.state == "LIVE")
        yield GaugeMetricFamily("metamesh_workers", "Worker processes serving traffic", value=live)
        restarts = CounterMetricFamily(
            "metamesh_worker_restarts", "Workers restarted after they died", labels=["worker"]
        )
        for h in self.handles:
            restarts.add_metric([str(h.index)], h.restarts)
        yield restarts
