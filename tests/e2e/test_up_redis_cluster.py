"""``metamesh up`` in front of a real 3-primary Redis Cluster (``mode: CLUSTER``).

The test starts three ``redis-server --cluster-enabled yes`` on 127.0.0.1 and joins them with
``redis-cli --cluster create``; a plain (not cluster-aware) redis-py client talks to the mesh
address only. The proxy takes the slot owners from ``CLUSTER SLOTS`` (asked on each new
connection) and follows ``MOVED`` replies; a slot migrated live (``CLUSTER SETSLOT ...
MIGRATING/IMPORTING``, ``MIGRATE``, ``SETSLOT ... NODE``) is followed through ``ASK`` during
the migration and ``MOVED`` after it, on the same client connection, with no error reaching
the client.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from metamesh.codecs.redis.cluster import key_slot
from tests.e2e.mesh import DeployedMesh, free_address, wait_until, write
from tests.ratelimit.conftest import RedisProcess, running_redis

pytestmark = pytest.mark.interop
HOST = "redis-cluster.demo.svc.cluster.local"


def make_cluster(stack: ExitStack, tmp_path: Path, count: int, replicas: int) -> list[RedisProcess]:
    """``count`` cluster-enabled redis-servers joined by ``redis-cli --cluster create``."""
    started = []
    for i in range(count):
        home = tmp_path / f"node-{i}"  # its own dir: nodes.conf, and any dump.rdb it writes
        home.mkdir()
        args = (
            "--dir",
            str(home),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        )
        args += ("--cluster-node-timeout", "1000")
        started.append(stack.enter_context(running_redis(*args, port=cluster_port())))
    addresses = [f"127.0.0.1:{n.port}" for n in started]
    create = ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", str(replicas)]
    run = subprocess.run([*create, "--cluster-yes"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr

    def ready() -> bool:
        if not all(direct(n).cluster("info")["cluster_state"] == "ok" for n in started):
            return False
        infos = [direct(n).info("replication") for n in started]
        synced = [i for i in infos if i["role"] == "slave" and i["master_link_status"] == "up"]
        return len(synced) == replicas * (count // (replicas + 1))  # a replica can fail over

    wait_until(ready, "cluster_state:ok on every node", timeout=20)
    return started


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[RedisProcess]]:
    with ExitStack() as stack:
        yield make_cluster(stack, tmp_path, 3, 0)


def cluster_mesh(config: Path, address: str, port: int, nodes: list[RedisProcess]) -> None:
    endpoints = ", ".join(f"{{address: 127.0.0.1, ports: {{tcp-redis: {n.port}}}}}" for n in nodes)
    write(
        config / "redis.yaml",
        f"""apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: redis-cluster, namespace: demo}}
