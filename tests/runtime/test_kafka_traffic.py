"""Kafka through the real proxy to real brokers (tests/support/kafka_broker.py): Tansu, a
Kafka-compatible broker, and the real Apache Kafka broker (0.9.0.1, the one the registries
carry); with real clients: kafka-python against both, aiokafka and kafkajs (Node) against
Tansu (they cannot talk to a 0.9 broker).

* Each client bootstraps from the proxy's listener only, produces, and consumes its messages
  back (aiokafka and kafkajs in a consumer group: FindCoordinator, JoinGroup, SyncGroup,
  OffsetCommit all go through the proxy). The broker advertises its own address; the proxy
  rewrites it in Metadata and FindCoordinator responses (``advertise``), so the clients'
  broker list names the proxy and every connection they open goes through it. The messages
  are read back from the broker directly too. kafka-python in a consumer group against Apache
  Kafka (Tansu assigns its group no partitions, even without the proxy).
* Metrics: Istio's ``istio_requests_total`` with ``request_protocol="kafka"``, and the
  per-API / per-API-and-topic rows of ``metamesh.filters.command_stats``.
* Routes on ``topic``: a Produce to a topic no route takes gets Kafka's
  UNKNOWN_TOPIC_OR_PARTITION from the proxy and never reaches the broker.
* Bad frames (a 2 GB size, a negative size, a size below a header) close that client with a
  counter and a log line while a kafka-python client keeps producing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import UnknownTopicOrPartitionError

from tests.runtime import mesh_config as mc
from tests.runtime.proxy_thread import ProxyThread
from tests.runtime.test_thrift_traffic import http_get, wait_until
from tests.support.kafka_broker import KINDS, Broker, running_broker
from tests.support.ports import free_port
from tests.support.prom import total

pytestmark = pytest.mark.interop

NODE_PEERS = Path(__file__).parents[1] / "peers" / "node"
CLUSTER = "outbound|9092||kafka.test"
SHARED = "outbound|9092|shared|kafka.test"


@pytest.fixture(scope="module", params=KINDS)
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    with running_broker(kind=request.param) as b:
        yield b


only_tansu = pytest.mark.parametrize("broker", ["tansu"], indirect=True)
only_apache = pytest.mark.parametrize("broker", ["apache-0.9"], indirect=True)


def kafka_listener(name: str, broker: Broker, **options: str) -> dict[str, Any]:
    """A Kafka listener on a free port, advertising itself in place of ``broker``."""
    port = free_port()
    listener = mc.listener(name, "kafka", name)
    listener["address"]["socket_address"]["port_value"] = port
    mpp = listener["meta_protocol_proxy"]
    mpp["codec"]["options"] = {"advertise": f"{broker.address}=127.0.0.1:{port}", **options}
    mpp["stat_prefix"] = "kafka.test"
    mpp["meta_protocol_filters"] = [
        {"name": "metamesh.filters.command_stats"},
        {"name": "aeraki.meta_protocol.filters.router"},
    ]
    return listener


@pytest.fixture(scope="module")
def mesh(broker: Broker) -> Iterator[ProxyThread]:
    no_topic = [{"name": "topic", "present_match": True, "invert_match": True}]
    routes = [
        mc.route("listed-topics", CLUSTER, topic="~orders|payments|events|guarded"),
        {"name": "no-topic", "match": {"metadata": no_topic}, "route": {"cluster": CLUSTER}},
    ]
    snap = mc.snapshot(
        [kafka_listener("kafka", broker), kafka_listener("shared", broker, share_upstream="true")],
        [mc.cluster(CLUSTER, broker.port), mc.cluster(SHARED, broker.port)],
        {"kafka": routes, "shared": [mc.route("all", SHARED)]},
    )
    with ProxyThread(snap, admin_port=0) as proxy:
        yield proxy


def bootstrap(proxy: ProxyThread) -> str:
    return f"127.0.0.1:{proxy.port('kafka')}"


def prometheus(proxy: ProxyThread) -> str:
    assert proxy.server is not None
    return http_get(proxy.server.bound_admin_port, "/stats/prometheus")[1]


def read(
    broker: Broker, bootstrap_servers: str, topic: str, count: int, wait_ms: int = 3000
) -> list[bytes]:
    """The first ``count`` messages of the topic's partition 0 (fewer if ``wait_ms`` pass
    without one), read with kafka-python from ``bootstrap_servers``."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers, consumer_timeout_ms=wait_ms,
        auto_offset_reset="earliest", fetch_max_wait_ms=100, **broker.client_options,
    )  # fmt: skip
    got: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, 0)])
        for m in consumer:
            got.append(m.value)
            if len(got) >= count:
                break
        return got
    finally:
        consumer.close()


