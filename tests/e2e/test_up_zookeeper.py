"""``metamesh up DIR --zookeeper`` end to end: a real ZooKeeper, providers that register
themselves, a dubbo-py consumer dialing the service's allocated address.

- ZooKeeper: the Debian package's server class (tests/control/zookeeper_server.py), restarted
  by the test mid-traffic.
- Providers: sofa-rpc-node RpcServers with dubbo-remoting and sofa-rpc-node's ZooKeeper
  registry (tests/e2e/sofa_zk_provider.js): each creates its ephemeral
  ``/dubbo/<interface>/providers/<dubbo:// URL>`` node itself, labelled with its application
  version (``aeraki_meta_app_version``), and on SIGTERM unregisters first, then serves for 2 s,
  as Dubbo's graceful shutdown does. Each answer names the provider (``v1@<port>:...``).
- The directory holds only a DestinationRule (subsets v1/v2 by ``version``) and a MetaRouter,
  both written by hand for the ZooKeeper-derived host (the interface lower-cased).
- One consumer connection calls ``echo`` every 5 ms from a thread for the whole test; every
  failure is counted.

The slow test follows, on that one connection: a provider joining (in force within 1 s of its
READY, printed once its node is visible), one leaving (no call reaches it 1 s after it
unregistered), a v1 -> v2 rollout by editing the MetaRouter (100/0, 80/20, 0/100) and the last v1
provider leaving, then ZooKeeper stopped for 2 s and started again, then a provider joining after
the restart: zero failed calls throughout. A second test runs ``control-plane --zookeeper``
(no directory) with ``proxy --xds``, down to no provider at all (the service stays; calls get the
proxy's "no healthy upstream" reply).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from metamesh.demo.steps import within_5_sigma
from tests.control.zookeeper_server import ZooKeeperServer, zookeeper
from tests.e2e.mesh import Metamesh, free_port, wait_until, write

__all__ = ["zookeeper"]  # the fixture, used by name

pytestmark = [pytest.mark.interop, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
REPO = Path(__file__).resolve().parents[2]
PROVIDER = REPO / "tests/e2e/sofa_zk_provider.js"
NODE_MODULES = REPO / "tests/peers/node/node_modules"
IN_FORCE = 1.0  # s


@pytest.fixture
def interface() -> str:
    if shutil.which("node") is None or not NODE_MODULES.is_dir():
        pytest.skip("node and tests/peers/node/node_modules are needed (scripts/setup.sh)")
    return f"org.metamesh.e2e.ZkDemo{random.randint(0, 999_999)}"


class Provider:
    """One sofa_zk_provider.js process; ``ready_at``/``unregistered_at``: monotonic times."""

    def __init__(self, zk: ZooKeeperServer, interface: str, version: str) -> None:
        self.version = version
        self.proc = subprocess.Popen(
            ["node", str(PROVIDER), zk.hosts, "/dubbo", interface, version, "2000"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        )
        self.port = int(self._line().split()[1])
        self.ready_at = time.monotonic()
        self.name = f"{version}@{self.port}"
        self.unregistered_at = 0.0

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"provider exited ({self.proc.poll()})"
        return line.strip()

    def leave(self) -> None:
        """SIGTERM: returns once it has unregistered (it keeps serving for 2 s)."""
        self.proc.send_signal(signal.SIGTERM)
        assert self._line() == "UNREGISTERED"
        self.unregistered_at = time.monotonic()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def close_client(client: Any) -> None:
    """dubbo-py has no close(): end its receive thread (EOF), then close the socket."""
    client._sock.shutdown(socket.SHUT_RDWR)
    time.sleep(0.1)  # its receive thread reads the EOF before the descriptor goes
    client._sock.close()


class Traffic:
    """A dubbo-py consumer on one connection, calling ``echo`` every 5 ms from a thread."""

    def __init__(self, address: tuple[str, int], interface: str) -> None:
        from dubbo.client import DubboClient

        self.client: Any = DubboClient(address[0], address[1], dubbo_version="2.0.2")
        self.local = self.client._sock.getsockname()
        self.interface = interface
        self.answers: list[tuple[float, str]] = []  # (monotonic time, provider name)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                answer = self.client.send_request_and_return_response(
                    service_name=self.interface,
                    method_name="echo",
                    args=[str(n)],
                    service_version="0.0.0",
                )
                if answer.status == 20:
                    self.answers.append((time.monotonic(), str(answer.data).partition(":")[0]))
                else:
                    self.failures.append(f"status {answer.status}: {answer.error}")
            except Exception as exc:  # every failure is a finding
                self.failures.append(repr(exc))
                time.sleep(0.05)
            time.sleep(0.005)

    def since(self, start: float) -> list[str]:
        return [who for t, who in list(self.answers) if t >= start]

    def until(self, check: Callable[[list[str]], bool], budget: float, what: str) -> float:
        """Seconds until the answers since now satisfy ``check``."""
        start = time.monotonic()
        wait_until(lambda: check(self.since(start)), what, budget)
        return time.monotonic() - start

    def last_from(self, name: str) -> float:
        return max((t for t, who in list(self.answers) if who == name), default=0.0)

    def same_connection(self) -> bool:
        sock = self.client._sock
        return sock.fileno() != -1 and sock.getsockname() == self.local

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        close_client(self.client)


def rules(host: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: zkdemo, namespace: default}}
spec:
  host: {host}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


def router(host: str, v1: int, v2: int) -> str:
    return f"""
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: zkdemo, namespace: default}}
spec:
  hosts: [{host}]
  routes:
  - name: rollout
    route:
    - {{destination: {{host: {host}, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: {host}, subset: v2}}, weight: {v2}}}
