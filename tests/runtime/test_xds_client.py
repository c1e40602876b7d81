"""The proxy's xDS client against metamesh's real ADS server over gRPC on 127.0.0.1.

Covers the first sync, a pushed change, a NACK reaching the server (with the conversion error
as ``error_detail``) while the last good config stays, and a control-plane restart: the client
keeps its config while the server is down, reconnects and converges on the changed model.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

from metamesh.control.model import MeshModel
from metamesh.control.to_proxy import to_snapshot
from metamesh.control.translate import translate
from metamesh.proxy.config import Snapshot
from metamesh.runtime.xds_client import XdsClient
from metamesh.runtime.xds_state import resources_to_snapshot
from metamesh.xds.resources import LISTENER_TYPE, ProxyNode, XdsResources
from metamesh.xds.server import AdsServer
from tests.control.cases import model_of, service_entry

ONE = model_of(service_entry())
TWO = model_of(service_entry() + "---\n" + service_entry(host="kv2", addresses="[127.0.10.8]"))


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class Proxy:
    """Stands in for ProxyServer.apply_snapshot: records what is applied."""

    def __init__(self) -> None:
        self.applied: list[Snapshot] = []

    async def apply(self, snapshot: Snapshot) -> None:
        self.applied.append(snapshot)

    def listeners(self) -> set[str]:
        return set(self.applied[-1].listeners) if self.applied else set()


def client_for(port: int, proxy: Proxy) -> XdsClient:
    return XdsClient(
        f"127.0.0.1:{port}",
        ProxyNode("proxy-1", "ns"),
        resources_to_snapshot(to_snapshot),
        proxy.apply,
        backoff_base=0.05,
        backoff_cap=0.2,
        rng=random.Random(1),
    )


def breaking(flag: list[bool]) -> Callable[[Any, ProxyNode], XdsResources]:
    """translate(), but with an unknown codec in every listener while ``flag[0]``."""

    def run(model: MeshModel, node: ProxyNode) -> XdsResources:
        resources = translate(model, node)
        if not flag[0]:
            return resources
        broken = {}
        for name, listener in resources.listeners.items():
            text = listener.SerializeToString().replace(b"codec.thrift", b"codec.nosuch")
            broken[name] = type(listener).FromString(text)
        return XdsResources({**resources.by_type, LISTENER_TYPE: broken})

    return run


async def scenario() -> None:
    flag = [False]
    server = AdsServer(breaking(flag), ONE, quiet=0.01, max_delay=0.05)
    port = await server.start()
    proxy = Proxy()
    client = client_for(port, proxy)
    task = asyncio.create_task(client.run())
    try:
        await until(lambda: proxy.listeners() == {"127.0.10.9_7000"}, "first sync")
        server.set_model(TWO)
        await until(lambda: len(proxy.listeners()) == 2, "pushed change")
        assert all(c.endpoints for c in proxy.applied[-1].clusters.values())

        # a config the proxy cannot run: NACKed with the error, the last good one stays
        flag[0] = True
        server.set_model(ONE)
        await until(lambda: bool(server.nacks()), "a NACK")
        node, type_url, _, error = server.nacks()[0]
        assert (node, type_url) == ("proxy-1", LISTENER_TYPE)
        assert "nosuch" in error
        assert len(proxy.listeners()) == 2
        flag[0] = False

        # control plane down: nothing changes at the proxy; back with a new model: converge
        await server.stop(0)
        await until(lambda: not client.connected, "the client to notice")
        assert len(proxy.listeners()) == 2
        await asyncio.sleep(0.3)  # a few reconnect attempts fail meanwhile
        assert len(proxy.listeners()) == 2
        server = AdsServer(translate, ONE, quiet=0.01, max_delay=0.05)
        assert await server.start(port=port) == port
        await until(lambda: proxy.listeners() == {"127.0.10.9_7000"}, "converged after restart")
        assert client.streams >= 2
    finally:
        client.stop()
        await asyncio.wait_for(task, 5)
        await server.stop(0)


def test_client_syncs_nacks_and_survives_a_control_plane_restart() -> None:
    asyncio.run(scenario())


async def restart_after(outage: float) -> float:
    """Seconds from the control plane's return (same port) to the client's next stream."""
    server = AdsServer(translate, ONE, quiet=0.01, max_delay=0.05)
    port = await server.start("127.0.0.1", 0)
    proxy = Proxy()
    client = XdsClient(
        f"127.0.0.1:{port}", ProxyNode("p"), resources_to_snapshot(to_snapshot), proxy.apply
    )  # the default back-off, as `metamesh proxy --xds` runs it
    task = asyncio.create_task(client.run())
    await until(lambda: bool(proxy.applied), "the first config")
    await server.stop(0)
    await asyncio.sleep(outage)
    streams = client.streams
    server = AdsServer(translate, TWO, quiet=0.01, max_delay=0.05)
    await server.start("127.0.0.1", port)
    back = asyncio.get_running_loop().time()
    await until(lambda: len(proxy.listeners()) == 2, "the new config (two services)")
    took = asyncio.get_running_loop().time() - back
    assert client.streams == streams + 1
    client.stop()
    await task
    await server.stop(0)
    return took


@pytest.mark.slow
def test_reconnects_within_two_seconds_after_a_long_outage() -> None:
    """gRPC's shared subchannel back-off grew with the outage (19 s after 30 s down); the
    client's own channel options keep every reconnect within its 1 s cap. 25 s down: gRPC's
    default back-off (1 s, x1.6 per attempt) would by then wait about 10 s between attempts."""
    took = asyncio.run(restart_after(25.0))
    print(f"restart -> new config in force: {took:.2f}s")
    assert took <= 2.0
