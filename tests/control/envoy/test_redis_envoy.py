"""One control plane, one RedisService, two data planes: a metamesh proxy and a real Envoy.

``metamesh control-plane --config-dir`` serves the same directory to a ``metamesh proxy --xds``
and to a real Envoy (``.venv-envoy``; its ``user_agent_name`` makes it an Envoy node, which gets
``envoy.filters.network.redis_proxy`` listeners). Both bind the service's address, so they
take turns under the one control plane, and each runs the same scenario with redis-py against
three real ``redis-server`` processes: ``main`` (the catch-all), ``a`` (behind the ``a:`` prefix
route with ``removePrefix``; ``requirepass``, the proxy authenticates with a password from a
file) and ``mirror`` (writes to the catch-all are copied there, reads not). Every claim is
checked on the backends themselves. Then a live RedisService edit (``a:`` now to ``main``)
while a client holds its connection: the metamesh proxy applies it on that connection;
Envoy's ``redis_proxy`` has its routes in the listener (no RDS), so the held connection keeps
working on the routes it started with and new connections get the new ones
(docs/envoy.md, Redis).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import redis

from metamesh.demo.steps import within_5_sigma
from tests.e2e.mesh import Metamesh, free_address, wait_until, write
from tests.e2e.test_up_redis import HOST, redis_service, service_entry
from tests.ratelimit.conftest import RedisProcess, running_redis
from tests.support.ports import free_port
from tests.xds.test_envoy import envoy_binary

pytestmark = pytest.mark.interop
ROUTE_CHANGE_BUDGET = 2.0

BOOTSTRAP = """
node: {{id: {node}, cluster: metamesh-test}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: metamesh_xds}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: metamesh_xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: metamesh_xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""


@contextmanager
def running_envoy(tmp: Path, xds_port: int, node: str = "envoy-redis") -> Iterator[str]:
    """A real Envoy following the control plane on ``xds_port``; yields its admin URL."""
    config = tmp / "envoy.yaml"
    config.write_text(BOOTSTRAP.format(node=node, port=xds_port))
    admin_file = tmp / "envoy-admin"
    log_path = tmp / "envoy.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(envoy_binary()), "-c", str(config), "--concurrency", "1",
                "--base-id", str(2_000_000 + (os.getpid() % 100_000) * 4),
                "--admin-address-path", str(admin_file), "-l", "warning",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            wait_until(
                lambda: admin_file.exists() and admin_file.read_text().strip() != "", "admin"
            )
            yield f"http://{admin_file.read_text().strip()}"
        except BaseException:
            print(log_path.read_text())
            raise
        finally:
            proc.kill()
            proc.wait(10)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        text: str = reply.read().decode()
    return text


def envoy_listeners(admin: str) -> list[dict[str, object]]:
    dump = json.loads(get(f"{admin}/config_dump?resource=dynamic_listeners"))
    return [item for item in dump.get("configs", [])]


def direct(server: RedisProcess, password: str | None = None) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, password=password)


def answers(address: str, port: int) -> bool:
    try:
        return bool(redis.Redis(host=address, port=port, password="down-pw").ping())
    except redis.RedisError:
        return False


@pytest.fixture
def backends() -> Iterator[tuple[RedisProcess, RedisProcess, RedisProcess]]:
    with ExitStack() as stack:
        main = stack.enter_context(running_redis())
        a = stack.enter_context(running_redis("--requirepass", "up-pw"))
        mirror = stack.enter_context(running_redis())
        yield main, a, mirror


