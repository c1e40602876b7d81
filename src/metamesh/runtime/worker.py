"""A worker process of ``--workers N`` (``python -m metamesh.runtime.worker FD``).

Started by :class:`~metamesh.runtime.workers.WorkerSet` with one end of a socketpair as ``FD``.
It runs a :class:`~metamesh.runtime.server.ProxyServer` without an admin server on its own
uvloop loop, binds every listener with ``SO_REUSEPORT`` and does what worker 0 asks, one message
at a time and in order:

* ``("init", seq, spec, index, local)``: settings (:class:`~metamesh.runtime.workers.WorkerSpec`),
  this worker's index and the proxy's own workload (Istio's ``source_*`` labels);
* ``("apply", seq, snapshot, ports)``: serve ``snapshot`` (pickled once by worker 0 for all
  workers) with this worker's share of the local rate limits; listeners configured on port 0
  bind the port worker 0 got; the answer is an error text or None;
* ``("admin", seq, target)``: the admin answer of this worker alone, merged by worker 0;
* ``("drain", seq, timeout)``: drain and exit.

The end of the pipe (worker 0 is gone) and SIGTERM also drain it: a worker never outlives its
proxy for longer than a drain. Exit code 0 after a drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import sys
from typing import IO, TYPE_CHECKING, Any, cast

from metamesh import logs
from metamesh.proxy.config import Snapshot
from metamesh.runtime.access_log import AccessLogFile, compile_format
from metamesh.runtime.admin import handle as admin_answer
from metamesh.runtime.bucket_share import share_local_rate_limits
from metamesh.runtime.fd_limits import process_limits
from metamesh.runtime.loops import LoopThread, proxy_loop_factory
from metamesh.runtime.server import ProxyServer
from metamesh.runtime.worker_wire import encode, read_message
from metamesh.runtime.workers import WorkerSpec, worker_status

if TYPE_CHECKING:
    from metamesh.runtime.identity import ProxyIdentity

log = logging.getLogger("metamesh.workers")


class _WholeLines:
    """The access log of a worker: lines are kept until :meth:`flush` writes them with one
    ``write`` on an ``O_APPEND`` file, so workers sharing one file never split each other's
    lines."""

    def __init__(self, path: str) -> None:
        self.fd = 1 if path == "-" else os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.append(text)
        if len(self.lines) >= 256:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self.lines:
            data = "".join(self.lines).encode()
            self.lines.clear()
            with contextlib.suppress(OSError):
                os.write(self.fd, data)


class Worker:
    """The worker side of the pipe (see the module docstring)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        channel: socket.socket | None = None,
    ) -> None:
        self.channel = channel  # connections handed over by worker 0 (runtime/handover.py)
        self.reader = reader
        self.writer = writer
        self.server: ProxyServer | None = None
        self.spec: WorkerSpec | None = None
        self.index = 0
        self._stopper: asyncio.Task[None] | None = None
        self._control: LoopThread | None = None
        self._agent: ProxyIdentity | None = None

    async def run(self) -> int:
        while (message := await read_message(self.reader)) is not None:
            kind, seq = message[0], message[1]
            if kind == "drain":
                await self._drain(float(message[2]))
                return 0
            answer = await self._answer(kind, message[2:])
            self.writer.write(encode(("done", seq, answer)))
        if self.server is not None and not self.server.draining:
            log.info("worker %d: worker 0 is gone; draining", self.index)
        if self.server is not None:
            await self._drain(self.spec.drain_timeout if self.spec is not None else 10.0)
        return 0

    async def _close_pipe_when_stopped(self, server: ProxyServer) -> None:
        """After a drain started by SIGTERM: end :meth:`run`'s read loop."""
        await server.wait_stopped()
        self.writer.close()

    async def _answer(self, kind: str, args: tuple[Any, ...]) -> Any:
        if kind == "init":
            await self._start(*args)
            return None
        assert self.server is not None and self.spec is not None, "init first"
        if kind == "apply":
            pickled, ports = args
            snapshot = pickle.loads(pickled)
            self.server.port_overrides = ports
            try:
                await self.server.apply_snapshot(
                    share_local_rate_limits(snapshot, self.index, self.spec.count)
                )
            except OSError as exc:  # retried by the server's timer, like worker 0's
                return f"a listener cannot bind: {exc}"
            return None
        if kind == "admin":
            return admin_answer(self.server, args[0], True)
        if kind == "status":
            return worker_status(self.server)
        return f"unknown message {kind!r}"

    async def _start(self, spec: WorkerSpec, index: int, local: Any) -> None:
        from metamesh.runtime.main import load_tls

        self.spec, self.index = spec, index
        logging.basicConfig(  # metamesh's log format, each line saying which worker wrote it
            level=spec.log_level.upper(),
            format=logs.FORMAT.replace("%(name)s", f"%(name)s[worker {index}]"),
            stream=sys.stderr,
        )
        access_log: IO[str] | AccessLogFile | None = None
        if spec.access_log is not None:
            lines = cast(IO[str], _WholeLines(spec.access_log))
            access_log = lines
            if spec.access_log_format is not None:  # checked by worker 0 before it started us
                access_log = AccessLogFile(lines, compile_format(spec.access_log_format))
        server = ProxyServer(
            Snapshot(),
            admin_port=None,
            access_log=access_log,
            limits=process_limits(**spec.limits),
            tls=load_tls(spec.tls_files),
        )
        server.reuse_port = spec.accept == "reuseport"
        server.accepts_handed_over = spec.accept == "handover"
        server.core.stats.local = local
        if spec.tracing is not None:
            from metamesh.runtime.tracing import enable_tracing

            enable_tracing(server, spec.tracing)
        if spec.identity is not None:  # a certificate of its own before any listener binds
            from metamesh.runtime.identity import ProxyIdentity

            self._control = LoopThread("metamesh-identity")
            self._control.start()
            self._agent = ProxyIdentity(spec.identity, self._control)
            server.tls = await self._agent.start()
        await server.start()
        loop = asyncio.get_running_loop()
        if server.accepts_handed_over and self.channel is not None:
            from metamesh.runtime.handover import receive_handed_over

            receive_handed_over(server, self.channel)
        loop.add_signal_handler(signal.SIGTERM, server.request_drain, spec.drain_timeout)
        loop.add_signal_handler(signal.SIGINT, server.request_drain, spec.drain_timeout)
        self.server = server
        self._stopper = loop.create_task(self._close_pipe_when_stopped(server))

    async def _drain(self, timeout: float) -> None:
        if self.server is not None:
            await self.server.drain(timeout)
            await self.server.wait_stopped()
        await self.stop_identity()

    async def stop_identity(self) -> None:
        if self._agent is not None:
            self._agent.stop()
            self._agent = None
        if self._control is not None:
            await self._control.stop()
            self._control = None


async def serve(fd: int, channel_fd: int | None = None) -> int:
    """Serve as a worker on the socketpair end ``fd`` until told to drain; connections handed
    over arrive on ``channel_fd``."""
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    channel = socket.socket(fileno=channel_fd) if channel_fd is not None else None
    worker = Worker(reader, writer, channel)
    try:
        return await worker.run()
    finally:
        if worker.server is not None and not worker.server.draining:
            await worker.server.close()
        await worker.stop_identity()
        writer.close()


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or not all(a.isdigit() for a in argv[1:]):
        print(
            "usage: python -m metamesh.runtime.worker FD [FD] (started by --workers)",
            file=sys.stderr,
        )
        return 2
    channel = int(argv[2]) if len(argv) == 3 else None
    with asyncio.Runner(loop_factory=proxy_loop_factory()) as runner:
        return runner.run(serve(int(argv[1]), channel))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
