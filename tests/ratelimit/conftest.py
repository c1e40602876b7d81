"""Fixtures: a private real ``redis-server`` on 127.0.0.1 (a free port, no persistence).

The server is a subprocess started per test module and killed afterwards; tests skip with a
reason only when the ``redis-server`` binary is missing (scripts/setup.sh installs it).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.support.ports import free_port


class RedisProcess:
    """A running ``redis-server``; :meth:`stop` and :meth:`start` for outage tests."""

    def __init__(self, binary: str, *extra_args: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        #: More redis-server options (``--requirepass pw``, ``--cluster-enabled yes``).
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
             *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def running_redis(*extra_args: str, port: int | None = None) -> Iterator[RedisProcess]:
    """A started :class:`RedisProcess`, stopped on exit; skips when redis-server is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it)")
    server = RedisProcess(binary, *extra_args, port=port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisProcess]:
    with running_redis() as server:
        yield server
