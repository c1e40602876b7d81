"""End to end: one global limit shared by two ``metamesh proxy`` processes.

Real processes throughout: a private ``redis-server``, ``metamesh ratelimit-server`` and two
``metamesh proxy --config FILE`` processes with the global rate limit filter (one names the
service by cluster, the other by ``google_grpc.target_uri``), in front of a real KV-RPC
upstream. Clients pipeline calls to both proxies; exactly the limit is admitted in total, the
rest get the codec's native ``over_limit`` error reply, and each proxy's ``/stats/prometheus``
counts what it admitted and refused. With the rate limit service stopped, the proxy with
``failure_mode_deny: true`` refuses and the one with ``false`` lets calls through.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from examples.kvrpc.kvrpc_codec import KvRpcCodec, build_frame
from metamesh.codecs import Message
from tests.ratelimit.conftest import RedisProcess, free_port
from tests.ratelimit.support import (
    start_process,
    start_ratelimit_server,
    stop_process,
    wait_clear_of_window_end,
)
from tests.runtime.kvserver import KvServer

T = TypeVar("T")
LIMIT = 7
CALLS_PER_PROXY = 6

PROXY = """
static_resources:
  listeners:
  - name: kv
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    meta_protocol_proxy:
      codec: {{name: "examples.kvrpc.kvrpc_codec:KvRpcCodec"}}
      route_config_name: kv-routes
      meta_protocol_filters:
      - name: aeraki.meta_protocol.filters.ratelimit
        config:
          domain: {domain}
          timeout: 5s
          failure_mode_deny: {deny}
          rate_limit_service: {service}
          descriptors: [{{property: method, descriptor_key: method}}]
      - name: aeraki.meta_protocol.filters.router
  clusters:
  - name: outbound|9000||kv.example
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
  - name: ratelimit
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {rls}}}}}}}
  route_configs:
  - name: kv-routes
    routes:
    - match: {{metadata: [{{name: method, prefix_match: ""}}]}}
      route: {{cluster: outbound|9000||kv.example}}
"""


class LoopThread:
    """An asyncio loop in a thread, for the real KV-RPC upstream."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def upstream() -> Iterator[KvServer]:
    loop = LoopThread()
    server = loop.run(KvServer("kv").start())
    try:
        yield server
    finally:
        loop.run(server.stop())
        loop.close()


def start_proxy(
    tmp_path: Path, name: str, **fields: object
) -> tuple[subprocess.Popen[str], int, int]:
    port, admin = free_port(), free_port()
    config = tmp_path / f"{name}.yaml"
    config.write_text(PROXY.format(port=port, **fields))
    proc, _ = start_process(
        ["proxy", "--config", str(config), "--admin-port", str(admin)], r"admin on"
    )
    return proc, port, admin


def pipelined_calls(port: int, count: int, first_id: int) -> list[Message]:
    """Send ``count`` calls in one write, read every reply (in any order), by request id."""
    frames = b"".join(
        build_frame(1, first_id + i, {"method": "get"}, b"call") for i in range(count)
    )
    codec, buf, replies = KvRpcCodec(), bytearray(), []
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.sendall(frames)
        while len(replies) < count:
            while (msg := codec.decode(buf)) is not None:
                replies.append(msg)
            if len(replies) < count:
                data = conn.recv(65536)
                assert data, "proxy closed the connection"
                buf += data
    assert sorted(m.request_id or 0 for m in replies) == list(range(first_id, first_id + count))
    return replies


def admitted(reply: Message) -> bool:
    if reply.frame[reply.header_size :] == b"kv:call":
        return True
    assert reply.metadata.get("error") == "over_limit", reply.metadata
    return False


def counter(admin: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats/prometheus", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_two_proxies_share_one_global_limit_and_apply_the_failure_mode(
    tmp_path: Path, redis_server: RedisProcess, upstream: KvServer
) -> None:
    domain = f"kv-{uuid.uuid4().hex[:8]}"
    limits = tmp_path / "limits.yaml"
    limits.write_text(
        f"domain: {domain}\n"
        f"descriptors: [{{key: method, rate_limit: {{unit: hour, requests_per_unit: {LIMIT}}}}}]\n"
    )
    rls, rls_port = start_ratelimit_server(limits, redis_server.url)
    procs = [rls]
    try:
        deny, deny_port, deny_admin = start_proxy(
            tmp_path, "deny", domain=domain, deny="true", service="ratelimit",
            upstream=upstream.port, rls=rls_port,
        )  # fmt: skip
        procs.append(deny)
        service = f"{{grpc_service: {{google_grpc: {{target_uri: '127.0.0.1:{rls_port}'}}}}}}"
        allow, allow_port, allow_admin = start_proxy(
            tmp_path, "allow", domain=domain, deny="false", service=service,
            upstream=upstream.port, rls=rls_port,
        )  # fmt: skip
        procs.append(allow)

        wait_clear_of_window_end(3600, margin=60)
        replies: list[list[Message]] = [[], []]
        for round_ in range(2):  # both proxies take calls, interleaved
            for i, port in enumerate((deny_port, allow_port)):
                replies[i] += pipelined_calls(port, CALLS_PER_PROXY // 2, 100 * round_ + 1)
        per_proxy = [sum(admitted(r) for r in rs) for rs in replies]
        assert per_proxy == [4, 3]  # 3 + 3 admitted, then 1 of 3, then none: 7 in total
        assert upstream.requests == LIMIT
        for i, admin in enumerate((deny_admin, allow_admin)):
            assert counter(admin, "metamesh_ratelimit_ok_total") == per_proxy[i]
            over = counter(admin, "metamesh_ratelimit_over_limit_total")
            assert over == CALLS_PER_PROXY - per_proxy[i]
            assert counter(admin, "metamesh_ratelimit_errors_total") == 0

        stop_process(rls)  # the service is gone: each proxy's failure mode decides
        assert not admitted(pipelined_calls(deny_port, 1, 500)[0])
        assert admitted(pipelined_calls(allow_port, 1, 500)[0])
        assert upstream.requests == LIMIT + 1
        assert counter(deny_admin, "metamesh_ratelimit_errors_total") == 1
        assert counter(allow_admin, "metamesh_ratelimit_errors_total") == 1
    finally:
        for proc in reversed(procs):
            stop_process(proc)
    assert deny.returncode == 0 and allow.returncode == 0
