"""The real asyncio proxy over 127.0.0.1 with the KV-RPC example codec and real sockets."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

from examples.kvrpc.kvrpc_codec import KvRpcCodec, build_frame
from metamesh import build_info
from metamesh.codecs import Message
from metamesh.proxy.config_yaml import parse_snapshot
from metamesh.runtime.server import ProxyServer
from tests.runtime.kvserver import KvServer
from tests.support.prom import total

CODEC = "examples.kvrpc.kvrpc_codec:KvRpcCodec"


def config(v1: int, v2: int, mirror: int | None = None) -> str:
    mirror_cluster = (
        f"""
  - name: outbound|1||mirror.test
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {mirror}}}}}}}
"""
        if mirror
        else ""
    )
    mirror_policy = (
        "\n        request_mirror_policies: [{cluster: outbound|1||mirror.test}]" if mirror else ""
    )
    return f"""
version: "e2e"
static_resources:
  listeners:
  - name: kv
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    meta_protocol_proxy:
      stat_prefix: kv
      codec: {{name: "{CODEC}"}}
      route_config_name: kv-routes
  clusters:
  - name: outbound|1|v1|kv.test
    connect_timeout: 1s
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {v1}}}}}}}
  - name: outbound|1|v2|kv.test
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {v2}}}}}}}
{mirror_cluster}
  route_configs:
  - name: kv-routes
    routes:
    - name: get-v1
      match: {{metadata: [{{name: method, exact_match: get}}]}}
      route:
        cluster: outbound|1|v1|kv.test{mirror_policy}
      response_mutation: [{{key: x-route, value: get-v1}}]
    - name: put-v2
      match: {{metadata: [{{name: method, prefix_match: put}}]}}
      route: {{cluster: outbound|1|v2|kv.test}}
"""


class Client:
    """A KV-RPC client over one real TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.codec = KvRpcCodec()
        self.buf = bytearray()

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, frame: bytes) -> None:
        self.writer.write(frame)

    async def recv(self) -> Message:
        while (msg := self.codec.decode(self.buf)) is None:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise EOFError("proxy closed the connection")
            self.buf += data
        return msg

    async def call(self, rid: int, body: bytes, **headers: str) -> Message:
        self.send(build_frame(1, rid, headers, body))
        return await self.recv()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


Scenario = Callable[[ProxyServer, int, KvServer, KvServer], Awaitable[None]]


def run(scenario: Scenario, mirror: bool = False, **kw: Any) -> None:
    async def main() -> None:
        v1, v2 = await KvServer("v1").start(), await KvServer("v2").start()
        m = await KvServer("mirror").start() if mirror else None
        snap = parse_snapshot(config(v1.port, v2.port, m.port if m else None))
        server = ProxyServer(snap, admin_port=0, rng=random.Random(1), **kw)
        await server.start()
        try:
            await scenario(server, server.listener_port("kv"), v1, v2)
            if m is not None:
                assert m.requests >= 1
        finally:
            await server.close()
            for s in (v1, v2, m):
                if s is not None:
                    await s.stop()

    asyncio.run(main())


def test_routes_by_method_to_two_versions_and_answers_locally() -> None:
    async def scenario(server: ProxyServer, port: int, v1: KvServer, v2: KvServer) -> None:
        c = await Client.connect(port)
        r1 = await c.call(41, b"a", method="get")
        r2 = await c.call(42, b"b", method="put-item")
        assert (r1.request_id, r1.frame[r1.header_size :]) == (41, b"v1:a")
        assert r1.metadata["x-route"] == "get-v1"
        assert (r2.request_id, r2.frame[r2.header_size :]) == (42, b"v2:b")
        missing = await c.call(43, b"c", method="delete")
        assert missing.request_id == 43 and missing.metadata == {"error": "route_not_found"}
        c.send(build_frame(4, 44, {}, b""))  # ping, answered by the proxy
        pong = await c.recv()
        assert pong.request_id == 44 and pong.codec_state == 5
        c.send(build_frame(3, 45, {"method": "get"}, b"fire"))  # oneway
        r3 = await c.call(46, b"d", method="get")  # still usable
        assert r3.frame[r3.header_size :] == b"v1:d"
        assert v1.oneways == [b"fire"]
        await c.close()

    run(scenario)


