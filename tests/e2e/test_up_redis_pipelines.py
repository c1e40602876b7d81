"""Pipelines through ``metamesh up`` with a real redis-server: runs (:mod:`metamesh.proxy.runs`).

redis-py pipelines (``transaction=False``: one write of many commands) are forwarded as runs.
What clients see must be what Redis gives, one reply per command in order, and the metrics must
count every command: checked on a long pipeline, on a pipeline whose commands all time out
behind a slow script (their late replies dropped, the shared connection still in step), on one
cut by the backend's death (one error reply per command) and on a client that leaves with a
pipeline in flight.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.mesh import DeployedMesh, free_address, wait_until, write
from tests.ratelimit.conftest import RedisProcess, running_redis

pytestmark = pytest.mark.interop
#: Commands per pipeline / 3: under the default circuit breaker's 1024 requests in flight
#: (a longer pipeline read at once gets "over limit" replies past it, runs or not).
N = 300
HOST = "redis.demo.svc.cluster.local"
#: A script that keeps Redis busy for about ``ARGV[1]`` milliseconds (nothing is answered
#: meanwhile, so a pipeline behind it waits).
BUSY = """
local t = redis.call('TIME')
local stop = t[1] * 1000000 + t[2] + ARGV[1] * 1000
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= stop
return 1
"""


def config(directory: Path, backend: int, address: str, port: int, op_timeout: str) -> None:
    write(
        directory / "redis.yaml",
        f"""apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: redis, namespace: demo}}
spec:
  hosts: [{HOST}]
  addresses: [{address}]
  ports: [{{number: {port}, name: tcp-redis, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-redis: {backend}}}}}]
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisService
metadata: {{name: redis, namespace: demo}}
spec:
  host: [{HOST}]
  settings: {{opTimeout: {op_timeout}, enableCommandStats: true}}
  redis:
  - match: {{key: {{prefix: "key:"}}}}
    route: {{host: {HOST}}}
  - route: {{host: {HOST}}}
