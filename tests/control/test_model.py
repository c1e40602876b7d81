from __future__ import annotations

import ipaddress

from metamesh.control.model import (
    VIP_NETWORK,
    ClusterPolicy,
    OutlierPolicy,
    allocate_addresses,
    slot_address,
    vip_slot,
)
from tests.control.cases import DUBBO, THRIFT, example_model, model_of, service_entry

KV = "kv.ns.svc.cluster.local"


def test_example_services_ports_and_codecs() -> None:
    model = example_model()
    assert sorted(model.services) == [DUBBO, THRIFT]
    thrift = model.services[THRIFT]
    assert thrift.addresses == ("127.0.10.1",)
    (port,) = thrift.ports
    assert (port.number, port.protocol, port.application, port.codec) == (
        9090,
        "metaprotocol",
        "thrift",
        "thrift",
    )
    assert [e.port_for(port) for e in thrift.endpoints] == [19090, 19090]
    assert [e.address for e in thrift.endpoints_for("v2")] == ["127.0.20.2"]
    assert thrift.router is not None and thrift.router.name == "thrift-sample-server"
    assert not model.problems


def test_example_policies_merge_subset_over_top_level() -> None:
    dubbo = example_model().services[DUBBO]
    outlier = OutlierPolicy(consecutive_5xx=5, interval=5.0, base_ejection_time=30.0)
    top = ClusterPolicy(connect_timeout=1.0, max_connections=16, max_requests=1000, outlier=outlier)
    assert dubbo.policy(20880) == top
    assert dubbo.policy(20880, "v1") == top
    v2 = dubbo.policy(20880, "v2")
    assert (v2.lb_policy, v2.hash_key, v2.max_connections) == ("RING_HASH", "method", 16)


def test_port_level_settings_and_simple_lb_names() -> None:
    model = model_of(
        service_entry(
            extra="""---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: kv, namespace: ns}
spec:
  host: kv
  trafficPolicy:
    loadBalancer: {simple: LEAST_CONN}
    portLevelSettings:
    - port: {number: 7000}
      connectionPool: {tcp: {maxConnections: 3}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpHeaderName: user, maglev: {}}}
      outlierDetection: {consecutiveErrors: 2, minHealthPercent: 40}
"""
        )
    )
    kv = model.services[KV]
    assert kv.policy(7000) == ClusterPolicy(lb_policy="LEAST_REQUEST", max_connections=3)
    v1 = kv.policy(7000, "v1")
    assert (v1.lb_policy, v1.hash_key, v1.max_connections) == ("MAGLEV", "user", 3)
    assert v1.outlier == OutlierPolicy(consecutive_5xx=2, min_health_percent=40)
    assert [e.address for e in kv.endpoints_for("v1")] == ["127.0.30.1"]
    assert kv.endpoints_for("nope") == ()


def test_unresolvable_port_is_a_problem_not_an_error() -> None:
    model = model_of(service_entry(port_name="tcp-metaprotocol-nope"))
    (port,) = model.services[KV].ports
    assert port.protocol is None and not port.is_metaprotocol
    assert len(model.problems) == 1 and "nope" in model.problems[0]


def test_missing_address_is_allocated_stably_from_127_240() -> None:
    first = model_of(service_entry(addresses="[]")).services[KV]
    again = model_of(service_entry(addresses="[]")).services[KV]
    assert first.allocated_address
    assert first.addresses == again.addresses == (slot_address(vip_slot(KV)),)
    assert ipaddress.IPv4Address(first.addresses[0]) in VIP_NETWORK


def test_allocation_probes_past_collisions_and_taken_addresses() -> None:
    hosts = [f"h{i}.example" for i in range(300)]
    table = allocate_addresses(hosts, taken=[slot_address(vip_slot("h7.example"))])
    assert len(set(table.values())) == 300
    assert table["h7.example"] == slot_address(vip_slot("h7.example") + 1)
    # a host's address does not depend on unrelated hosts
    assert allocate_addresses(["h3.example"])["h3.example"] == table["h3.example"]
    for address in table.values():
        last = int(address.rsplit(".", 1)[1])
        assert 1 <= last <= 254


def test_export_to_visibility() -> None:
    model = model_of(service_entry(extra="  exportTo: ['.']"))
    kv = model.services[KV]
    assert kv.visible_to("ns") and kv.visible_to(None) and not kv.visible_to("other")


def test_a_rebuild_reuses_services_whose_resources_are_the_same_objects() -> None:
    from metamesh.api import load_text
    from metamesh.control.model import build_model

    loaded = load_text(service_entry("kv") + "---" + service_entry("db", "[127.0.10.8]"))
    first = build_model(loaded)
    again = build_model(loaded)  # same resource objects: same services
    assert all(again.services[h] is first.services[h] for h in first.services)
    changed = load_text(service_entry("kv", "[127.0.10.7]"))
    changed.extend(load_text(service_entry("db", "[127.0.10.8]")))
    third = build_model(changed)  # new objects, new services, equal where the content is
    assert third.services["kv.ns.svc.cluster.local"].addresses == ("127.0.10.7",)
    assert third.services["db.ns.svc.cluster.local"] == first.services["db.ns.svc.cluster.local"]
    broken = load_text(service_entry("kv", port_name="tcp-metaprotocol-nope-x"))
    assert build_model(broken).problems == build_model(broken).problems != ()  # replayed
