"""The demo's mesh: ``metamesh up DIR`` as a child process, its config directory, its metrics.

The demo runs exactly what a user runs: ``python -m metamesh up DIR --admin-port N`` (the
embedded control plane and proxy, config pushed over xDS). Running it as a child keeps the
proxy on its own core, apart from the demo's servers and clients, and makes its clean-up a
matter of one process; the child is also told to exit if the demo dies without cleaning up
(``PR_SET_PDEATHSIG``; set in ``preexec_fn``, so the demo spawns it before starting any thread
of its own). Its stdout is read line by line: ``metamesh up`` prints what it serves
(one block per config version, one line per listener with its routes), which is how the demo
knows that a MetaRouter edit is in force. Its stderr is kept for error messages.

:class:`ConfigDir` fills the packaged manifests (``manifests/*.yaml``, ``$name`` placeholders)
with the addresses and ports picked at start and (re)writes ``metarouter.yaml`` atomically, the
way an editor saves. :func:`scrape` reads ``istio_requests_total`` and the proxy's local replies
from the admin's ``/stats/prometheus``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

PR_SET_PDEATHSIG = 1
SERVING_HEADER = "metamesh: serving "
ADMIN_LINE = re.compile(r"admin on 127\.0\.0\.1:(\d+)")
LABEL = re.compile(r'(\w+)="([^"]*)"')


class DemoError(Exception):
    """Something the demo cannot go on without; the message says what and what to do."""


def manifest(name: str) -> str:
    return resources.files("metamesh.demo").joinpath("manifests", name).read_text()


def port_is_free(address: str, port: int) -> bool:
    """Whether a server can listen there (SO_REUSEADDR, as asyncio's servers bind)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
    return port


class ConfigDir:
    """The watched directory: ``services.yaml`` once, ``metarouter.yaml`` per step."""

    def __init__(self, values: dict[str, object]) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="metamesh-demo-"))
        self.values = values
        self._write("services.yaml", Template(manifest("services.yaml")).substitute(values))

    def _write(self, name: str, text: str) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.path / name)

    def set_routes(self, manifest_name: str) -> None:
        self._write("metarouter.yaml", manifest(manifest_name))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the demo dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class MeshProcess:
    """``metamesh up`` as a child process; see the module docstring."""

    def __init__(self, directory: Path, admin_port: int) -> None:
        self.args = [
            *(sys.executable, "-m", "metamesh", "up", str(directory)),
            *("--admin-port", str(admin_port), "--log-level", "WARNING"),
        ]
        self._changed = threading.Condition()
        self._out: list[str] = []
        self._err: list[str] = []
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            self.args,
            preexec_fn=_die_with_parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, lines: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def stderr_tail(self, n: int = 8) -> str:
        with self._changed:
            return "\n".join(self._err[-n:])

    def _wait(self, found: object, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not found():  # type: ignore[operator]
                if self.proc.poll() is not None:
                    raise DemoError(
                        f"metamesh up exited ({self.proc.returncode}) while waiting for {what}:\n"
                        + self.stderr_tail()
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DemoError(f"timed out waiting for {what}:\n{self.stderr_tail()}")
                self._changed.wait(min(left, 0.2))

    def admin_port(self, timeout: float = 30.0) -> int:
        ports: list[int] = []

        def found() -> bool:
            ports.extend(int(m[1]) for line in self._out if (m := ADMIN_LINE.search(line)))
            return bool(ports)

        self._wait(found, "the proxy admin to start", timeout)
        return ports[0]

    def blocks(self) -> int:
        """How many serving blocks were printed so far (a mark for :meth:`wait_serving`)."""
        with self._changed:
            return sum(line.startswith(SERVING_HEADER) for line in self._out)

    def _last_block(self, after: int) -> list[str]:
        headers = [i for i, line in enumerate(self._out) if line.startswith(SERVING_HEADER)]
        if len(headers) <= after:
            return []
        block = [self._out[headers[-1]]]
        for line in self._out[headers[-1] + 1 :]:
            if not line.startswith("  "):
                break
            block.append(line)
        return block

    def wait_serving(self, expected: list[str], after: int, timeout: float = 20.0) -> list[str]:
        """Wait for a serving block newer than mark ``after`` whose lines hold ``expected``."""
        block: list[str] = []

        def found() -> bool:
            block[:] = self._last_block(after)
            return bool(block) and all(any(e in line for line in block) for e in expected)

        self._wait(found, "the mesh to serve " + ", ".join(expected), timeout)
        return block

    def stop(self) -> int:
        """SIGTERM (the proxy drains), then SIGKILL if it does not exit within 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for reader in self._readers:
            reader.join(2)
        return self.proc.returncode


@dataclass(frozen=True, slots=True)
class ProxyCounts:
    """From one scrape: requests per (destination_service, destination_version) by outcome."""

    ok: dict[tuple[str, str], int]
    failed: dict[tuple[str, str], int]
    local_replies: int

    def requests(self, service: str, version: str) -> int:
        key = (service, version)
        return self.ok.get(key, 0) + self.failed.get(key, 0)

    def errors(self) -> int:
        return sum(self.failed.values()) + self.local_replies


def parse_prometheus(text: str) -> ProxyCounts:
    ok: dict[tuple[str, str], int] = {}
    failed: dict[tuple[str, str], int] = {}
    local = 0
    for line in text.splitlines():
        if line.startswith("istio_requests_total{"):
            labels = dict(LABEL.findall(line.partition("}")[0]))
            key = (labels.get("destination_service", ""), labels.get("destination_version", ""))
            into = ok if labels.get("response_code") == "0" else failed
            into[key] = into.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("metamesh_local_replies_total{"):
            local += int(float(line.rsplit(" ", 1)[1]))
    return ProxyCounts(ok, failed, local)


def scrape(admin_port: int) -> ProxyCounts:
    url = f"http://127.0.0.1:{admin_port}/stats/prometheus"
    with contextlib.closing(urllib.request.urlopen(url, timeout=5)) as reply:
        return parse_prometheus(reply.read().decode())
