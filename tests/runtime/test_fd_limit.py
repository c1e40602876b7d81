"""With 1,024 open files and 2,000 idle clients, a new client is still served.

The proxy runs with ``RLIMIT_NOFILE`` 1,024 soft and hard (so it cannot raise it). 2,000 idle
clients connect first; the connection cap (the limit less a reserve) makes each new client take
the place of the client idle longest, so the proxy never runs out of descriptors: a real Apache
Thrift client connecting afterwards gets its answers, the evictions are counted and logged a
bounded number of times.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import sys
import types
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.codecs.thrift.apache_peer import ApacheServer, CalcHandler
from tests.e2e.mesh import ThriftClient, free_port, wait_until
from tests.runtime.test_drain_e2e import config

pytestmark = [pytest.mark.interop, pytest.mark.slow]
IDLE_CLIENTS = 2000


@contextlib.contextmanager
def running_proxy(
    tmp_path: Path,
    config_text: str,
    admin: int,
    *args: str,
    preexec: Callable[[], None] | None = None,
) -> Iterator[tuple[Path, list[socket.socket]]]:
    """``metamesh proxy --config`` on ``config_text``, started and ready: its stderr file and
    a list for the test's idle client sockets, closed with the proxy at the end."""
    path = tmp_path / "proxy.yaml"
    path.write_text(config_text)
    err = tmp_path / "proxy.err"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metamesh", "proxy", "--config", str(path),
             "--admin-port", str(admin), *args],
            stderr=stderr, preexec_fn=preexec,
        )  # fmt: skip
    idle: list[socket.socket] = []
    try:
        wait_until(lambda: "admin on" in err.read_text(), "the proxy to start")
        yield err, idle
    finally:
        for s in idle:
            with contextlib.suppress(OSError):
                s.close()
        proc.terminate()
        proc.wait(15)


def limit_to_1024() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def test_a_new_client_is_served_with_2000_idle_clients_and_1024_files(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < IDLE_CLIENTS + 200:
        pytest.skip(f"this test process may hold only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port, admin = free_port(), free_port()
    with (
        ApacheServer(calc_gen.Calc.Processor(CalcHandler(calc_gen)), "framed", "binary") as up,
        running_proxy(tmp_path, config(port, up.port), admin, preexec=limit_to_1024) as (
            err,
            idle,
        ),
    ):
        try:
            for _ in range(IDLE_CLIENTS):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            client = ThriftClient(calc_gen, "127.0.0.1", port)
            assert [client.client.add(i, 1) for i in range(10)] == list(range(1, 11))
            client.close()
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats/prometheus") as r:
                stats = r.read().decode()
            evicted = next(
                float(line.split()[-1])
                for line in stats.splitlines()
                if line.startswith("metamesh_downstream_cx_evicted_total")
            )
            assert evicted >= IDLE_CLIENTS - 1024
            log = err.read_text()
            assert "open-file limit 1024" in log
            assert "cap 922" in log  # 1,024 less a tenth kept for upstreams, admin, logs
            assert log.count("at the cap of") <= 3  # one line per 10 s, not one per client
            assert "out of system resource" not in log
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


IDLE_FLOOD = 120


def limit_to_64() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def _counter(admin: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats/prometheus", timeout=5) as r:
            stats = r.read().decode()
    except OSError:  # the admin cannot accept either when the process is out of descriptors
        return -1.0
    return next(float(x.split()[-1]) for x in stats.splitlines() if x.startswith(name + " "))


def _still_open(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) != b""  # a byte from the proxy would be a surprise too
    except BlockingIOError:
        return True
    except OSError:
        return False


def test_out_of_descriptors_on_uvloop_pauses_accepting_and_drops_nobody(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    """64 open files, no connection cap, 120 idle clients (uvloop, the CLI's loop): libuv used
    to accept and close 72 of them silently, uncounted. Now the proxy stops accepting just
    below the limit: the clients past it wait in the listen backlog (none is closed), the pause
    is counted and logged once, and once the idle clients go a real Thrift client is served."""
    port, admin = free_port(), free_port()
    flags = ("--max-connections", "0", "--idle-timeout", "0", "--log-level", "debug")
    with (
        ApacheServer(calc_gen.Calc.Processor(CalcHandler(calc_gen)), "framed", "binary") as up,
        running_proxy(tmp_path, config(port, up.port), admin, *flags, preexec=limit_to_64) as (
            err,
            idle,
        ),
    ):
        assert "uvloop" in _server_info(admin)
        for _ in range(IDLE_FLOOD):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        wait_until(
            lambda: _counter(admin, "metamesh_downstream_accept_errors_total") > 0,
            "the proxy to pause accepting",
        )
        active = _counter(admin, "metamesh_active_downstream_connections")
        assert 20 < active < 64  # accepted up to the high mark, the rest wait
        assert all(_still_open(s) for s in idle)  # nobody dropped
        for s in idle:
            s.close()
        idle.clear()
        client = ThriftClient(calc_gen, "127.0.0.1", port)
        assert [client.client.add(i, 1) for i in range(10)] == list(range(1, 11))
        client.close()
        log = err.read_text()
        assert log.count("out of file descriptors") == 1  # once per 10 s, not per client
        assert "accepting paused until below" in log
        assert "out of system resource" not in log


def _server_info(admin: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/server_info", timeout=5) as r:
        info: bytes = r.read()
    return info.decode()


def test_a_listener_cap_evicts_its_idle_clients_for_a_new_thrift_client(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    """``max_connections: 5`` on the listener (static YAML), 20 idle clients: each new one
    takes the place of the listener's client idle longest, so 5 stay open and a real Thrift
    client is served; counted per listener."""
    port, admin = free_port(), free_port()
    with ApacheServer(calc_gen.Calc.Processor(CalcHandler(calc_gen)), "framed", "binary") as up:
        text = config(port, up.port)
        assert text.count("      route_config_name: calc\n") == 1
        capped = text.replace(
            "      route_config_name: calc\n",
            "      route_config_name: calc\n      max_connections: 5\n",
        )
        with running_proxy(tmp_path, capped, admin) as (err, idle):
            for _ in range(20):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            client = ThriftClient(calc_gen, "127.0.0.1", port)
            assert [client.client.add(i, 1) for i in range(10)] == list(range(1, 11))
            label = '{listener="calc"}'
            assert _counter(admin, f"metamesh_listener_downstream_cx_evicted_total{label}") == 16
            assert _counter(admin, f"metamesh_listener_downstream_cx_active{label}") == 5
            client.close()
            assert sum(not _still_open(s) for s in idle) == 16  # the idlest, closed
            assert err.read_text().count("at listener calc's cap of 5") == 1
