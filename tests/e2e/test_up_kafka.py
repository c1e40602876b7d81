"""Kafka in a deployed mesh: a ``tcp-kafka`` ServiceEntry port -> ``metamesh up`` -> the Kafka
codec, with real brokers (tests/support/kafka_broker.py: Tansu, a Kafka-compatible broker, and
the real Apache Kafka broker 0.9.0.1) and real kafka-python clients that know only the mesh
address.

* The port name alone selects the codec; the control plane builds the ``advertise`` map from
  the ServiceEntry (its endpoint -> its address), so the clients' broker list names the mesh.
* Authorization by topic and client id (a MetaAuthorizationPolicy DENY on ``topic`` unless
  ``client_id`` is the auditor): Kafka's TOPIC_AUTHORIZATION_FAILED for the others, nothing
  written on the broker.
* A local rate limit by client id (a MetaRouter ``localRateLimit`` condition on ``client_id`` and
  ``api``): the greedy client's third Produce gets THROTTLING_QUOTA_EXCEEDED; others are served.
* Istio metrics with ``request_protocol="kafka"`` and the service as destination, and the
  per-API-and-topic request counts every Kafka listener keeps.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import ThrottlingQuotaExceededError, TopicAuthorizationFailedError

from tests.e2e.mesh import DeployedMesh, free_address, write
from tests.support.kafka_broker import KINDS, Broker, running_broker
from tests.support.prom import total

pytestmark = pytest.mark.interop

HOST = "kafka.demo.svc.cluster.local"


def mesh_config(directory: Path, address: tuple[str, int], broker: Broker) -> None:
    write(
        directory / "kafka.yaml",
        f"""apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: kafka, namespace: demo}}
spec:
  hosts: [{HOST}]
  addresses: [{address[0]}]
  ports: [{{number: {address[1]}, name: tcp-kafka}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp-kafka: {broker.port}}}, labels: {{app: kafka}}}}
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: kafka, namespace: demo}}
spec:
  hosts: [{HOST}]
  routes:
  - {{name: all, route: [{{destination: {{host: {HOST}}}}}]}}
  localRateLimit:
    conditions:
    - match: {{attributes: {{client_id: {{exact: greedy}}, api: {{exact: Produce}}}}}}
      tokenBucket: {{maxTokens: 2, tokensPerFill: 1, fillInterval: 3600s}}
---
apiVersion: metamesh.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {{name: audit-topic, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: kafka}}}}
  action: DENY
  rules:
  - to:
    - operation:
        attributes: {{topic: {{exact: audit}}}}
        notAttributes: {{client_id: {{exact: auditor}}}}
""",
    )


def produce(
    broker: Broker, bootstrap: str, client_id: str, topic: str, values: list[bytes]
) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, client_id=client_id, retries=0, **broker.client_options
    )
    try:
        for value in values:
            producer.send(topic, value, partition=0).get(timeout=15)
    finally:
        producer.close()


def read(broker: Broker, bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, consumer_timeout_ms=3000, auto_offset_reset="earliest",
        fetch_max_wait_ms=100, **broker.client_options,
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


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_up_serves_kafka_with_topic_authz_and_client_rate_limits(tmp_path: Path, kind: str) -> None:
    config = tmp_path / "mesh"
    config.mkdir()
    address = free_address()
    mesh = f"{address[0]}:{address[1]}"
    with running_broker(kind=kind) as broker:
        mesh_config(config, address, broker)
        with DeployedMesh(tmp_path, "up", config) as up:
            up.wait_for(f"{mesh}  kafka")
            producer = KafkaProducer(
                bootstrap_servers=mesh, client_id="app", **broker.client_options
            )
            try:
                producer.send("orders", b"o1", partition=0).get(timeout=15)
                brokers = {(b.host, b.port) for b in producer._metadata.brokers()}
            finally:
                producer.close()
            assert brokers == {address}, "the broker list names the mesh"
            assert read(broker, mesh, "orders", 1) == [b"o1"]

            with pytest.raises(TopicAuthorizationFailedError):
                produce(broker, mesh, "intruder", "audit", [b"x"])
            produce(broker, mesh, "auditor", "audit", [b"a1"])
            assert read(broker, broker.address, "audit", 2) == [b"a1"]

            with pytest.raises(ThrottlingQuotaExceededError):
                produce(broker, mesh, "greedy", "orders", [b"g1", b"g2", b"g3"])
            produce(broker, mesh, "app", "orders", [b"o2"])
            assert read(broker, broker.address, "orders", 4) == [b"o1", b"g1", b"g2", b"o2"]

            text = scrape(up.admin())
            labels = {"request_protocol": "kafka", "destination_service": HOST}
            assert total(text, "istio_requests_total", **labels) >= 10
            assert total(text, "metamesh_rbac_denied_total") >= 1
            per_topic = {"command": "Produce/orders", "destination_service": HOST}
            assert total(text, "metamesh_command_requests_total", **per_topic) >= 5
        assert up.stop() == 0


def scrape(admin: str) -> str:
    with urllib.request.urlopen(f"http://{admin}/stats/prometheus", timeout=10) as r:
        text: str = r.read().decode()
    return text
