"""Route timeout and retries in the real asyncio proxy over 127.0.0.1 (real sockets, real time).

The config is YAML, so the loader's policy fields are exercised too. One cluster has a dead
endpoint (a port nothing listens on) next to a live KV-RPC server: connect failures are retried
on the live one. Another cluster's server holds its replies: the route timeout answers with a
protocol-native TIMEOUT error, and the reply released afterwards is dropped.
"""

from __future__ import annotations

import asyncio
import random
import socket

from metamesh.codecs import ResponseStatus
from metamesh.proxy.config_yaml import parse_snapshot
from metamesh.runtime.server import ProxyServer
from tests.runtime.kvserver import KvServer
from tests.runtime.test_proxy_e2e import CODEC, Client


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def config(dead: int, live: int, held: int) -> str:
    def endpoint(port: int) -> str:
        address = f"{{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}"
        return f"- endpoint: {{address: {address}}}"

    return f"""
static_resources:
  listeners:
  - name: kv
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    meta_protocol_proxy:
      codec: {{name: "{CODEC}"}}
      route_config_name: kv-routes
  clusters:
  - name: outbound|1|flaky|kv.test
    connect_timeout: 2s
    load_assignment:
      endpoints:
      - lb_endpoints:
        {endpoint(dead)}
        {endpoint(live)}
  - name: outbound|1|slow|kv.test
    load_assignment:
      endpoints:
      - lb_endpoints:
        {endpoint(held)}
  route_configs:
  - name: kv-routes
    routes:
    - match: {{metadata: [{{name: method, exact_match: get}}]}}
      route:
        cluster: outbound|1|flaky|kv.test
        timeout: 5s
        retry_policy: {{num_retries: 1, retry_on: connect-failure,
                        retry_back_off: {{base_interval: 10ms}}}}
    - match: {{metadata: [{{name: method, exact_match: slow}}]}}
      route: {{cluster: outbound|1|slow|kv.test, timeout: 200ms}}
"""


def test_connect_failures_are_retried_and_timeouts_answer_with_timeout_errors() -> None:
    async def main() -> None:
        live, held = await KvServer("live").start(), await KvServer("held").start()
        held.hold = True
        snap = parse_snapshot(config(dead_port(), live.port, held.port))
        server = ProxyServer(snap, admin_port=None, rng=random.Random(3))
        await server.start()
        try:
            c = await Client.connect(server.listener_port("kv"))
            for i in range(6):
                r = await c.call(i, b"x", method="get")
                assert (r.request_id, r.status, r.frame[r.header_size :]) == (
                    i,
                    ResponseStatus.OK,
                    b"live:x",
                )
            stats = server.core.stats
            assert stats.retries >= 1 and stats.upstream_connect_failures >= 1
            assert live.requests == 6

            r = await c.call(100, b"y", method="slow")
            assert r.request_id == 100 and r.status is not ResponseStatus.OK
            assert r.metadata == {"error": "timeout"}
            assert stats.timeouts == 1
            held.release()  # the late reply must be dropped, not sent to the client
            r = await c.call(101, b"z", method="get")
            assert (r.request_id, r.frame[r.header_size :]) == (101, b"live:z")
            for _ in range(200):
                if stats.late_responses:
                    break
                await asyncio.sleep(0.01)
            assert stats.late_responses == 1
            assert stats.active_requests == 0
            await c.close()
        finally:
            await server.close()
            await live.stop()
            await held.stop()

    asyncio.run(main())
