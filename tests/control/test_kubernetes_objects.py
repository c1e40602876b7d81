"""Services, EndpointSlices and Pods -> ServiceEntries; custom resources -> resources (pure)."""

from __future__ import annotations

import copy
from typing import Any

from metamesh.api.istio import ServiceEntry
from metamesh.api.loader import ResourceSet, load_text
from metamesh.api.metaprotocol import MetaRouter
from metamesh.control.sources.dubbo_registry import interface_services
from metamesh.control.sources.kubernetes_objects import (
    ENDPOINT_SLICES,
    NAMESPACES,
    PODS,
    SERVICES,
    KubeObjects,
    Translator,
    custom_resources,
)
from metamesh.control.sources.kubernetes_status import verdict
from metamesh.control.sources.merge import SourceMerge
from tests.control.zookeeper_server import dubbo27_provider_node

SERVICE_FILE = "kubernetes://v1/services/shop/calc"
ROUTER_FILE = "kubernetes://metaprotocol.aeraki.io/metarouters/shop/calc"


def service(cluster_ip: str = "10.96.0.7", port_name: str = "tcp-metaprotocol-thrift-x") -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "calc", "namespace": "shop"},
        "spec": {
            "clusterIP": cluster_ip,
            "ports": [{"name": port_name, "port": 9090, "targetPort": "thrift"},
                      {"name": "http-admin", "port": 8080}],
        },
    }  # fmt: skip


def pod(name: str, version: str, sidecar: bool = False) -> Any:
    labels = {"app": "calc", "version": version}
    if sidecar:
        labels["security.istio.io/tlsMode"] = "istio"
    return {
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"serviceAccountName": "calc-sa"},
        "status": {"phase": "Running"},
    }


def endpoint_slice(*endpoints: tuple[str, str, bool]) -> Any:
    return {
        "metadata": {"name": "calc-1", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "calc"}},
        "ports": [{"name": "tcp-metaprotocol-thrift-x", "port": 7001}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ready},
             "targetRef": {"kind": "Pod", "name": name}}
            for ip, name, ready in endpoints
        ],
    }  # fmt: skip


def world() -> KubeObjects:
    store = KubeObjects()
    store.replace(SERVICES, [service()])
    store.replace(PODS, [pod("a", "v1"), pod("b", "v2", sidecar=True), pod("c", "v1")])
    slices = endpoint_slice(("10.0.0.1", "a", True), ("10.0.0.2", "b", True),
                            ("10.0.0.3", "c", False))  # fmt: skip
    store.replace(ENDPOINT_SLICES, [slices])
    return store


def entry(sets: dict[str, ResourceSet]) -> ServiceEntry:
    entries = sets[SERVICE_FILE].of_kind(ServiceEntry)
    assert len(entries) == 1, sets[SERVICE_FILE].problems
    return entries[0]


def test_a_service_is_a_service_entry_with_its_ready_pods() -> None:
    se = entry(Translator().sets(world(), custom_resources()))
    assert se.spec.hosts == ["calc.shop.svc.cluster.local"]
    assert se.spec.addresses == ["10.96.0.7"]
    assert [(p.number, p.name) for p in se.spec.ports] == [(9090, "tcp-metaprotocol-thrift-x")]
    assert se.spec.resolution == "STATIC"
    got = [(e.address, e.ports, e.labels.get("version"), e.service_account)
           for e in se.spec.endpoints]  # fmt: skip
    assert got == [
        ("10.0.0.1", {"tcp-metaprotocol-thrift-x": 7001}, "v1", None),  # no sidecar
        ("10.0.0.2", {"tcp-metaprotocol-thrift-x": 7001}, "v2", "calc-sa"),
    ]  # c is not ready


def test_headless_and_empty_services_and_other_ports() -> None:
    store = world()
    store.replace(SERVICES, [service(cluster_ip="None")])
    store.replace(ENDPOINT_SLICES, [])
    se = entry(Translator().sets(store, custom_resources()))
    assert se.spec.addresses == [] and se.spec.resolution == "NONE" and se.spec.endpoints == []
    store.replace(SERVICES, [service(port_name="http-web")])
    assert SERVICE_FILE not in Translator().sets(store, custom_resources())