def read_direct(broker: Broker, topic: str, count: int, wait_ms: int = 3000) -> list[bytes]:
    """What the broker itself holds (no proxy)."""
    return read(broker, broker.address, topic, count, wait_ms)


def test_kafka_python_produces_and_consumes_through_the_mesh(
    mesh: ProxyThread, broker: Broker
) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap(mesh), client_id="kp-orders", **broker.client_options
    )
    try:
        for i in range(5):
            producer.send("orders", b"order-%d" % i, partition=0).get(timeout=15)
        brokers = {(b.host, b.port) for b in producer._metadata.brokers()}
    finally:
        producer.close()
    assert brokers == {("127.0.0.1", mesh.port("kafka"))}, "the broker list names the proxy"
    expected = [b"order-%d" % i for i in range(5)]
    assert read(broker, bootstrap(mesh), "orders", 5) == expected
    assert read_direct(broker, "orders", 5) == expected
    text = prometheus(mesh)
    assert total(text, "istio_requests_total", request_protocol="kafka") >= 7
    assert total(text, "metamesh_command_requests_total", command="Produce/orders") >= 5
    assert total(text, "metamesh_command_requests_total", command="Fetch/orders") >= 1
    assert total(text, "metamesh_command_requests_total", command="Metadata") >= 1


@pytest.mark.slow
@only_apache
def test_kafka_python_consumer_group_through_the_mesh(mesh: ProxyThread, broker: Broker) -> None:
    """Apache Kafka's group coordinator through the proxy: FindCoordinator's answer is
    rewritten to the proxy, so JoinGroup, SyncGroup and OffsetCommit are counted there."""
    before = prometheus(mesh)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap(mesh), client_id="kp-payments", **broker.client_options
    )
    try:
        for i in range(3):
            producer.send("payments", b"pay-%d" % i, partition=0).get(timeout=15)
    finally:
        producer.close()
    consumer = KafkaConsumer(
        "payments", bootstrap_servers=bootstrap(mesh), group_id="kp-group",
        client_id="kp-consumer", auto_offset_reset="earliest", consumer_timeout_ms=10000,
        fetch_max_wait_ms=100, **broker.client_options,
    )  # fmt: skip
    got: list[bytes] = []
    try:
        for m in consumer:
            got.append(m.value)
            if len(got) == 3:
                break
        consumer.commit()
    finally:
        consumer.close()
    assert got == [b"pay-%d" % i for i in range(3)]
    after = prometheus(mesh)
    for api in ("FindCoordinator", "JoinGroup", "SyncGroup", "OffsetCommit"):
        grew = total(after, "metamesh_command_requests_total", command=api) - total(
            before, "metamesh_command_requests_total", command=api
        )
        assert grew >= 1, api


@pytest.mark.slow
@only_tansu
def test_aiokafka_consumer_group_through_the_mesh(mesh: ProxyThread, broker: Broker) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap(mesh), client_id="ak-payments")
        await producer.start()
        try:
            for i in range(3):
                await producer.send_and_wait("payments", b"pay-%d" % i, partition=0)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            "payments", bootstrap_servers=bootstrap(mesh), group_id="ak-group",
            auto_offset_reset="earliest", client_id="ak-consumer", session_timeout_ms=6000,
            heartbeat_interval_ms=500, rebalance_timeout_ms=2000,  # the broker holds a join so long
        )  # fmt: skip
        await consumer.start()
        got: list[bytes] = []
        try:
            coordinator = consumer._coordinator.coordinator_id
            node = consumer._client.cluster.broker_metadata(coordinator)
            assert node is not None and node.port == mesh.port("kafka"), node
            deadline = time.monotonic() + 30
            while len(got) < 3 and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                got += [m.value for ms in batches.values() for m in ms if m.value is not None]
        finally:
            await consumer.stop()
        return got

    expected = [b"pay-%d" % i for i in range(3)]
    assert asyncio.run(run()) == expected
    assert read_direct(broker, "payments", 3) == expected
    text = prometheus(mesh)
    for api in ("FindCoordinator", "JoinGroup", "SyncGroup"):
        assert total(text, "metamesh_command_requests_total", command=api) >= 1, api


