"""Out of file descriptors while accepting: counted and logged once per interval, not per try."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from metamesh.proxy.config import Snapshot
from metamesh.runtime.admin import render_prometheus
from metamesh.runtime.fd_limits import (
    CAREFUL,
    ERROR_CAREFUL,
    ERROR_PAUSE,
    FAST,
    PAUSED,
    DescriptorGuard,
)
from metamesh.runtime.server import ProxyServer
from tests.runtime.test_drain_e2e import config


async def _storm(caplog: pytest.LogCaptureFixture) -> ProxyServer:
    server = ProxyServer(Snapshot(), admin_port=None, tune_gc=False)
    await server.start()
    loop = asyncio.get_running_loop()
    for _ in range(1000):  # what asyncio's accept loop reports on every failed attempt
        loop.call_exception_handler(
            {
                "message": "socket.accept() out of system resource",
                "exception": OSError(errno.EMFILE, "Too many open files"),
            }
        )
    await server.close()
    return server


def test_emfile_while_accepting_is_counted_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    server = asyncio.run(_storm(caplog))
    assert server.accept_errors == 1000
    lines = [r for r in caplog.records if "out of file descriptors" in r.getMessage()]
    assert len(lines) == 1
    assert not [r for r in caplog.records if "out of system resource" in r.getMessage()]
    assert b"metamesh_downstream_accept_errors_total 1000.0" in render_prometheus(server)


# -- the descriptor guard (sans-IO) -------------------------------------------------------------


def test_guard_marks_leave_room_for_upstreams() -> None:
    g = DescriptorGuard(64, lambda: 0)
    assert (g.careful, g.calm, g.low, g.high) == (32, 24, 48, 56)
    g = DescriptorGuard(1024, lambda: 0)
    assert (g.careful, g.calm, g.low, g.high) == (512, 480, 960, 992)


def test_guard_modes_follow_the_count_with_hysteresis() -> None:
    g = DescriptorGuard(64, lambda: 0)
    assert g.decide(31, 0.0) == FAST
    assert g.decide(32, 0.0) == CAREFUL
    assert g.decide(25, 0.0) == CAREFUL  # back to the fast path only below calm
    assert g.decide(23, 0.0) == FAST
    assert g.decide(56, 0.0) == PAUSED
    assert g.decide(50, 0.0) == PAUSED  # resumes only below low
    assert g.decide(47, 0.0) == CAREFUL
    assert g.decide(60, 1.0) == PAUSED
    assert g.decide(10, 1.0) == FAST
    assert g.pauses == 2


def test_guard_pauses_briefly_after_a_failed_accept() -> None:
    g = DescriptorGuard(64, lambda: 0)
    g.accept_failed(now=10.0)
    assert g.mode == PAUSED and g.pauses == 1
    assert g.decide(40, 10.0 + ERROR_PAUSE / 2) == PAUSED
    assert g.decide(10, 10.0 + ERROR_PAUSE) == CAREFUL  # few in use: ENFILE, the system's
    assert g.decide(10, 10.0 + ERROR_CAREFUL - 0.1) == CAREFUL
    assert g.decide(10, 10.0 + ERROR_CAREFUL) == FAST


def test_guard_estimate_counts_accepts_and_the_cores_connections() -> None:
    counts = iter([20, 30])
    g = DescriptorGuard(64, lambda: next(counts))
    assert g.recount(tracked=0) == 20
    assert not any(g.accepted(tracked=0) for _ in range(11))  # 31 estimated
    assert g.accepted(tracked=0)  # 32: the careful mark, time to count
    # 5 of those reached the core (tracked: +5 clients, -5 told of), 3 closed, 2 upstreams
    assert g.estimate(tracked=5 - 3 + 2 - 5) == 32 - 3 + 2
    assert g.recount(tracked=-1) == 30
    assert g.estimate(tracked=-1) == 30


# -- a real EMFILE on our accept loop (uvloop) ------------------------------------------------

_EMFILE_SCRIPT = """
import asyncio, logging, resource, socket, sys, uvloop
from metamesh.proxy.config_yaml import load_snapshot
from metamesh.runtime.fd_limits import CAREFUL, FAST
from metamesh.runtime.server import ProxyServer

