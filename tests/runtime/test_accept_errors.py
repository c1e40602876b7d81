"""Out of file descriptors while accepting: counted and logged once per interval, not per try."""

from __future__ import annotations

import asyncio
import errno
import logging

import pytest

from metamesh.proxy.config import Snapshot
from metamesh.runtime.admin import render_prometheus
from metamesh.runtime.server import ProxyServer


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