""",
    )


def requests_by_code(admin: str) -> dict[str, float]:
    """istio_requests_total of the Redis listener, summed by response_code, and the
    per-command counts (``metamesh_command_requests_total``) under ``command:<name>``."""
    with urllib.request.urlopen(f"http://{admin}/stats/prometheus", timeout=5) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "istio_requests_total" and s.labels.get("request_protocol") == "redis":
                code = s.labels["response_code"]
                out[code] = out.get(code, 0.0) + s.value
            elif s.name == "metamesh_command_requests_total":
                key = "command:" + s.labels["command"]
                out[key] = out.get(key, 0.0) + s.value
    return out


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[DeployedMesh, RedisProcess, redis.Redis]]:
    with running_redis() as backend:
        directory = tmp_path / "mesh"
        directory.mkdir()
        address, port = free_address()
        config(directory, backend.port, address, port, "1s")
        with DeployedMesh(tmp_path, "up", directory) as up:
            up.wait_for(f"{address}:{port}  redis")
            client = redis.Redis(host=address, port=port)
            wait_until(lambda: client.ping(), "the listener serving")
            yield up, backend, client


def test_a_long_pipeline_is_answered_in_order_and_every_command_counted(
    mesh: tuple[DeployedMesh, RedisProcess, redis.Redis],
) -> None:
    up, backend, client = mesh
    assert client.set("key:warm", "w")
    before = requests_by_code(up.admin())
    pipe = client.pipeline(transaction=False)
    for i in range(N):
        pipe.set(f"key:{i}", f"v{i}")
        pipe.get(f"key:{i}")
        pipe.incr(f"n{i % 7}")  # INCRBY, on the catch-all route, same backend
    pipe.hget("key:0", "f")  # WRONGTYPE: an error reply mid-pipeline
    results = pipe.execute(raise_on_error=False)
    assert len(results) == 3 * N + 1
    counts: dict[str, int] = {}
    errors = [(i, r) for i, r in enumerate(results[:-1]) if isinstance(r, Exception)]
    assert not errors, [(i, str(r)) for i, r in errors[:5]]
    for i in range(N):
        assert results[3 * i] is True and results[3 * i + 1] == f"v{i}".encode()
        counts[f"n{i % 7}"] = counts.get(f"n{i % 7}", 0) + 1
        assert results[3 * i + 2] == counts[f"n{i % 7}"]
    assert isinstance(results[-1], redis.ResponseError) and "WRONGTYPE" in str(results[-1])
    on_backend = redis.Redis(host="127.0.0.1", port=backend.port)
    assert on_backend.get(f"key:{N - 1}") == f"v{N - 1}".encode()
    assert on_backend.get("n0") == str(len(range(0, N, 7))).encode()
    after = requests_by_code(up.admin())
    assert after.get("0", 0) - before.get("0", 0) == 3 * N
    assert after.get("1", 0) - before.get("1", 0) == 1
    for command, count in (("set", N), ("get", N), ("incrby", N), ("hget", 1)):
        key = f"command:{command}"
        assert after.get(key, 0) - before.get(key, 0) == count, command


def test_commands_behind_a_slow_script_time_out_and_the_connection_stays_in_step(
    mesh: tuple[DeployedMesh, RedisProcess, redis.Redis],
) -> None:
    _, _, client = mesh
    assert client.set("key:a", "1")
    pipe = client.pipeline(transaction=False)
    pipe.eval(BUSY, 0, 1500)  # 1.5 s, past opTimeout (1 s)
    for i in range(20):
        pipe.get("key:a")
        pipe.set(f"key:t{i}", "x")
    results = pipe.execute(raise_on_error=False)
    assert len(results) == 41
    assert all(
        isinstance(r, redis.ResponseError) and str(r).startswith("upstream timeout")
        for r in results
    ), results
    time.sleep(0.8)  # the script ends; its late replies are dropped
    pipe = client.pipeline(transaction=False)
    for i in range(50):
        pipe.get("key:a")
        pipe.get(f"key:t{i % 20}")
    assert pipe.execute() == [b"1", b"x"] * 50


def test_a_backend_dying_mid_pipeline_gives_each_command_an_error_reply(
    mesh: tuple[DeployedMesh, RedisProcess, redis.Redis],
) -> None:
    _, backend, client = mesh
    assert client.set("key:a", "1")
    killer = threading.Timer(0.4, backend.stop)  # SIGKILL while the script runs
    pipe = client.pipeline(transaction=False)
    pipe.set("key:b", "2")
    pipe.eval(BUSY, 0, 900)
    for _ in range(30):
        pipe.get("key:a")
    killer.start()
    try:
        results = pipe.execute(raise_on_error=False)
    finally:
        killer.join()
    assert len(results) == 32
    assert all(
        isinstance(r, redis.ResponseError) and str(r).startswith("upstream failure")
        for r in results
    ), results
    backend.start()

    def served() -> bool:
        try:
            return client.set("key:c", "3") is True
        except redis.RedisError:
            return False

    wait_until(served, "the backend back")
    pipe = client.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"key:{i}", str(i))
        pipe.get(f"key:{i}")
    assert pipe.execute() == [x for i in range(100) for x in (True, str(i).encode())]


def test_a_client_leaving_with_a_pipeline_in_flight_leaves_others_in_step(
    mesh: tuple[DeployedMesh, RedisProcess, redis.Redis],
) -> None:
    _, _, client = mesh
    assert client.set("key:a", "1")
    address = client.connection_pool.connection_kwargs["host"]
    port = client.connection_pool.connection_kwargs["port"]
    for _ in range(5):
        with socket.create_connection((address, port)) as leaver:
            leaver.sendall(b"*2\r\n$3\r\nGET\r\n$5\r\nkey:a\r\n" * 300)
        pipe = client.pipeline(transaction=False)
        for _ in range(200):
            pipe.incr("key:count")
            pipe.get("key:a")
        results = pipe.execute()
        assert results[1::2] == [b"1"] * 200
        assert results[-2] - results[0] == 199
    assert client.ping()