def test_admin_endpoints_report_expected_counters() -> None:
    async def scenario(server: ProxyServer, port: int, v1: KvServer, v2: KvServer) -> None:
        c = await Client.connect(port)
        for i in range(3):
            await c.call(i, b"x", method="get")
        await c.call(9, b"x", method="nope")
        admin = server.bound_admin_port
        assert admin is not None
        assert await http_get(admin, "/ready") == (200, "LIVE\n")
        status, body = await http_get(admin, "/stats/prometheus")
        assert status == 200
        kv = {"destination_service": "kv.test", "destination_version": "v1"}
        ok = {"reporter": "source", "request_protocol": "kvrpc", "response_code": "0"}
        assert total(body, "istio_requests_total", **kv, **ok) == 3
        assert 'metamesh_local_replies_total{reason="route_not_found"} 1.0' in body
        assert "istio_request_duration_milliseconds_bucket{" in body
        assert "metamesh_upstream_connects_total 1.0" in body
        assert "metamesh_active_downstream_connections 1.0" in body
        status, body = await http_get(admin, "/server_info")
        info = json.loads(body)
        assert status == 200 and info["state"] == "LIVE"
        assert info["build"] == build_info.describe()
        assert info["compiled_modules"] == build_info.compiled_modules()
        status, body = await http_get(admin, "/config_dump")
        dump = json.loads(body)
        assert status == 200 and dump["version"] == "e2e"
        assert {c["name"] for c in dump["clusters"]} >= {"outbound|1|v1|kv.test"}
        status, body = await http_get(admin, "/clusters")
        assert f"outbound|1|v1|kv.test::127.0.0.1:{v1.port}::cx_active::1" in body
        status, body = await http_get(admin, "/clusters?format=json")
        [v1c] = [x for x in json.loads(body)["clusters"] if x["name"] == "outbound|1|v1|kv.test"]
        assert v1c["hosts"][0]["health"] == "healthy" and v1c["rq_active"] == 0
        assert (await http_get(admin, "/nope"))[0] == 404
        await c.close()

    run(scenario)


def test_200_clients_share_one_upstream_connection_and_get_their_own_replies() -> None:
    async def scenario(server: ProxyServer, port: int, v1: KvServer, v2: KvServer) -> None:
        clients = await asyncio.gather(*(Client.connect(port) for _ in range(200)))

        async def talk(i: int, c: Client) -> None:
            for k in range(3):  # same request ids in every client, pipelined
                c.send(build_frame(1, k, {"method": "get"}, f"client {i} req {k}".encode()))
            got = sorted([await c.recv() for _ in range(3)], key=lambda m: m.request_id or 0)
            for k, msg in enumerate(got):
                assert msg.request_id == k
                assert msg.frame[msg.header_size :] == f"v1:client {i} req {k}".encode()

        await asyncio.gather(*(talk(i, c) for i, c in enumerate(clients)))
        assert v1.connections == 1 and v1.requests == 600
        await asyncio.gather(*(c.close() for c in clients))

    run(scenario)


def test_mirror_and_access_log(tmp_path: Any) -> None:
    log_path = tmp_path / "access.log"
    with open(log_path, "w") as log_file:

        async def scenario(server: ProxyServer, port: int, v1: KvServer, v2: KvServer) -> None:
            c = await Client.connect(port)
            r = await c.call(5, b"m", method="get", interface="kv.Api")
            assert r.frame[r.header_size :] == b"v1:m"
            await c.close()
            await asyncio.sleep(0.05)  # let the mirror copy arrive

        run(scenario, mirror=True, access_log=log_file)
    [record] = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert record["route"] == "get-v1" and record["interface"] == "kv.Api"
    assert record["cluster"] == "outbound|1|v1|kv.test" and record["request_id"] == 5


def test_upstream_down_gives_native_error_reply() -> None:
    async def scenario(server: ProxyServer, port: int, v1: KvServer, v2: KvServer) -> None:
        await v2.stop()
        await asyncio.sleep(0)
        assert v2.server is not None
        await v2.server.wait_closed()
        c = await Client.connect(port)
        r = await c.call(8, b"x", method="put")
        assert r.request_id == 8 and r.metadata == {"error": "no_healthy_upstream"}
        r = await c.call(9, b"y", method="get")  # the other cluster still works
        assert r.frame[r.header_size :] == b"v1:y"
        await c.close()

    run(scenario)


def test_drain_finishes_in_flight_then_closes() -> None:
    async def scenario(server: ProxyServer, port: int, v1: KvServer, v2: KvServer) -> None:
        c = await Client.connect(port)
        await c.call(1, b"warm", method="get")
        v1.hold = True
        c.send(build_frame(1, 2, {"method": "get"}, b"slow"))
        while not v1.held:
            await asyncio.sleep(0.01)
        server.request_drain(5.0)
        await asyncio.sleep(0.05)
        admin = server.bound_admin_port
        assert admin is not None
        assert (await http_get(admin, "/ready"))[0] == 503
        try:
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
            refused = False
        except OSError:
            refused = True
        assert refused
        v1.release()
        r = await c.recv()
        assert r.request_id == 2 and r.frame[r.header_size :] == b"v1:slow"
        await asyncio.wait_for(server.wait_stopped(), 5)
        assert await c.reader.read() == b""  # then the proxy closes the connection

    run(scenario)
