"""A listener that cannot bind does not keep the other listeners of the same config down.

Two proxies that are given the same listener address (say two ``metamesh proxy --xds`` on one
host that both see a service's VIP) collide on ``bind``. The config swap must still bind every
other new listener and then report the failure, not stop at the first one.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from metamesh.proxy.config import Snapshot
from metamesh.runtime.server import ProxyServer
from tests.runtime import mesh_config as mc


def two_listeners(busy_port: int) -> Snapshot:
    busy = mc.listener("busy", "thrift", "routes")
    busy["address"]["socket_address"]["port_value"] = busy_port
    cluster = "outbound|9090||calc.test"
    return mc.snapshot(
        [busy, mc.listener("free", "thrift", "routes")],
        [mc.cluster(cluster, 9)],
        {"routes": [mc.route("all", cluster, method="~.*")]},
    )


def test_a_listener_that_cannot_bind_leaves_the_others_bound() -> None:
    async def main() -> None:
        server = ProxyServer(Snapshot(), admin_port=None)
        await server.start()
        try:
            with socket.socket() as taken:
                taken.bind(("127.0.0.1", 0))
                taken.listen()
                with pytest.raises(OSError):
                    await server.apply_snapshot(two_listeners(taken.getsockname()[1]))
                port = server.listener_port("free")
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
        finally:
            await server.close()

    asyncio.run(main())


def test_an_unbound_listener_is_retried_until_its_address_frees_up() -> None:
    async def main() -> None:
        server = ProxyServer(Snapshot(), admin_port=None)
        await server.start()
        try:
            taken = socket.socket()
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(OSError):
                await server.apply_snapshot(two_listeners(port))
            assert set(server.unbound) == {"busy"}
            await asyncio.sleep(0.8)  # a retry or two fail while the address is still taken
            assert set(server.unbound) == {"busy"}
            taken.close()
            for _ in range(100):  # backoff doubles from 0.5 s; well within 5 s
                if not server.unbound:
                    break
                await asyncio.sleep(0.1)
            assert not server.unbound and server.listener_port("busy") == port
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
        finally:
            await server.close()

    asyncio.run(main())
