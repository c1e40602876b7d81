"""One control plane, one RedisService, two data planes: a metamesh proxy and a real Envoy.

``metamesh control-plane --config-dir`` serves the same directory to a ``metamesh proxy --xds``
and to a real Envoy (``.venv-envoy``; its ``user_agent_name`` makes it an Envoy node, which gets
``envoy.filters.network.redis_proxy`` listeners), both at once: Envoy's node metadata
``METAMESH_LISTEN_ADDRESS`` binds its listeners on another loopback address than the service's,
which the metamesh proxy holds. Each runs the same scenario with redis-py against
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

import functools
import json
import random
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from metamesh.codecs.redis.cluster import key_slot
from metamesh.demo.steps import within_5_sigma
from tests.control.envoy.envoy_node import EnvoyNode, error_states
from tests.e2e.mesh import Metamesh, free_address, wait_until, write
from tests.e2e.test_up_redis import HOST, service_entry
from tests.e2e.test_up_redis_cluster import cluster_mesh, make_cluster, owner
from tests.e2e.test_up_redis_cluster import direct as cluster_direct
from tests.ratelimit.conftest import RedisProcess, running_redis
from tests.support.ports import free_port

pytestmark = pytest.mark.interop
ROUTE_CHANGE_BUDGET = 2.0


def redis_service(prefix_target: str) -> str:
    """``a:`` keys to ``prefix_target`` (prefix removed), the rest to the service with writes
    mirrored; downstream password; an ERROR fault on half the HGETALLs; command stats."""
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


def envoy_listeners(node: EnvoyNode) -> list[dict[str, object]]:
    dump = json.loads(node.get("/config_dump?resource=dynamic_listeners"))
    return list(dump.get("configs", []))


def direct(server: RedisProcess, password: str | None = None) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, password=password)


def answers(address: str, port: int, password: str | None = "down-pw") -> bool:
    try:
        return bool(redis.Redis(host=address, port=port, password=password).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def backends() -> Iterator[tuple[RedisProcess, RedisProcess, RedisProcess]]:
    with ExitStack() as stack:
        main = stack.enter_context(running_redis())
        a = stack.enter_context(running_redis("--requirepass", "up-pw"))
        mirror = stack.enter_context(running_redis())
        yield main, a, mirror


def client_of(address: str, port: int) -> redis.Redis:
    """A redis-py client holding one connection through the proxy at ``address``."""
    client = redis.Redis(host=address, port=port, password="down-pw", single_connection_client=True)
    assert client.ping()
    return client


def socket_of(client: redis.Redis) -> object:
    assert client.connection is not None and client.connection._sock is not None
    return client.connection._sock


def scenario(
    address: str, port: int, backends: tuple[RedisProcess, RedisProcess, RedisProcess]
) -> redis.Redis:
    """The checks both data planes pass before the edit; returns the client it held."""
    main, a, mirror = backends
    wait_until(lambda: answers(address, port), "the Redis listener", timeout=30)
    # downstream auth: nothing passes without the password, or with a wrong one
    no_retry = Retry(NoBackoff(), 0)  # redis-py retries an AuthenticationError by default
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=address, port=port, retry=no_retry).get("k")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=address, port=port, password="wrong", retry=no_retry).get("k")
    client = client_of(address, port)
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
    return client


def reset(backends: tuple[RedisProcess, RedisProcess, RedisProcess]) -> None:
    main, a, mirror = backends
    for server, password in ((main, None), (a, "up-pw"), (mirror, None)):
        conn = direct(server, password)
        conn.flushall()
        conn.config_resetstat()


def in_force(main: RedisProcess, tag: str, connect: Callable[[], redis.Redis]) -> None:
    """Within the budget, ``a:`` keys written through ``connect()`` land on ``main``."""
    attempt = 0

    def moved() -> bool:
        nonlocal attempt
        attempt += 1
        connect().set(f"a:{tag}{attempt}", "x")
        return direct(main).get(f"{tag}{attempt}") == b"x"

    wait_until(moved, "the edited route in force", timeout=ROUTE_CHANGE_BUDGET)


def test_one_control_plane_serves_a_redis_service_to_metamesh_and_to_envoy(
    backends: tuple[RedisProcess, RedisProcess, RedisProcess], tmp_path: Path
) -> None:
    main, a, mirror = backends
    config = tmp_path / "mesh"
    config.mkdir()
    address, port = free_address()
    envoy_address = f"127.0.11.{random.randint(100, 250)}"  # METAMESH_LISTEN_ADDRESS
    secret = tmp_path / "a-password"
    secret.write_text("up-pw")  # no newline: Envoy reads the file as is (metamesh strips one)
    write(config / "redis.yaml", service_entry("redis", HOST, port, main.port, address))
    # distinct service ports: Envoy binds every Redis listener on its one listen address
    write(config / "redis-a.yaml", service_entry("redis-a", "redis-a", port + 1, a.port))
    write(
        config / "redis-m.yaml",
        service_entry("redis-mirror", "redis-mirror", port + 2, mirror.port),
    )
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
    xds = free_port()
    control = Metamesh(
        tmp_path, "control-plane", "control-plane", "--config-dir", str(config),
        "--xds-port", str(xds),
    )  # fmt: skip
    proxy = Metamesh(
        tmp_path, "proxy", "proxy", "--xds", f"127.0.0.1:{xds}", "--admin-port", "0",
        "--node-id", "metamesh-redis",
    )  # fmt: skip
    with control:
        control.wait_for("control plane (xDS) on")
        envoy = EnvoyNode(xds, tmp_path, "envoy-redis", {"METAMESH_LISTEN_ADDRESS": envoy_address})
        try:
            with proxy:
                # the same scenario through each data plane, both served at once
                held_metamesh = scenario(address, port, backends)
                reset(backends)
                held_envoy = scenario(envoy_address, port, backends)
                sockets = socket_of(held_metamesh), socket_of(held_envoy)
                # a live RedisService edit: a:* now to main (prefix still removed)
                write(config / "rs.yaml", redis_service(HOST))
                # metamesh applies it on the connection its client holds
                in_force(main, "metamesh", lambda: held_metamesh)
                # Envoy gives it to new connections; the held one keeps its routes
                in_force(main, "envoy", lambda: client_of(envoy_address, port))
                assert held_envoy.get("a:key1") == b"va1"  # still on backend a
                assert held_metamesh.get("a:key1") is None  # main has no key1
                # neither held connection was broken
                assert held_metamesh.get("plain1") == held_envoy.get("plain1") == b"vm1"
                assert (socket_of(held_metamesh), socket_of(held_envoy)) == sockets
                held_metamesh.close()
                assert proxy.stop() == 0
            listeners = envoy_listeners(envoy)
            assert listeners and error_states(json.loads(envoy.get("/config_dump"))) == []
            # enableCommandStats: Envoy's per-command counters saw its 200 HGETALLs
            stats = envoy.stats(f"redis.outbound|{port}||{HOST}.command.hgetall.")
            assert stats[f"redis.outbound|{port}||{HOST}.command.hgetall.total"] == 200
        except BaseException:
            print(envoy.log()[-5000:])
            raise
        finally:
            envoy.close()
        assert "NACK" not in control.stderr()


def test_cluster_mode_through_metamesh_and_envoy_from_one_control_plane(tmp_path: Path) -> None:
    """``mode: CLUSTER`` over a real 3-primary Redis Cluster: Envoy's ``envoy.clusters.redis``
    (seeded by the ServiceEntry's endpoints) and the metamesh proxy put every key on its slot's
    owner, and split an MGET over several slots."""
    config = tmp_path / "mesh"
    config.mkdir()
    address, port = free_address()
    envoy_address = f"127.0.11.{random.randint(100, 250)}"
    xds = free_port()
    with ExitStack() as stack:
        nodes = make_cluster(stack, tmp_path, 3, 0)
        cluster_mesh(config, address, port, nodes)
        control = stack.enter_context(
            Metamesh(
                tmp_path, "control-plane", "control-plane", "--config-dir", str(config),
                "--xds-port", str(xds),
            )
        )  # fmt: skip
        control.wait_for("control plane (xDS) on")
        stack.enter_context(
            Metamesh(tmp_path, "proxy", "proxy", "--xds", f"127.0.0.1:{xds}", "--admin-port", "0")
        )
        envoy = EnvoyNode(
            xds, tmp_path, "envoy-cluster", {"METAMESH_LISTEN_ADDRESS": envoy_address}
        )
        stack.callback(envoy.close)
        for plane, at in (("metamesh", address), ("envoy", envoy_address)):
            client = redis.Redis(host=at, port=port, protocol=2)
            listening = functools.partial(answers, at, port, None)
            wait_until(listening, f"{plane}'s Redis listener", timeout=30)
            keys = [f"{plane}:{i}" for i in range(60)]
            for key in keys:
                assert client.set(key, key)
            for key in keys:  # on the owner of its slot, read back on that node directly
                assert cluster_direct(owner(nodes, key_slot(key.encode()))).get(key) == key
            owners = {owner(nodes, key_slot(k.encode())).port for k in keys}
            assert len(owners) == 3  # the keys span every primary
            assert client.mget(keys[:10]) == [k.encode() for k in keys[:10]]
        assert error_states(envoy.config_dump()) == []