"""


def service_address(mesh: Metamesh, host: str) -> tuple[str, int]:
    """The address the proxy serves ``host`` on, from its "serving" lines."""
    mesh.wait_for(f"  {host}  127.240.")
    line = next(x for x in mesh.stdout().splitlines() if x.startswith(f"  {host}  127.240."))
    address, _, port = line.split()[1].partition(":")
    return address, int(port)


def http_get(admin: str, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://{admin}{path}", timeout=5) as reply:
            return str(reply.read().decode())
    except urllib.error.HTTPError as e:
        return str(e.read().decode())


def ready(admin: str) -> str:
    """The admin's /ready body: LIVE and one line per config source."""
    return http_get(admin, "/ready")


def subset_endpoints(admin: str, host: str, subset: str) -> list[str]:
    with urllib.request.urlopen(f"http://{admin}/clusters?format=json", timeout=5) as reply:
        clusters = json.loads(reply.read())["clusters"]
    name = f"outbound|20880|{subset}|{host}"
    return [h["address"] for c in clusters if c["name"] == name for h in c["hosts"]]


@pytest.fixture
def providers() -> Iterator[list[Provider]]:
    started: list[Provider] = []
    try:
        yield started
    finally:
        for provider in started:
            provider.kill()


@pytest.mark.slow
def test_up_follows_zookeeper_providers_a_rollout_and_a_zookeeper_restart(
    zookeeper: ZooKeeperServer, interface: str, providers: list[Provider], tmp_path: Path
) -> None:
    host = interface.lower()
    config = tmp_path / "mesh"
    config.mkdir()
    write(config / "rules.yaml", rules(host))
    write(config / "router.yaml", router(host, 100, 0))
    a = Provider(zookeeper, interface, "v1")
    providers.append(a)
    up = Metamesh(tmp_path, "up", "up", str(config), "--zookeeper", zookeeper.hosts,
                  "--admin-port", "0")  # fmt: skip
    with up:
        address = service_address(up, host)
        assert address[1] == 20880
        admin = up.admin()
        traffic = Traffic(address, interface)
        try:
            traffic.until(lambda seen: a.name in seen, 5.0, "the first provider answers")

            # a provider joins: answering within 1 s of its registration
            b = Provider(zookeeper, interface, "v1")
            providers.append(b)
            took = traffic.until(lambda seen: b.name in seen, IN_FORCE, "the join")
            print(f"join: first answer {time.monotonic() - b.ready_at:.3f}s after READY")
            assert time.monotonic() - b.ready_at < IN_FORCE + 0.05, took

            # a provider leaves: no call reaches it 1 s after it unregistered
            a.leave()
            traffic.until(
                lambda seen: len(seen) >= 50 and a.name not in seen[-50:], 5.0, "the leave"
            )
            gone = traffic.last_from(a.name) - a.unregistered_at
            print(f"leave: last answer {gone:.3f}s after it unregistered")
            assert gone < IN_FORCE

            # v1 -> v2: the v2 provider registers; the hand-written router moves the traffic
            c = Provider(zookeeper, interface, "v2")
            providers.append(c)
            wait_until(
                lambda: subset_endpoints(admin, host, "v2") == [f"127.0.0.1:{c.port}"],
                "v2 subset",
                IN_FORCE + 0.05,
            )
            assert c.name not in traffic.since(c.ready_at)  # 100/0: all still on v1
            write(config / "router.yaml", router(host, 80, 20))
            traffic.until(lambda seen: c.name in seen, 2.0, "the 80/20 split")
            start = time.monotonic()
            traffic.until(lambda seen: len(seen) >= 400, 20.0, "400 answers at 80/20")
            split = Counter(who.partition("@")[0] for who in traffic.since(start))
            assert within_5_sigma(split["v2"], split.total(), 0.2), split
            write(config / "router.yaml", router(host, 0, 100))
            traffic.until(lambda seen: seen[-50:] == [c.name] * 50, 2.0, "all on v2")
            b.leave()  # the last v1 provider goes

            # ZooKeeper restarted mid-traffic: the last good services stay, then it catches up
            zookeeper.stop()
            stopped = time.monotonic()
            before = len(traffic.answers)
            wait_until(
                lambda: "(serving its last good read)" in ready(admin), "the /ready detail", 5.0
            )
            assert ready(admin).startswith("LIVE\nzookeeper zookeeper://")  # still serving
            time.sleep(max(0.0, stopped + 2.0 - time.monotonic()))
            zookeeper.start()
            wait_until(lambda: "connected again" in up.stderr(), "ZooKeeper back", 20.0)
            wait_until(lambda: ": connected since" in ready(admin), "/ready: connected", 5.0)
            info = json.loads(http_get(admin, "/server_info"))
            assert info["config_sources"]["zookeeper"]["state"] == "connected"
            assert len(traffic.answers) > before + 100  # traffic went on meanwhile
            d = Provider(zookeeper, interface, "v2")
            providers.append(d)
            traffic.until(lambda seen: d.name in seen, IN_FORCE, "a join after the restart")
            traffic.until(lambda seen: len(seen) >= 50, 5.0, "more traffic")
            assert traffic.failures == []
            assert traffic.same_connection()
        finally:
            traffic.stop()
        assert up.stop() == 0
    errors = up.stderr()
    assert "connection lost; the last good services stay in force" in errors
    assert "Traceback" not in errors
    assert traffic.failures == []
    print(f"{len(traffic.answers)} calls, 0 failed, one connection")


