"""The proxy's rate limit client: where the service is, and that waiting never blocks.

The asyncio proxy runs in-process against a real gRPC rate limit service that holds its
answers until released, so a request is provably waiting for its check while others on the
same connection are served; all checks share one channel (one peer seen by the service).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from examples.kvrpc.kvrpc_codec import build_frame
from metamesh.proxy.config import Cluster, Endpoint
from metamesh.proxy.config_yaml import parse_snapshot
from metamesh.runtime.ratelimit_client import resolve_target
from metamesh.runtime.server import ProxyServer
from tests.runtime.kvserver import KvServer
from tests.runtime.test_proxy_e2e import CODEC, Client
from tests.support.ports import free_port

RLS = rls_pb2.RateLimitResponse


@pytest.mark.parametrize(
    ("service", "target"),
    [
        ("rls", "ipv4:127.0.0.1:8081,127.0.0.2:8082"),
        ("named", "rls.local:8081"),
        ("outbound|8081||rls.ns.svc.cluster.local", "rls.ns.svc.cluster.local:8081"),
        ("127.0.0.1:9999", "127.0.0.1:9999"),
        ("dns:///rls:8081", "dns:///rls:8081"),
        ("no-such-cluster", None),
        ("empty", None),
        ("", None),
    ],
)
def test_resolve_target(service: str, target: str | None) -> None:
    clusters = {
        "rls": Cluster("rls", (Endpoint("127.0.0.1", 8081), Endpoint("127.0.0.2", 8082))),
        "named": Cluster("named", (Endpoint("rls.local", 8081),)),
        "empty": Cluster("empty", ()),
    }
    assert resolve_target(service, clusters) == target


class HeldService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    """A real RLS endpoint that answers ``code`` only once released."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.released = asyncio.Event()
        self.waiting = 0
        self.peers: set[str] = set()
        self.domains: list[str] = []

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        self.peers.add(context.peer())
        self.domains.append(request.domain)
        assert [(e.key, e.value) for e in request.descriptors[0].entries] == [("m", "get")]
        self.waiting += 1
        await self.released.wait()
        return RLS(overall_code=self.code)


def proxy_config(upstream: int, rls: int, timeout: str, deny: bool) -> str:
    return f"""
static_resources:
  listeners:
  - name: kv
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    meta_protocol_proxy:
      codec: {{name: "{CODEC}"}}
      route_config_name: kv-routes
      meta_protocol_filters:
      - name: aeraki.meta_protocol.filters.ratelimit
        config:
          match: {{metadata: [{{name: method, exact_match: get}}]}}
          domain: held
          timeout: {timeout}
          failure_mode_deny: {str(deny).lower()}
          rate_limit_service: 127.0.0.1:{rls}
          descriptors: [{{property: method, descriptor_key: m}}]
      - name: aeraki.meta_protocol.filters.router
  clusters:
  - name: up
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
  route_configs:
  - name: kv-routes
    routes:
    - match: {{metadata: [{{name: method, prefix_match: ""}}]}}
      route: {{cluster: up}}
"""


Body = Callable[[Client, "HeldService", ProxyServer, KvServer], Awaitable[None]]


async def run_with(code: int, timeout: str, deny: bool, body: Body) -> None:
    """Run ``body`` against an in-process proxy whose filter asks a :class:`HeldService`."""
    service = HeldService(code)
    grpc_server = grpc.aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(service, grpc_server)
    rls_port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    upstream = await KvServer("up").start()
    snap = parse_snapshot(proxy_config(upstream.port, rls_port, timeout, deny))
    proxy = ProxyServer(snap, admin_port=None, rng=random.Random(1))
    await proxy.start()
    client = await Client.connect(proxy.listener_port("kv"))
    try:
        await body(client, service, proxy, upstream)
    finally:
        service.released.set()
        await client.close()
        await proxy.close()
        await upstream.stop()
        await grpc_server.stop(None)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