async def main():
    server = ProxyServer(load_snapshot(sys.argv[1]), admin_port=None, tune_gc=False)
    await server.start()
    port = server.listener_port("calc")
    guard = server.fd_guard
    guard.decide(guard.careful, server.now())  # as if half the files were in use:
    server._set_accept_mode(CAREFUL)  # our accept loop
    server._fd_recount_at = server.now() + 30  # no periodic count: the accept meets EMFILE
    hog = []
    try:
        while True:
            hog.append(open("/dev/null"))
    except OSError:
        pass
    hog.pop().close()  # one left: the client's socket below
    client = socket.socket()
    client.setblocking(False)
    client.connect_ex(("127.0.0.1", port))
    for _ in range(50):
        await asyncio.sleep(0.01)
    failed = server.accept_errors
    for f in hog:
        f.close()
    for _ in range(300):
        await asyncio.sleep(0.01)
        if server.core.stats.active_downstream_connections:
            break
    print(failed, guard.pauses, server.core.stats.active_downstream_connections, guard.mode)
    client.close()
    await server.close()

logging.basicConfig(level=logging.WARNING)
uvloop.install()
asyncio.run(main())
"""


def test_emfile_on_uvloop_is_seen_counted_and_accepting_resumes(tmp_path: Path) -> None:
    """Our accept loop (the listeners' mode past half the limit) sees the EMFILE libuv would
    hide: counted, logged once, accepting paused; the client waits in the backlog and is
    served once descriptors are free again."""
    run = _run_with_64_files(_EMFILE_SCRIPT, tmp_path)
    assert run.returncode == 0, run.stderr
    failed, pauses, served, mode = run.stdout.split()
    assert int(failed) >= 1 and int(pauses) >= 1
    assert served == "1"  # the client waited in the backlog, then was accepted
    assert mode == CAREFUL  # our accept loop served it; it stays on for ERROR_CAREFUL s
    assert run.stderr.count("out of file descriptors while accepting (Too many open files") == 1


def _run_with_64_files(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``script`` in a Python process limited to 64 open files, given a one-listener config."""
    path = tmp_path / "proxy.yaml"
    path.write_text(config(0, 1))
    return subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True, text=True, timeout=60, preexec_fn=_limit_to_64,
    )  # fmt: skip


def _limit_to_64() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


_HANDOVER_SCRIPT = """
import asyncio, logging, socket, sys, uvloop
from metamesh.proxy.config_yaml import load_snapshot
from metamesh.runtime.handover import receive_handed_over
from metamesh.runtime.server import ProxyServer

async def main():
    server = ProxyServer(load_snapshot(sys.argv[1]), admin_port=None, tune_gc=False)
    server.accepts_handed_over = True  # a worker of --worker-accept handover: binds nothing
    await server.start()
    worker0, here = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    stop = receive_handed_over(server, here)
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    hog = []
    try:
        while True:
            hog.append(open("/dev/null"))
    except OSError:
        pass
    socket.send_fds(worker0, [b"calc"], [conn.fileno()])  # worker 0 hands a client over
    for _ in range(20):
        await asyncio.sleep(0.01)
    for f in hog:
        f.close()
    print(server.accept_errors, server.core.stats.downstream_connections_total)
    stop()
    await server.close()

logging.basicConfig(level=logging.WARNING)
uvloop.install()
asyncio.run(main())
"""


def test_a_hand_over_worker_out_of_descriptors_counts_the_lost_connection(
    tmp_path: Path,
) -> None:
    """The kernel drops a descriptor sent to a process that has none left (the message
    arrives truncated): the worker counts it as an accept error and logs it, not silence."""
    run = _run_with_64_files(_HANDOVER_SCRIPT, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1", "0"]
    assert run.stderr.count("out of file descriptors while accepting (Too many open files") == 1