def scenario(
    address: str,
    port: int,
    backends: tuple[RedisProcess, RedisProcess, RedisProcess],
    edit: Callable[[], None],
    held_follows_edits: bool,
) -> None:
    """The checks both data planes pass (see the module docstring)."""
    main, a, mirror = backends
    wait_until(lambda: answers(address, port), "the Redis listener", timeout=30)
    # downstream auth: nothing passes without the password, or with a wrong one
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=address, port=port).get("k")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=address, port=port, password="wrong").get("k")
    client = redis.Redis(host=address, port=port, password="down-pw", single_connection_client=True)
    assert client.ping()
    held = client.connection._sock if client.connection is not None else None
    assert held is not None
    # prefix routes: a:* lands on backend a without its prefix, the rest on main
    for i in range(20):
        assert client.set(f"a:key{i}", f"va{i}") and client.set(f"plain{i}", f"vm{i}")
    assert client.get("a:key3") == b"va3" and client.get("plain3") == b"vm3"
    assert sorted(direct(a, "up-pw").keys()) == sorted(f"key{i}".encode() for i in range(20))
    assert sorted(direct(main).keys()) == sorted(f"plain{i}".encode() for i in range(20))

    # mirror: the 20 catch-all SETs were copied, the GETs were not
    def mirror_stats() -> dict[str, dict[str, int]]:
        return dict(direct(mirror).info("commandstats"))

    wait_until(lambda: mirror_stats().get("cmdstat_set", {}).get("calls") == 20, "mirror")
    assert "cmdstat_get" not in mirror_stats()
    assert direct(mirror).get("plain7") == b"vm7"

    # fault: half the HGETALLs fail with Envoy's text, within 5 sigma; HGET untouched
    n, failed = 200, 0
    for _ in range(n):
        try:
            client.hgetall("h")
        except redis.ResponseError as e:
            assert str(e) == "Fault Injected: Error"
            failed += 1
    assert within_5_sigma(failed, n, 0.5), failed
    assert all(client.hget("h", "f") is None for _ in range(20))

    # a live RedisService edit (a:* now to main) while `client` holds its connection
    edit()
    fresh_seen = 0

    def moved() -> bool:
        nonlocal fresh_seen
        fresh_seen += 1
        user = (
            client
            if held_follows_edits
            else redis.Redis(host=address, port=port, password="down-pw")
        )
        user.set(f"a:new{fresh_seen}", "x")
        return direct(main).get(f"new{fresh_seen}") == b"x"

    started = time.monotonic()
    wait_until(moved, "the edited route in force", timeout=ROUTE_CHANGE_BUDGET + 1)
    assert time.monotonic() - started < ROUTE_CHANGE_BUDGET + 1
    # the held connection was never broken: it still answers, on the same socket
    assert client.get("plain1") == b"vm1"
    # Envoy: the held connection keeps the routes it started with; metamesh: the new ones
    assert client.get("a:key1") == (None if held_follows_edits else b"va1")
    assert client.connection is not None and client.connection._sock is held


def reset(backends: tuple[RedisProcess, RedisProcess, RedisProcess]) -> None:
    main, a, mirror = backends
    for server, password in ((main, None), (a, "up-pw"), (mirror, None)):
        conn = direct(server, password)
        conn.flushall()
        conn.config_resetstat()


def test_one_control_plane_serves_a_redis_service_to_metamesh_and_to_envoy(
    backends: tuple[RedisProcess, RedisProcess, RedisProcess], tmp_path: Path
) -> None:
    main, a, mirror = backends
    config = tmp_path / "mesh"
    config.mkdir()
    address, port = free_address()
    secret = tmp_path / "a-password"
    secret.write_text("up-pw")  # no newline: Envoy reads the file as is (metamesh strips one)
    write(config / "redis.yaml", service_entry("redis", HOST, port, main.port, address))
    write(config / "redis-a.yaml", service_entry("redis-a", "redis-a", 6379, a.port))
    write(config / "redis-m.yaml", service_entry("redis-mirror", "redis-mirror", 6379, mirror.port))
    write(
        config / "dest.yaml",
        f"""apiVersion: redis.aeraki.io/v1alpha1
kind: RedisDestination
metadata: {{name: redis-a, namespace: demo}}
spec:
  host: redis-a
  trafficPolicy:
    connectionPool:
      redis: {{auth: {{secret: {{file: {secret}}}}}}}
""",
    )
    xds = free_port()
    control = Metamesh(
        tmp_path, "control-plane", "control-plane", "--config-dir", str(config),
        "--xds-port", str(xds),
    )  # fmt: skip
    with control:
        control.wait_for("control plane (xDS) on")
        # the metamesh proxy
        write(config / "rs.yaml", redis_service("redis-a"))
        proxy = Metamesh(
            tmp_path, "proxy", "proxy", "--xds", f"127.0.0.1:{xds}", "--admin-port", "0",
            "--node-id", "metamesh-redis",
        )  # fmt: skip
        with proxy:
            scenario(
                address,
                port,
                backends,
                lambda: write(config / "rs.yaml", redis_service(HOST)),
                True,
            )
            assert proxy.stop() == 0
        # Envoy, from the same control plane and the same files
        reset(backends)
        write(config / "rs.yaml", redis_service("redis-a"))
        with running_envoy(tmp_path, xds) as admin:
            scenario(
                address,
                port,
                backends,
                lambda: write(config / "rs.yaml", redis_service(HOST)),
                False,
            )
            listeners = envoy_listeners(admin)
            assert listeners and all("error_state" not in item for item in listeners), listeners
            # enableCommandStats: Envoy's per-command counters saw every HGETALL
            prefix = f"redis.outbound|{port}||{HOST}"
            stats = dict(
                line.split(": ", 1) for line in get(f"{admin}/stats?filter=redis").splitlines()
            )
            assert stats[f"{prefix}.command.hgetall.total"] == "200"
        assert "NACK" not in control.stderr()