@pytest.mark.slow
@only_tansu
def test_kafkajs_produces_and_consumes_in_a_group_through_the_mesh(
    mesh: ProxyThread, broker: Broker
) -> None:
    node = shutil.which("node")
    assert node is not None and (NODE_PEERS / "node_modules" / "kafkajs").is_dir(), (
        "node and tests/peers/node's kafkajs are installed by scripts/setup.sh"
    )
    env = {**os.environ, "KAFKAJS_NO_PARTITIONER_WARNING": "1"}
    out = subprocess.run(
        [node, "kafka_client.js", bootstrap(mesh), "events", "js-group", "4"],
        cwd=NODE_PEERS, env=env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    expected = [f"js-{i}" for i in range(4)]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected
    assert read_direct(broker, "events", 4) == [v.encode() for v in expected]


def test_a_topic_no_route_takes_is_refused_by_the_proxy(mesh: ProxyThread, broker: Broker) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap(mesh), retries=0, client_id="kp-secret",
        **broker.client_options,
    )  # fmt: skip
    try:
        future = producer.send("secret", b"leak", partition=0)
        with pytest.raises(UnknownTopicOrPartitionError):
            future.get(timeout=15)
        producer.send("orders", b"after", partition=0).get(timeout=15)  # same client, served
    finally:
        producer.close()
    assert read_direct(broker, "secret", 1, wait_ms=1000) == []
    text = prometheus(mesh)
    assert total(text, "istio_requests_total", request_protocol="kafka", response_flags="NR") >= 1


def test_producers_share_upstream_connections_where_the_listener_allows_it(
    mesh: ProxyThread, broker: Broker
) -> None:
    server = mesh.server
    assert server is not None

    def connects() -> int:
        return int(mesh.call(lambda: server.core.stats.upstream_connects))

    shared = f"127.0.0.1:{mesh.port('shared')}"
    before = connects()
    producers = [
        KafkaProducer(bootstrap_servers=shared, client_id=f"p{i}", **broker.client_options)
        for i in range(3)
    ]
    try:
        for round_ in range(3):
            futures = [p.send("audit", b"%d-%d" % (i, round_), partition=0) for i, p in
                       enumerate(producers)]  # fmt: skip
            for f in futures:
                f.get(timeout=15)
    finally:
        for p in producers:
            p.close()
    shared_connects = connects() - before
    expected = sorted(b"%d-%d" % (i, r) for r in range(3) for i in range(3))
    assert sorted(read_direct(broker, "audit", 9)) == expected
    # Three producers, each with a bootstrap and a broker connection to the proxy: one
    # upstream connection for all of them; the default listener opens one per client one.
    assert shared_connects == 1
    before = connects()
    produce_one = KafkaProducer(
        bootstrap_servers=bootstrap(mesh), client_id="alone", **broker.client_options
    )
    try:
        produce_one.send("orders", b"alone", partition=0).get(timeout=15)
    finally:
        produce_one.close()
    assert connects() - before == 2


def raw_client(proxy: ProxyThread, data: bytes) -> bool:
    """Send ``data`` on a fresh connection; True once the proxy closed it (within 10 s)."""
    with socket.create_connection(("127.0.0.1", proxy.port("kafka"))) as sock:
        sock.sendall(data)
        sock.settimeout(10)
        try:
            return sock.recv(1024) == b""
        except ConnectionResetError:
            return True


def test_bad_frames_close_only_their_client(
    mesh: ProxyThread, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "metamesh.proxy")
    before = prometheus(mesh)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap(mesh), client_id="kp-steady", **broker.client_options
    )
    try:
        producer.send("orders", b"before", partition=0).get(timeout=15)
        assert raw_client(mesh, struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 64)  # 2 GB
        assert raw_client(mesh, struct.pack(">i", -5) + b"\x00" * 8)
        assert raw_client(mesh, struct.pack(">i", 3) + b"abc")  # shorter than a header
        assert raw_client(mesh, struct.pack(">ihhih", 12, 3, 1, 1, 300) + b"ab")  # lying field
        producer.send("orders", b"after", partition=0).get(timeout=15)
    finally:
        producer.close()

    def grew(name: str) -> float:
        return total(prometheus(mesh), name) - total(before, name)

    wait_until(lambda: grew("metamesh_downstream_frame_too_large_total") == 1, "the 2 GB close")
    assert grew("metamesh_downstream_decode_errors_total") == 3
    lines: list[Any] = [r for r in caplog.records if "closing" in r.getMessage()]
    assert len(lines) == 4, [r.getMessage() for r in lines]
