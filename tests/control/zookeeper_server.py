"""A real ZooKeeper for tests: the Debian ``zookeeper`` package's server class, run with java.

:class:`ZooKeeperServer` writes a ``zoo.cfg`` (127.0.0.1 and a free port, its own data
directory, short ticks so sessions can expire in seconds, no admin server) and runs
``java -cp <conf>:/usr/share/java/zookeeper.jar org.apache.zookeeper.server.ZooKeeperServerMain``
(the jar's manifest names every dependency jar), so no system service is involved. It is ready
when ``srvr`` reports its mode, i.e. it serves sessions. :meth:`ZooKeeperServer.stop` and
``start`` again keep the data directory, so sessions and ephemeral nodes survive a restart as
they do in production.

The ``zookeeper`` fixture starts one per test and always stops it; tests skip (with how to
install it) when java or the package is missing. Also here, for the tests that need them:
:func:`dubbo27_provider_node` (a provider URL encoded exactly as Dubbo 2.7's ZookeeperRegistry
names its znode) and :class:`Relay` (a TCP relay that can cut one client off the server while
others stay; cut longer than the client's session timeout, the server expires its session).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from tests.support.ports import free_port

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
SERVER_CLASS = "org.apache.zookeeper.server.ZooKeeperServerMain"
TICK_MS = 500  # sessions: 1 s .. 10 s (2 and 20 ticks)
SKIP_REASON = "ZooKeeper is not installed (scripts/setup.sh installs the Debian zookeeper package)"


def zookeeper_available() -> bool:
    return ZOOKEEPER_JAR.is_file() and shutil.which("java") is not None


class ZooKeeperServer:
    """One standalone ZooKeeper on 127.0.0.1; see the module docstring."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        (directory / "data").mkdir(parents=True, exist_ok=True)
        (directory / "zoo.cfg").write_text(
            f"tickTime={TICK_MS}\n"
            f"dataDir={directory / 'data'}\n"
            f"clientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr\n"
        )

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                "java", "-Xmx128m", "-XX:TieredStopAtLevel=1",
                "-Dzookeeper.admin.enableServer=false",
                "-cp", f"{self.directory}:{ZOOKEEPER_JAR}",
                SERVER_CLASS, str(self.directory / "zoo.cfg"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while not self.ok():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited: {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ZooKeeper not ready: {self.log()[-2000:]}")
            time.sleep(0.05)

    def ok(self) -> bool:
        """Whether the server serves sessions: ``srvr`` reports its mode. (``ruok`` answers
        ``imok`` a few hundred ms earlier, while the server still drops every session request,
        longer on a loaded machine: a client started then spends that time in back-off.)"""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"srvr")
                answer = b""
                while chunk := s.recv(4096):
                    answer += chunk
                return b"\nMode: " in answer
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def zookeeper(tmp_path: Path) -> Iterator[ZooKeeperServer]:
    """A started :class:`ZooKeeperServer`, stopped after the test."""
    if not zookeeper_available():
        pytest.skip(SKIP_REASON)
    server = ZooKeeperServer(tmp_path / "zookeeper")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def dubbo27_provider_url(interface: str, address: str, port: int, **parameters: str) -> str:
    """A provider URL with the parameters Dubbo 2.7.x registers, in its (sorted) order."""
    params = {
        "anyhost": "true",
        "application": "demo-provider",
        "deprecated": "false",
        "dubbo": "2.0.2",
        "dynamic": "true",
        "generic": "false",
        "interface": interface,
        "methods": "sayHello,sayHelloAsync",
        "pid": "4242",
        "release": "2.7.23",
        "side": "provider",
        "timestamp": "1700000000000",
        **parameters,
    }
    query = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"dubbo://{address}:{port}/{interface}?{query}"


def dubbo27_provider_node(interface: str, address: str, port: int, **parameters: str) -> str:
    """The znode name Dubbo 2.7 gives that URL: ``URLEncoder.encode(url, "UTF-8")``."""
    return quote_plus(dubbo27_provider_url(interface, address, port, **parameters), safe="*")


class Relay:
    """A TCP relay 127.0.0.1:<port> -> ``target``; :meth:`cut` drops every relayed connection
    and refuses new ones until :meth:`restore` (only clients that dial the relay are cut)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._stopped = True
        self.cut()
        self.listener.close()