spec:
  hosts: [{HOST}]
  addresses: [{address}]
  ports: [{{number: {port}, name: tcp-redis, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{endpoints}]
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisDestination
metadata: {{name: redis-cluster, namespace: demo}}
spec:
  host: {HOST}
  trafficPolicy: {{connectionPool: {{redis: {{mode: CLUSTER}}}}}}
""",
    )


def cluster_port() -> int:
    """A free port below 55536 whose cluster bus port (+10000) is free too."""
    while True:
        port = random.randint(20000, 55000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


def direct(node: RedisProcess) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True)


def owner(nodes: list[RedisProcess], slot: int) -> RedisProcess:
    for start, end, primary, *_ in direct(nodes[0]).execute_command("CLUSTER SLOTS"):
        if start <= slot <= end:
            return next(n for n in nodes if n.port == int(primary[1]))
    raise AssertionError(f"no owner for slot {slot}")


def redirects(admin: str) -> float:
    with urllib.request.urlopen(f"http://{admin}/stats/prometheus", timeout=5) as reply:
        text = reply.read().decode()
    (value,) = [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "metamesh_redirects_total"
    ]
    return value


def test_up_routes_by_slot_and_follows_a_live_slot_migration(
    nodes: list[RedisProcess], tmp_path: Path
) -> None:
    config = tmp_path / "mesh"
    config.mkdir()
    address, port = free_address()
    cluster_mesh(config, address, port, nodes)
    with DeployedMesh(tmp_path, "up", config) as up:
        up.wait_for(f"{address}:{port}  redis")
        client = redis.Redis(host=address, port=port, decode_responses=True)

        # every key reaches its slot's owner (Redis itself refuses anything else)
        for i in range(300):
            assert client.set(f"key:{i}", str(i))
        assert [client.get(f"key:{i}") for i in range(300)] == [str(i) for i in range(300)]
        assert sum(direct(n).dbsize() for n in nodes) == 300
        assert all(direct(n).dbsize() > 50 for n in nodes)
        learned = redirects(up.admin())
        # CLUSTER SLOTS on the first connection gave the owners: only what was sent before
        # its reply came back was redirected
        assert learned <= 3
        for i in range(300):  # once learned, requests go to the owner directly
            client.get(f"key:{i}")
        assert redirects(up.admin()) == learned

        # hashtags keep multi-key commands in one slot
        assert client.mset({"{user1}.name": "ann", "{user1}.mail": "a@x"})
        assert client.mget("{user1}.name", "{user1}.mail") == ["ann", "a@x"]
        # multi-key commands across slots are split per key and their replies merged
        many = [f"key:{i}" for i in range(0, 300, 7)]
        assert client.mget([*many, "nope"]) == [*(k.split(":")[1] for k in many), None]
        assert client.exists(*many, "nope") == len(many)
        assert client.mset({f"m:{i}": str(i) for i in range(30)})
        assert client.mget([f"m:{i}" for i in range(30)]) == [str(i) for i in range(30)]
        assert client.delete(*(f"m:{i}" for i in range(30)), "nope") == 30
        assert sum(direct(n).dbsize() for n in nodes) == 300 + 2
        with pytest.raises(redis.ResponseError, match="SELECT is not allowed"):
            client.execute_command("SELECT", "1")

        # migrate the slot of 'moving' to another node, live
        slot = key_slot(b"moving")
        assert client.set("moving", "before")
        src = owner(nodes, slot)
        dst = next(n for n in nodes if n is not src)
        src_id, dst_id = direct(src).cluster("myid"), direct(dst).cluster("myid")
        direct(dst).execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        direct(src).execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        # during the migration: a key still on src is served there, a new one goes to dst (ASK)
        assert client.get("moving") == "before"
        fresh = next(f"fresh:{i}" for i in range(100000) if key_slot(f"fresh:{i}".encode()) == slot)
        assert client.set(fresh, "new")
        direct(src).execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", "moving")
        for n in nodes:
            direct(n).execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        # after it: the held connection follows MOVED to the new owner, no error to the client
        before = redirects(up.admin())
        assert client.get("moving") == "before" and client.get(fresh) == "new"
        assert client.set("moving", "after") and client.get("moving") == "after"
        assert redirects(up.admin()) >= before + 1
        dst_client = direct(dst)
        dst_client.execute_command("READONLY")
        assert owner(nodes, slot) is dst
        assert up.stop() == 0


FAILOVER_BOUND = 20.0  # seconds from the primary's death to the last client error (generous)


@pytest.mark.slow
def test_up_rides_out_the_failover_of_a_primary(tmp_path: Path) -> None:
    with ExitStack() as stack:
        nodes = make_cluster(stack, tmp_path, 6, 1)  # 3 primaries, each with a replica
        config = tmp_path / "mesh"
        config.mkdir()
        address, port = free_address()
        cluster_mesh(config, address, port, nodes)
        with DeployedMesh(tmp_path, "up", config) as up:
            up.wait_for(f"{address}:{port}  redis")
            client = redis.Redis(host=address, port=port, decode_responses=True)
            keys = [f"k:{i}" for i in range(60)]
            for k in keys:
                assert client.set(k, k)
            victim = owner(nodes, key_slot(b"k:0"))
            assert victim.proc is not None
            victim.proc.kill()  # SIGKILL: no goodbye to the cluster
            killed = time.monotonic()
            last_error = killed
            errors = 0
            while time.monotonic() - max(last_error, killed + 3.0) < 3.0:
                assert time.monotonic() - killed < FAILOVER_BOUND + 5, "errors never stopped"
                for k in keys:
                    try:
                        assert client.get(k) == k
                    except (redis.ResponseError, redis.ConnectionError):
                        errors += 1
                        last_error = time.monotonic()
            window = last_error - killed
            assert window < FAILOVER_BOUND, window
            assert [client.get(k) for k in keys] == keys  # every key, the victim's included
            print(f"failover: {errors} failed GETs over {window:.2f} s")


def gets(node: RedisProcess) -> int:
    """How many GETs ``node`` has served since its stats were reset."""
    stats = direct(node).info("commandstats").get("cmdstat_get", {})
    return int(stats.get("calls", 0)) if isinstance(stats, dict) else 0


@pytest.mark.slow
def test_up_reads_from_replicas_by_read_policy(tmp_path: Path) -> None:
    with ExitStack() as stack:
        nodes = make_cluster(stack, tmp_path, 6, 1)  # 3 primaries, each with a replica
        config = tmp_path / "mesh"
        config.mkdir()
        address, port = free_address()
        cluster_mesh(config, address, port, nodes)
        service = f"""apiVersion: redis.aeraki.io/v1alpha1
kind: RedisService
metadata: {{name: redis-cluster, namespace: demo}}
spec:
  host: [{HOST}]
  settings: {{readPolicy: REPLICA}}
  redis: [{{route: {{host: {HOST}}}}}]
"""
        write(config / "service.yaml", service)
        with DeployedMesh(tmp_path, "up", config) as up:
            up.wait_for(f"{address}:{port}  redis")
            client = redis.Redis(host=address, port=port, decode_responses=True)
            keys = [f"r:{i}" for i in range(90)]
            for k in keys:
                assert client.set(k, k)
            roles = {n.port: direct(n).info("replication")["role"] for n in nodes}
            primaries = [n for n in nodes if roles[n.port] == "master"]
            replicas = [n for n in nodes if roles[n.port] == "slave"]
            assert len(primaries) == len(replicas) == 3
            for p in primaries:  # every write is on its replica before reading it there
                assert direct(p).execute_command("WAIT", 1, 5000) == 1
            # a new cluster's CLUSTER SLOTS names the replicas only once the nodes have
            # gossiped; the proxy asks for the table again every 5 s on a connection in use
            wait_until(lambda: client.get("r:1") == "r:1" and sum(map(gets, replicas)) > 0,
                       "a read served by a replica", timeout=20)  # fmt: skip
            for n in nodes:
                direct(n).config_resetstat()
            assert [client.get(k) for k in keys] == keys
            assert [gets(n) for n in primaries] == [0, 0, 0]
            assert sum(gets(n) for n in replicas) == len(keys)
            assert all(gets(n) > 0 for n in replicas)  # every shard's copy served its slots
            # writes still go to the primaries (a replica would answer MOVED, or READONLY)
            assert client.set("r:0", "changed") and client.incr("counter") == 1
            assert sum(direct(n).dbsize() for n in primaries) == len(keys) + 1
            # the policy edited live to MASTER: new connections read from the primaries
            write(config / "service.yaml", service.replace("REPLICA", "MASTER"))

            def primaries_only() -> bool:
                before = [gets(n) for n in replicas]
                with redis.Redis(host=address, port=port, decode_responses=True) as fresh:
                    assert [fresh.get(k) for k in keys[1:]] == keys[1:]
                return [gets(n) for n in replicas] == before

            wait_until(primaries_only, "reads back on the primaries", timeout=10)
            assert primaries_only()
            assert up.stop() == 0