def test_control_plane_with_zookeeper_only_and_a_proxy(
    zookeeper: ZooKeeperServer, interface: str, providers: list[Provider], tmp_path: Path
) -> None:
    """No directory: the registry alone feeds the control plane; a proxy follows it."""
    host = interface.lower()
    a = Provider(zookeeper, interface, "v1")
    providers.append(a)
    xds, monitoring = str(free_port()), f"127.0.0.1:{free_port()}"
    control = Metamesh(tmp_path, "control-plane", "control-plane", "--zookeeper",
                       zookeeper.hosts, "--xds-port", xds,
                       "--admin-port", monitoring.rsplit(":", 1)[1])  # fmt: skip
    proxy = Metamesh(tmp_path, "proxy", "proxy", "--xds", f"127.0.0.1:{xds}",
                     "--admin-port", "0", "--node-id", "zk-proxy")  # fmt: skip
    with control, proxy:
        control.wait_for(f"watching zookeeper://{zookeeper.hosts}/dubbo")
        traffic = Traffic(service_address(proxy, host), interface)
        try:
            traffic.until(lambda seen: a.name in seen, 5.0, "the provider answers")
            b = Provider(zookeeper, interface, "v2")
            providers.append(b)
            traffic.until(lambda seen: b.name in seen, IN_FORCE + 0.2, "the join")
            assert traffic.failures == []
        finally:
            traffic.stop()
        # every provider gone: the service stays, calls get the proxy's Dubbo error reply
        a.leave()
        b.leave()
        time.sleep(IN_FORCE)
        from dubbo.client import DubboClient

        client: Any = DubboClient(*service_address(proxy, host), dubbo_version="2.0.2")
        answer = client.send_request_and_return_response(
            service_name=interface, method_name="echo", args=["x"], service_version="0.0.0"
        )
        assert (answer.status, answer.error) == (80, "no healthy upstream")
        close_client(client)
        # the control plane's own /ready names the registry's state, as up's admin does
        assert ready(monitoring).startswith(f"LIVE\nzookeeper zookeeper://{zookeeper.hosts}")
        assert ": connected since" in ready(monitoring)
        zookeeper.stop()
        wait_until(
            lambda: "(serving its last good read)" in ready(monitoring), "the /ready detail", 5.0
        )
        assert proxy.stop() == 0 and control.stop() == 0
    assert "Traceback" not in control.stderr()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["control-plane"],
            "give --config-dir DIR, --zookeeper HOST:PORT, --kubernetes, or several",
        ),
        (["control-plane", "--zookeeper", "zk:notaport"], "--zookeeper: Port could not be"),
        (["control-plane", "--zookeeper", "zk", "--zk-service-port", "0"], "not in 1..65535"),
    ],
)
def test_bad_zookeeper_options_exit_2_with_one_line(argv: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "metamesh", *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
