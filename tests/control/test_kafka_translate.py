"""``tcp-kafka`` ports -> xDS -> the proxy's config: the Kafka codec, and the advertise map
that keeps clients on the mesh (table tests; the e2e is tests/e2e/test_up_kafka.py)."""

from __future__ import annotations

from metamesh.api import load_text, validate
from metamesh.control.model import build_model
from metamesh.control.to_proxy import to_snapshot
from metamesh.control.translate import translate
from metamesh.proxy import config as cfg


def broker(n: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: kafka-{n}, namespace: ns}}
spec:
  hosts: [kafka-{n}.ns.svc.cluster.local]
  addresses: [127.0.40.{n}]
  ports: [{{number: 9092, name: tcp-kafka-broker}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.{n}, ports: {{tcp-kafka-broker: 19092}}}}]
---
"""


def snapshot(text: str) -> cfg.Snapshot:
    loaded = load_text(text, "mesh.yaml")
    assert [p.format() for p in validate(loaded) if p.is_error] == []
    x = translate(build_model(loaded))
    return to_snapshot(x.listeners.values(), x.clusters.values(), x.endpoints, x.routes.values())


def test_each_broker_gets_a_kafka_listener_advertising_every_broker_through_the_mesh() -> None:
    snap = snapshot(broker(1) + broker(2))
    expected = (("advertise", "10.0.0.1:19092=127.0.40.1:9092,10.0.0.2:19092=127.0.40.2:9092"),)
    for n in (1, 2):
        listener = snap.listeners[f"127.0.40.{n}_9092"]
        assert listener.codec == "aeraki.meta_protocol.codec.kafka"
        assert listener.codec_options == expected
        assert listener.filters[0] == "metamesh.filters.command_stats"
        cluster = snap.clusters[f"outbound|9092||kafka-{n}.ns.svc.cluster.local"]
        assert [(e.address, e.port) for e in cluster.endpoints] == [(f"10.0.0.{n}", 19092)]


def test_other_protocols_get_no_advertise_map() -> None:
    text = broker(1).replace("tcp-kafka-broker", "tcp-metaprotocol-thrift")
    assert snapshot(text).listeners["127.0.40.1_9092"].codec_options == ()


def test_a_kafka_service_entry_with_several_brokers_is_a_warning() -> None:
    text = broker(1).replace(
        "endpoints: [{address: 10.0.0.1, ports: {tcp-kafka-broker: 19092}}]",
        "endpoints: [{address: 10.0.0.1}, {address: 10.0.0.2}]",
    )
    problems = validate(load_text(text, "mesh.yaml"))
    [warning] = [p for p in problems if "one ServiceEntry per broker" in p.format()]
    assert not warning.is_error
    assert "mesh.yaml" in warning.format() and "spec.endpoints" in warning.format()
    assert validate(load_text(broker(1), "mesh.yaml")) == []
