"""The ZooKeeper source against a real ZooKeeper (the Debian package's server, on loopback).

Providers are registered the ways real ones do it: znodes written exactly as Dubbo 2.7 names
them (ephemeral, URL-encoded, persistent parents) by a kazoo client standing in for the
provider's registry session; sofa-rpc-node's own ZooKeeper registry (a real library registering
a real provider, tests/e2e/sofa_zk_provider.js); and dubbo-py's ``DubboService.register``
(tests/e2e/dubbopy_zk_provider.py).
Every wait is bounded: a provider joining or leaving must be in the source's update within 1 s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.retry import KazooRetry

from metamesh.api.istio import ServiceEntry
from metamesh.api.loader import ResourceSet
from metamesh.control.sources.zookeeper import ZooKeeperSettings, ZooKeeperSource
from tests.control.zookeeper_server import (
    SKIP_REASON,
    Relay,
    ZooKeeperServer,
    dubbo27_provider_node,
    zookeeper,
    zookeeper_available,
)

__all__ = ["zookeeper"]  # the fixture, used by name

IFACE = "org.apache.dubbo.demo.DemoService"
HOST = IFACE.lower()
PROVIDERS = f"/dubbo/{IFACE}/providers"
IN_FORCE = 1.0  # s: a join or a leave must be in an update within this
REPO = Path(__file__).resolve().parents[2]
NODE_PROVIDER = REPO / "tests/e2e/sofa_zk_provider.js"
NODE_MODULES = REPO / "tests/peers/node/node_modules"
PY_PROVIDER = REPO / "tests/e2e/dubbopy_zk_provider.py"


def endpoints(sets: Mapping[str, ResourceSet]) -> dict[str, list[tuple[str, int, str]]]:
    """host -> [(address, port, version label)] in what the source handed on."""
    table: dict[str, list[tuple[str, int, str]]] = {}
    for loaded in sets.values():
        for se in loaded.of_kind(ServiceEntry):
            table[se.spec.hosts[0]] = [
                (e.address, *e.ports.values(), e.labels.get("version", ""))
                for e in se.spec.endpoints
            ]
    return table


class Watcher:
    """A started source on this loop; every update it hands on, with when it came."""

    def __init__(self, hosts: str, **settings: Any) -> None:
        self.updates: list[tuple[float, dict[str, list[tuple[str, int, str]]]]] = []
        self.source = ZooKeeperSource(
            ZooKeeperSettings(hosts, **settings), self._on_update, namespace="default"
        )

    def _on_update(self, sets: Mapping[str, ResourceSet]) -> None:
        self.updates.append((time.monotonic(), endpoints(sets)))

    @property
    def now(self) -> dict[str, list[tuple[str, int, str]]]:
        return self.updates[-1][1] if self.updates else {}

    async def start(self) -> None:
        self.source.start()
        synced = await self.source.wait_synced(10.0)
        assert synced, f"no first complete read within 10 s: {self.source.status()}"

    async def until(
        self, check: Callable[[dict[str, list[tuple[str, int, str]]]], bool], budget: float
    ) -> float:
        """Seconds until an update satisfies ``check`` (asserts it came within ``budget``)."""
        start = time.monotonic()
        while not (self.updates and check(self.now)):
            assert time.monotonic() - start < budget, f"not within {budget}s: {self.now}"
            await asyncio.sleep(0.005)
        return time.monotonic() - start


def writer(hosts: str) -> KazooClient:
    """A provider's session. Reconnects at most 1 s apart, as Curator's providers do: kazoo's
    default back-off grows past 10 s during a long ZooKeeper restart, and the restarted server
    then expires the session (10 s, the fixture's longest) before the client tries again."""
    retry = KazooRetry(max_tries=-1, delay=0.1, max_delay=1.0)
    client = KazooClient(hosts=hosts, timeout=10.0, connection_retry=retry)
    client.start(timeout=10)
    return client


def register(client: KazooClient, port: int, **parameters: str) -> str:
    """A Dubbo 2.7 provider's registration: persistent parents, ephemeral URL node."""
    client.ensure_path(PROVIDERS)
    path = f"{PROVIDERS}/{dubbo27_provider_node(IFACE, '127.0.0.1', port, **parameters)}"
    client.create(path, ephemeral=True)
    return path


def test_providers_joining_and_leaving_are_handed_on_within_a_second(
    zookeeper: ZooKeeperServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        first, second = writer(zookeeper.hosts), writer(zookeeper.hosts)
        a = register(first, 20001, aeraki_meta_app_version="v1")
        watcher = Watcher(zookeeper.hosts)
        await watcher.start()
        assert watcher.now == {HOST: [("127.0.0.1", 20001, "v1")]}
        assert watcher.source.status()["state"] == "connected"

        register(second, 20002, aeraki_meta_app_version="v2")
        took = await watcher.until(lambda now: len(now[HOST]) == 2, IN_FORCE)
        print(f"join in the update after {took:.3f}s")
        first.delete(a)
        took = await watcher.until(lambda now: now[HOST] == [("127.0.0.1", 20002, "v2")], IN_FORCE)
        print(f"leave (node deleted) in the update after {took:.3f}s")
        second.stop()  # the provider's session ends: ZooKeeper drops its ephemeral node
        took = await watcher.until(lambda now: now[HOST] == [], IN_FORCE)
        print(f"leave (session closed) in the update after {took:.3f}s")

        # a new interface, a group, and a malformed node beside a good one
        other = "org.acme.Billing"
        first.ensure_path(f"/dubbo/{other}/providers")
        first.create(f"/dubbo/{other}/providers/not%20a%20url", ephemeral=True)
        node = dubbo27_provider_node(other, "127.0.0.1", 20003, group="eu")
        first.create(f"/dubbo/{other}/providers/{node}", ephemeral=True)
        await watcher.until(lambda now: "org.acme.billing-eu" in now, IN_FORCE)
        assert watcher.now["org.acme.billing-eu"] == [("127.0.0.1", 20003, "")]
        status = watcher.source.status()
        assert status["interfaces"] == 2 and status["providers"] == 1
        counters = status["counters"]
        assert isinstance(counters, dict) and counters["malformed_providers"] == 1
        await watcher.source.close()
        first.stop()

    with caplog.at_level(logging.WARNING, "metamesh.control.sources.zookeeper"):
        asyncio.run(scenario())
    [line] = [r.getMessage() for r in caplog.records if "provider skipped" in r.getMessage()]
    assert line == (
        f"zookeeper://{zookeeper.hosts}/dubbo/org.acme.Billing/providers/not%20a%20url: "
        "provider skipped: not a provider URL (no scheme://host:port)"
    )


def test_a_session_expiry_recreates_the_watches(
    zookeeper: ZooKeeperServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The source is cut off (relay) longer than its 2 s session: the server expires it."""
    relay = Relay(("127.0.0.1", zookeeper.port))

    async def scenario() -> None:
        provider = writer(zookeeper.hosts)
        register(provider, 20001)
        watcher = Watcher(relay.hosts, session_timeout=2.0)
        await watcher.start()
        source = watcher.source
        relay.cut()
        register(provider, 20002)  # while the source is away
        await asyncio.sleep(4.0)  # the server expires the source's session meanwhile
        relay.restore()
        start = time.monotonic()
        while not (source.counters["session_expiries"] == 1 and source.state == "connected"):
            assert time.monotonic() - start < 10, source.status()
            await asyncio.sleep(0.02)
        await watcher.until(lambda now: len(now[HOST]) == 2 and not source.stale, 5.0)
        # the new session has watches again: a join is seen within a second
        register(provider, 20003)
        await watcher.until(lambda now: len(now[HOST]) == 3, IN_FORCE)
        assert source.counters["connects"] == 2
        await source.close()
        provider.stop()

    try:
        with caplog.at_level(logging.INFO, "metamesh.control.sources.zookeeper"):
            asyncio.run(scenario())
    finally:
        relay.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("session lost; the last good services stay in force" in m for m in messages)
    assert any(m.endswith("connected again; reading the providers") for m in messages)


def test_zookeeper_away_keeps_the_last_good_services_and_catches_up(
    zookeeper: ZooKeeperServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Cut off (the relay drops the source's connection) while providers change, then back."""
    relay = Relay(("127.0.0.1", zookeeper.port))

    async def scenario() -> None:
        provider = writer(zookeeper.hosts)
        a = register(provider, 20001)
        watcher = Watcher(relay.hosts)
        await watcher.start()
        source = watcher.source
        relay.cut()
        start = time.monotonic()
        while source.state != "suspended":
            assert time.monotonic() - start < 5, source.status()
            await asyncio.sleep(0.02)
        updates = len(watcher.updates)
        provider.delete(a)
        register(provider, 20002)
        await asyncio.sleep(1.5)
        assert len(watcher.updates) == updates  # nothing while away: the last good stays
        assert watcher.now == {HOST: [("127.0.0.1", 20001, "")]}
        assert source.counters["disconnects"] == 1
        relay.restore()
        took = await watcher.until(lambda now: now[HOST] == [("127.0.0.1", 20002, "")], 5.0)
        print(f"caught up {took:.3f}s after the relay was restored")
        assert source.state == "connected" and not source.stale
        await source.close()
        provider.stop()

    try:
        with caplog.at_level(logging.WARNING, "metamesh.control.sources.zookeeper"):
            asyncio.run(scenario())
    finally:
        relay.close()
    assert any(
        "connection lost; the last good services stay in force (1 interface(s), 1 provider(s))"
        in r.getMessage()
        for r in caplog.records
    )


def test_a_zookeeper_restart_keeps_then_refreshes_the_services(zookeeper: ZooKeeperServer) -> None:
    async def scenario() -> None:
        provider = writer(zookeeper.hosts)
        register(provider, 20001)
        watcher = Watcher(zookeeper.hosts)
        await watcher.start()
        updates = len(watcher.updates)
        await asyncio.to_thread(zookeeper.stop)
        await asyncio.sleep(1.0)
        assert watcher.source.state == "suspended" and len(watcher.updates) == updates
        await asyncio.to_thread(zookeeper.start)
        # the provider's session survived the restart; the source reads everything again.
        # (15 s: a connect attempt kazoo began while the JVM was still starting waits out its
        # read timeout, a share of the 10 s session, before the next one: seen under CI load)
        await watcher.until(lambda now: len(watcher.updates) > updates, 15.0)
        assert watcher.now == {HOST: [("127.0.0.1", 20001, "")]}
        register(provider, 20002)
        await watcher.until(lambda now: len(now[HOST]) == 2, IN_FORCE)
        await watcher.source.close()
        provider.stop()

    asyncio.run(scenario())


def test_a_source_started_before_zookeeper_follows_it_once_it_answers(tmp_path: Path) -> None:
    if not zookeeper_available():
        pytest.skip(SKIP_REASON)
    server = ZooKeeperServer(tmp_path / "zk")

    async def scenario() -> None:
        watcher = Watcher(server.hosts)
        watcher.source.start()
        assert not await watcher.source.wait_synced(1.0)  # nobody answers yet
        assert watcher.source.state == "connecting" and watcher.updates == []
        await asyncio.to_thread(server.start)
        provider = writer(server.hosts)
        register(provider, 20001)
        assert await watcher.source.wait_synced(10.0)
        await watcher.until(lambda now: now.get(HOST) == [("127.0.0.1", 20001, "")], 5.0)
        await watcher.source.close()
        provider.stop()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


@pytest.mark.interop
def test_a_sofa_rpc_node_provider_registers_and_unregisters_itself(
    zookeeper: ZooKeeperServer,
) -> None:
    if shutil.which("node") is None or not NODE_MODULES.is_dir():
        pytest.skip("node and tests/peers/node/node_modules are needed (scripts/setup.sh)")
    iface = "org.metamesh.test.Sofa"

    async def scenario() -> None:
        watcher = Watcher(zookeeper.hosts)
        await watcher.start()
        proc = subprocess.Popen(
            ["node", str(NODE_PROVIDER), zookeeper.hosts, "/dubbo", iface, "v7", "500"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        )
        try:
            assert proc.stdout is not None
            ready = await asyncio.to_thread(proc.stdout.readline)
            port = int(ready.split()[1])
            await watcher.until(lambda now: now.get(iface.lower()) == [
                ("127.0.0.1", port, "v7")
            ], IN_FORCE)  # fmt: skip
            proc.send_signal(signal.SIGTERM)
            assert (await asyncio.to_thread(proc.stdout.readline)).strip() == "UNREGISTERED"
            await watcher.until(lambda now: now.get(iface.lower()) == [], IN_FORCE)
        finally:
            proc.kill()
            proc.wait(10)
            await watcher.source.close()

    asyncio.run(scenario())


@pytest.mark.interop
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # dubbo-py's logging.warn
def test_a_dubbo_py_provider_registers_itself_but_persistently(zookeeper: ZooKeeperServer) -> None:
    """dubbo-py registers with kazoo's ``ensure_path``: a *persistent* node, unlike Dubbo's
    ephemeral one, so it stays after the provider is gone (docs/zookeeper.md)."""
    from dubbo.client import DubboClient

    iface = "org.metamesh.test.Py"

    async def scenario() -> None:
        watcher = Watcher(zookeeper.hosts)
        await watcher.start()
        proc = subprocess.Popen(
            [sys.executable, str(PY_PROVIDER), zookeeper.hosts, iface, "2.0.0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            port = int((await asyncio.to_thread(proc.stdout.readline)).split()[1])
            served = [("127.0.0.1", port, "2.0.0")]
            await watcher.until(lambda now: now.get(iface.lower()) == served, IN_FORCE)
            client = DubboClient("127.0.0.1", port, dubbo_version="2.0.2")
            answer = client.send_request_and_return_response(
                service_name=iface, method_name="echo", args=["x"], service_version="2.0.0"
            )
            assert answer.data == f"2.0.0@{port}:x"
            client._sock.shutdown(socket.SHUT_RDWR)  # dubbo-py has no close()
            await asyncio.sleep(0.1)  # its receive thread reads the EOF first
            client._sock.close()
        finally:
            proc.kill()
            proc.wait(10)
        await asyncio.sleep(0.5)
        assert watcher.now[iface.lower()] == served  # still registered: a persistent node
        await watcher.source.close()

    asyncio.run(scenario())
