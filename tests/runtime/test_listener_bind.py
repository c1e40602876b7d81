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