def test_a_status_change_gives_the_same_set_and_a_label_change_a_new_one() -> None:
    store = world()
    router: dict[str, Any] = {
        "apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "MetaRouter",
        "metadata": {"name": "calc", "namespace": "shop", "resourceVersion": "7"},
        "spec": {"hosts": ["calc.shop.svc.cluster.local"], "routes": [{"name": "r"}]},
    }  # fmt: skip
    gvr = next(g for g, kind in custom_resources() if kind == "MetaRouter")
    store.replace(gvr, [router])
    translator = Translator()
    first = translator.sets(store, custom_resources())
    assert first[ROUTER_FILE].of_kind(MetaRouter)[0].spec.routes[0].name == "r"
    written = copy.deepcopy(router)
    written["metadata"]["resourceVersion"] = "8"
    written["status"] = {"conditions": [{"type": "Accepted", "status": "True"}]}
    store.apply(gvr, "MODIFIED", written)
    relabelled = pod("a", "v2")
    relabelled["status"] = {"phase": "Running", "podIP": "10.0.0.1"}
    store.apply(PODS, "MODIFIED", pod("c", "v1") | {"status": {"phase": "Pending"}})
    second = translator.sets(store, custom_resources())
    assert second[ROUTER_FILE] is first[ROUTER_FILE]
    assert second[SERVICE_FILE] is first[SERVICE_FILE]
    store.apply(PODS, "MODIFIED", relabelled)
    third = translator.sets(store, custom_resources())
    assert third[SERVICE_FILE] is not first[SERVICE_FILE]
    assert entry(third).spec.endpoints[0].labels["version"] == "v2"


def test_an_invalid_object_is_a_problem_naming_it_and_a_namespace_can_opt_out() -> None:
    store = world()
    gvr = next(g for g, kind in custom_resources() if kind == "MetaRouter")
    bad = {"apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "MetaRouter",
           "metadata": {"name": "calc", "namespace": "shop"}, "spec": {"hostz": []}}  # fmt: skip
    store.replace(gvr, [bad])
    sets = Translator().sets(store, custom_resources())
    problem = sets[ROUTER_FILE].problems[0]
    assert (problem.file, problem.name, problem.message) == (
        ROUTER_FILE,
        "shop/calc",
        "unknown field 'hostz'",
    )
    store.replace(
        NAMESPACES,
        [{"metadata": {"name": "shop", "labels": {"metamesh.io/discovery": "disabled"}}}],
    )
    assert Translator().sets(store, custom_resources()) == {}


def test_the_same_host_from_zookeeper_and_kubernetes_kubernetes_wins() -> None:
    """Registries in name order: a Kubernetes ServiceEntry before a ZooKeeper one (docs)."""
    lines: list[str] = []
    merge = SourceMerge(report=lines.append)
    gvr = next(g for g, kind in custom_resources() if kind == "ServiceEntry")
    se = {
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": {"hosts": ["org.apache.dubbo.demo.demoservice"], "addresses": ["127.0.10.7"],
                 "ports": [{"number": 20880, "name": "tcp-metaprotocol-dubbo-x"}]},
    }  # fmt: skip
    store = KubeObjects()
    store.replace(gvr, [se])
    merge.update("kubernetes", Translator().sets(store, custom_resources()))
    origin = "zookeeper://127.0.0.1:2181/dubbo/org.apache.dubbo.demo.DemoService/providers"
    node = dubbo27_provider_node("org.apache.dubbo.demo.DemoService", "10.0.0.1", 20880)
    zk = interface_services(origin, "org.apache.dubbo.demo.DemoService", [node],
                            namespace="default")  # fmt: skip
    merge.update("zookeeper", {origin: zk.resources})
    merged = merge({})
    entries = [e for one in merged.values() for e in one.of_kind(ServiceEntry)]
    assert [e.ref for e in entries] == ["default/demo"]
    assert len(lines) == 1 and "default/demo is used" in lines[0] and origin in lines[0]


def test_a_service_declared_by_a_file_too_is_reported_as_ignored() -> None:
    pinned = load_text(
        """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pinned, namespace: shop}
spec:
  hosts: [calc.shop.svc.cluster.local]
  addresses: [127.0.10.9]
  ports: [{number: 9090, name: tcp-metaprotocol-thrift-x}]
""",
        "mesh/pinned.yaml",
    )
    merge = SourceMerge(report=lambda line: None)
    merge.update("kubernetes", Translator().sets(world(), custom_resources()))
    merged = merge({"mesh/pinned.yaml": pinned})
    assert merged[SERVICE_FILE].of_kind(ServiceEntry) == []
    result = verdict(SERVICE_FILE, [], {}, merge.ignored)
    assert (result.accepted, result.reason) == (True, "ValidWithWarnings")
    assert "shop/pinned is used" in result.message
