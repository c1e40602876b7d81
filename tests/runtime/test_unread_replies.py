"""Clients that never read their replies, through the real proxy to a real ``redis-server``.

Redis is where this bites: a few bytes of ``GET`` ask for megabytes of reply, so pausing the
client's reads (tests/runtime/test_bad_clients.py) does not bound what the proxy queues for it.
Each test sends pipelined ``GET``\\ s of a 1 MiB value on a raw socket that reads nothing, and
checks that the proxy closes that client (the ``metamesh_downstream_unread_replies_closed_total``
counter and one log line), well before every reply was delivered, while a redis-py client on the
same listener and the same upstream keeps being served:

* past ``max_unread_bytes`` queued while the client is behind (the cap; no timer involved);
* paused for longer than ``unread_timeout`` (the cap off).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import redis

from metamesh.cli import _limits, build_parser
from metamesh.proxy.connection import ConnectionLimits
from metamesh.runtime.fd_limits import process_limits
from tests.ratelimit.conftest import RedisProcess, running_redis
from tests.runtime import mesh_config as mc
from tests.runtime.proxy_thread import ProxyThread
from tests.runtime.test_thrift_traffic import http_get, wait_until
from tests.support.prom import total

pytestmark = pytest.mark.interop

VALUE = b"v" * (1 << 20)
GETS = 64  # 64 MiB of replies asked for with ~1 KB of requests


@pytest.fixture(scope="module")
def backend() -> Iterator[RedisProcess]:
    with running_redis() as server:
        redis.Redis(port=server.port).set("big", VALUE)
        yield server


def redis_mesh(stack: ExitStack, backend: RedisProcess, limits: ConnectionLimits) -> ProxyThread:
    snap = mc.snapshot(
        [mc.listener("kv", "redis", "kv")],
        [mc.cluster("outbound|6379||kv.test", backend.port)],
        {"kv": [mc.route("all", "outbound|6379||kv.test", command="~.*")]},
    )
    return stack.enter_context(
        ProxyThread(snap, admin_port=0, limits=limits, high_water=64 * 1024, low_water=16 * 1024)
    )


def stuck_client(port: int) -> socket.socket:
    """A client that pipelines ``GET big`` ``GETS`` times and reads nothing (yet)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * GETS)
    return sock


def read_until_closed(sock: socket.socket) -> int:
    """Bytes received before the proxy's reset or close (reading at most 30 s)."""
    sock.settimeout(30)
    got = 0
    try:
        while data := sock.recv(1 << 20):
            got += len(data)
    except ConnectionResetError:
        pass
    return got


def check_closed_and_others_served(
    proxy: ProxyThread, sock: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    server = proxy.server
    assert server is not None
    wait_until(lambda: proxy.call(lambda: server.core.stats.downstream_unread) == 1, "the close")
    assert read_until_closed(sock) < GETS * len(VALUE) // 2, "the stuck client got its replies"
    other = redis.Redis(port=proxy.port("kv"), socket_timeout=10)
    assert other.get("big") == VALUE
    assert other.set("k", "1") and other.get("k") == b"1"
    _, text = http_get(server.bound_admin_port, "/stats/prometheus")
    assert total(text, "metamesh_downstream_unread_replies_closed_total") == 1
    lines = [r for r in caplog.records if "does not read its replies" in r.getMessage()]
    assert len(lines) == 1


def test_a_client_behind_past_the_byte_cap_is_closed(
    backend: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "metamesh.proxy")
    limits = ConnectionLimits(unread_timeout=0, max_unread_bytes=4 << 20)
    with ExitStack() as stack:
        proxy = redis_mesh(stack, backend, limits)
        reader = redis.Redis(port=proxy.port("kv"), socket_timeout=10)
        assert reader.get("big") == VALUE
        sock = stack.enter_context(stuck_client(proxy.port("kv")))
        check_closed_and_others_served(proxy, sock, caplog)
        assert "over the 4194304-byte cap" in caplog.text


def test_a_big_reply_to_a_client_that_reads_is_not_cut(
    backend: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    limits = ConnectionLimits(unread_timeout=0, max_unread_bytes=512 * 1024)
    with ExitStack() as stack:
        proxy = redis_mesh(stack, backend, limits)
        reader = redis.Redis(port=proxy.port("kv"), socket_timeout=10)
        assert reader.mget(["big", "big", "big"]) == [VALUE] * 3  # 3 MiB, over the cap
        server = proxy.server
        assert server is not None
        assert proxy.call(lambda: server.core.stats.downstream_unread) == 0


def test_a_client_paused_past_the_unread_timeout_is_closed(
    backend: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "metamesh.proxy")
    limits = ConnectionLimits(unread_timeout=0.5, max_unread_bytes=0)
    with ExitStack() as stack:
        proxy = redis_mesh(stack, backend, limits)
        sock = stack.enter_context(stuck_client(proxy.port("kv")))
        check_closed_and_others_served(proxy, sock, caplog)
        assert "not reading for 0.5 s" in caplog.text


def test_the_command_line_sets_both_limits() -> None:
    args = build_parser().parse_args(
        ["proxy", "--config", "x.yaml", "--unread-timeout", "5", "--max-unread-bytes", "1024"]
    )
    limits = process_limits(**_limits(args))  # type: ignore[arg-type]
    assert (limits.unread_timeout, limits.max_unread_bytes) == (5.0, 1024)
