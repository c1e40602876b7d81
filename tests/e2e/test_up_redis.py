"""``metamesh up DIR`` with Redis: real redis-server backends, redis-py and redis-cli clients.

The main test runs in both deployed modes (``up``, and ``control-plane`` + ``proxy --xds``,
where the upstream password file is read by the proxy process).

Three real ``redis-server`` processes on 127.0.0.1: ``main`` (the service's own endpoint),
``a`` (behind a key-prefix route, with ``requirepass``: the proxy authenticates upstream with
a password read from a file) and ``mirror``. A RedisService routes ``a:`` keys to ``a`` with
the prefix removed and everything else to ``main``, mirrors writes (not reads) to ``mirror``,
requires a downstream password, and injects an ERROR fault into half of the HGETALLs. Every
claim is checked on the backends directly (their keyspaces, ``INFO commandstats``).
"""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from metamesh.demo.steps import within_5_sigma
from tests.e2e.mesh import MODES, DeployedMesh, free_address, wait_until, write
from tests.ratelimit.conftest import RedisProcess, redis_server, running_redis
from tests.support.ports import free_port

__all__ = ["redis_server"]  # the fixture, used below

pytestmark = pytest.mark.interop
HOST = "redis.demo.svc.cluster.local"
ROUTE_CHANGE_BUDGET = 2.0


def service_entry(name: str, host: str, port: int, endpoint: int, address: str = "") -> str:
    addresses = f"\n  addresses: [{address}]" if address else ""
    return f"""apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: {name}, namespace: demo}}
spec:
  hosts: [{host}]{addresses}
  ports: [{{number: {port}, name: tcp-redis, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-redis: {endpoint}}}}}]
"""


def redis_service(prefix_target: str) -> str:
    return f"""apiVersion: redis.aeraki.io/v1alpha1
kind: RedisService
metadata: {{name: redis, namespace: demo}}
spec:
  host: [{HOST}]
  settings:
    opTimeout: 2s
    enableCommandStats: true
    auth: {{plain: {{password: down-pw}}}}
  redis:
  - match: {{key: {{prefix: "a:", removePrefix: true}}}}
    route: {{host: {prefix_target}}}
  - route: {{host: {HOST}}}
    mirror:
    - route: {{host: redis-mirror}}
      excludeReadCommands: true
  faults:
  - {{type: ERROR, percentage: {{value: 50}}, commands: [HGETALL]}}
"""


@pytest.fixture
def backends() -> Iterator[tuple[RedisProcess, RedisProcess, RedisProcess]]:
    with ExitStack() as stack:
        main = stack.enter_context(running_redis())
        a = stack.enter_context(running_redis("--requirepass", "up-pw"))
        mirror = stack.enter_context(running_redis())
        yield main, a, mirror