def test_waiting_checks_do_not_block_the_connection() -> None:
    async def body(c: Client, service: HeldService, proxy: ProxyServer, up: KvServer) -> None:
        c.send(b"".join(build_frame(1, i, {"method": "get"}, b"x") for i in (1, 2)))
        await until(lambda: service.waiting == 2)  # both checks in flight at once
        reply = await c.call(3, b"x", method="put")  # not matched by the filter
        assert (reply.request_id, reply.frame[reply.header_size :]) == (3, b"up:x")
        assert up.requests == 1
        service.released.set()
        replies = sorted([await c.recv(), await c.recv()], key=lambda m: m.request_id or 0)
        assert [(m.request_id, m.frame[m.header_size :]) for m in replies] == [
            (1, b"up:x"),
            (2, b"up:x"),
        ]
        assert proxy.core.stats.ratelimit_ok == 2
        assert len(service.peers) == 1 and service.domains == ["held", "held"]

    asyncio.run(run_with(RLS.OK, "10s", False, body))


def test_over_limit_answer_and_timeout_with_deny() -> None:
    async def over(c: Client, service: HeldService, proxy: ProxyServer, up: KvServer) -> None:
        service.released.set()
        reply = await c.call(1, b"x", method="get")
        assert reply.metadata == {"error": "over_limit"}
        assert reply.frame[reply.header_size :] == b"global rate limit exceeded"
        assert up.requests == 0 and proxy.core.stats.ratelimit_over_limit == 1

    asyncio.run(run_with(RLS.OVER_LIMIT, "10s", True, over))

    async def late(c: Client, service: HeldService, proxy: ProxyServer, up: KvServer) -> None:
        reply = await c.call(1, b"x", method="get")  # the service never answers in time
        assert reply.metadata == {"error": "over_limit"}
        assert reply.frame[reply.header_size :] == b"rate limit service unavailable"
        service.released.set()  # the OK comes too late: the request stays refused
        reply = await c.call(2, b"y", method="put")
        assert reply.frame[reply.header_size :] == b"up:y"
        assert up.requests == 1 and proxy.core.stats.ratelimit_ok == 0

    asyncio.run(run_with(RLS.OK, "200ms", True, late))


@pytest.mark.slow
def test_the_service_is_used_again_within_seconds_after_a_long_outage() -> None:
    """gRPC's reconnect back-off grows with the outage (to minutes by default); the client's
    is capped at 1 s, so after a 20 s outage the restarted service answers within ~1 s."""

    async def serve(port: int) -> grpc.aio.Server:
        service = HeldService(RLS.OK)
        service.released.set()
        server = grpc.aio.server()
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(service, server)
        assert server.add_insecure_port(f"127.0.0.1:{port}") == port
        await server.start()
        return server

    async def main() -> float:
        port = free_port()
        rls = await serve(port)
        upstream = await KvServer("up").start()
        snap = parse_snapshot(proxy_config(upstream.port, port, "200ms", False))
        proxy = ProxyServer(snap, admin_port=None, rng=random.Random(1))
        await proxy.start()
        client = await Client.connect(proxy.listener_port("kv"))
        stats = proxy.core.stats
        try:
            await client.call(1, b"x", method="get")
            assert stats.ratelimit_ok == 1
            await rls.stop(None)
            loop = asyncio.get_running_loop()
            down_until = loop.time() + 20.0
            rid = 2
            while loop.time() < down_until:  # calls keep failing (allowed: failure mode open)
                reply = await client.call(rid, b"x", method="get")
                assert reply.frame[reply.header_size :] == b"up:x"
                rid += 1
                await asyncio.sleep(0.1)
            assert stats.ratelimit_ok == 1
            rls = await serve(port)
            back = loop.time()
            while stats.ratelimit_ok == 1 and loop.time() < back + 30.0:
                await client.call(rid, b"x", method="get")
                rid += 1
                await asyncio.sleep(0.05)
            return loop.time() - back
        finally:
            await client.close()
            await proxy.close()
            await upstream.stop()
            await rls.stop(None)

    took = asyncio.run(main())
    assert took < 2.0, f"the restarted service was used only after {took:.1f}s"