def scrape(admin: str) -> str:
    with urllib.request.urlopen(f"http://{admin}/stats/prometheus", timeout=5) as reply:
        text: str = reply.read().decode()
    return text


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of the one sample ``name`` with ``labels`` in Prometheus text ``metrics``."""
    (value,) = [
        s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == name and s.labels == labels
    ]
    return value


def direct(server: RedisProcess, password: str | None = None) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, password=password)


@pytest.mark.parametrize("mode", MODES)
def test_up_routes_keys_by_prefix_mirrors_writes_injects_faults_and_follows_edits(
    backends: tuple[RedisProcess, RedisProcess, RedisProcess], tmp_path: Path, mode: str
) -> None:
    main, a, mirror = backends
    config = tmp_path / "mesh"
    config.mkdir()
    address, port = free_address()
    secret = tmp_path / "a-password"
    secret.write_text("up-pw\n")
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
    write(config / "rs.yaml", redis_service("redis-a"))
    with DeployedMesh(tmp_path, mode, config) as up:
        up.wait_for(f"{address}:{port}  redis")
        # downstream auth: nothing passes without the password
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=address, port=port).get("k")
        client = redis.Redis(host=address, port=port, password="down-pw")

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
        n, failed = 400, 0
        for _ in range(n):
            try:
                client.hgetall("h")
            except redis.ResponseError as e:
                assert str(e) == "Fault Injected: Error"
                failed += 1
        assert within_5_sigma(failed, n, 0.5), failed
        assert all(client.hget("h", "f") is None for _ in range(50))
        # per-command statistics (enableCommandStats): every HGETALL counted, the faulted
        # ones without a reply time
        metrics = scrape(up.admin())
        labels = {"destination_service": HOST, "request_protocol": "redis"}
        total = "metamesh_command_requests_total"
        assert sample(metrics, total, command="hgetall", **labels) == n
        assert sample(metrics, total, command="hget", **labels) == 50
        count = "metamesh_command_duration_milliseconds_count"
        assert sample(metrics, count, command="hgetall", response_code="0", **labels) == n - failed

        # multi-key commands over both routes are split per key and merged
        assert client.mget("a:key1", "plain1", "a:nope", "plain2") == [b"va1", b"vm1", None, b"vm2"]
        assert client.exists("a:key1", "plain1", "a:nope") == 2

        # pipelined across both routes, answered in request order
        pipe = client.pipeline(transaction=False)
        for i in range(100):
            pipe.get(f"a:key{i % 20}" if i % 2 else f"plain{i % 20}")
        got = pipe.execute()
        assert got == [
            f"va{i % 20}".encode() if i % 2 else f"vm{i % 20}".encode() for i in range(100)
        ]

        # redis-cli through the mesh
        cli = ["redis-cli", "-h", address, "-p", str(port), "--no-auth-warning", "-a", "down-pw"]
        out = subprocess.run([*cli, "GET", "a:key1"], capture_output=True, text=True, timeout=10)
        assert out.stdout.strip() == "va1"
        out = subprocess.run([*cli, "MULTI"], capture_output=True, text=True, timeout=10)
        assert "MULTI is not supported" in out.stdout

        # a live RedisService edit, followed on the held connection: a:* now goes to main
        write(config / "rs.yaml", redis_service(HOST))
        i = 0

        def moved() -> bool:
            nonlocal i
            i += 1
            client.set(f"a:new{i}", "x")
            return direct(main).get(f"new{i}") == b"x"

        wait_until(moved, "the edited route in force", timeout=ROUTE_CHANGE_BUDGET)
        assert client.get("plain1") == b"vm1"
        assert up.stop() == 0


def test_up_answers_redis_errors_and_serves_others_beside_a_client_that_never_reads(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    config = tmp_path / "mesh"
    config.mkdir()
    address, port = free_address()
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    dead = free_port()  # nothing listens here
    write(config / "redis.yaml", service_entry("redis", HOST, port, redis_server.port, address))
    write(config / "silent.yaml", service_entry("silent", "silent", 6379, silent.getsockname()[1]))
    write(config / "dead.yaml", service_entry("dead", "dead", 6379, dead))
    write(
        config / "rs.yaml",
        f"""apiVersion: redis.aeraki.io/v1alpha1
kind: RedisService
metadata: {{name: redis, namespace: demo}}
spec:
  host: [{HOST}]
  settings: {{opTimeout: 0.5s}}
  redis:
  - {{match: {{key: {{prefix: "ok:"}}}}, route: {{host: {HOST}}}}}
  - {{match: {{key: {{prefix: "slow:"}}}}, route: {{host: silent}}}}
  - {{match: {{key: {{prefix: "dead:"}}}}, route: {{host: dead}}}}
""",
    )
    with silent, DeployedMesh(tmp_path, "up", config) as up:
        up.wait_for(f"{address}:{port}  redis")
        client = redis.Redis(host=address, port=port)
        assert client.set("ok:1", "v") and client.get("ok:1") == b"v"
        with pytest.raises(redis.ResponseError, match=r"^no route"):
            client.get("other")
        with pytest.raises(redis.ResponseError, match=r"^no healthy upstream"):
            client.get("dead:1")
        with pytest.raises(redis.ResponseError, match=r"^upstream timeout"):
            client.get("slow:1")
        # the connection is still usable, in order, after every error
        assert client.get("ok:1") == b"v"
        # a client that never reads its replies (20 MB owed) does not hold up the others
        assert client.set("ok:big", b"x" * 200_000)
        with socket.create_connection((address, port)) as lazy:
            lazy.sendall(b"GET ok:big\r\n" * 100)
            for _ in range(50):
                assert client.get("ok:1") == b"v"
        assert client.ping()
        metrics = scrape(up.admin())
        assert 'request_protocol="redis"' in metrics
        assert f'destination_service="{HOST}"' in metrics
