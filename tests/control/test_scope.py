"""Istio Sidecar scoping: which services each proxy's translation holds."""

from __future__ import annotations

import pytest

from metamesh.api import load_text
from metamesh.control.model import MeshModel, build_model
from metamesh.control.scope import egress_scope
from metamesh.control.translate import ProxyNode, translate

A, B, C = "a.ns-a.svc.cluster.local", "b.ns-b.svc.cluster.local", "c.shared.svc.cluster.local"


def entry(name: str, namespace: str, address: str, export: str = "") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{name}]
  addresses: [{address}]
  ports: [{{number: 7000, name: tcp-metaprotocol-thrift-x}}]
  endpoints: [{{address: 127.0.30.1}}]
  {export}
---
"""


def sidecar(namespace: str, hosts: str, name: str = "default", selector: str = "") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  {selector}
  egress: [{{hosts: {hosts}}}]
---
"""


BASE = (
    entry("a", "ns-a", "127.0.10.1")
    + entry("b", "ns-b", "127.0.10.2")
    + entry("c", "shared", "127.0.10.3")
)


def model(text: str) -> MeshModel:
    loaded = load_text(text)
    assert not loaded.problems, [p.format() for p in loaded.problems]
    return build_model(loaded)


def hosts_for(m: MeshModel, namespace: str | None, **labels: str) -> set[str]:
    node = ProxyNode("n", namespace, tuple(sorted(labels.items())))
    return {name.split("|")[3] for name in translate(m, node).clusters}


def test_without_sidecar_every_exported_service_is_visible() -> None:
    m = model(BASE)
    assert hosts_for(m, "ns-a") == {A, B, C}
    assert egress_scope(m, ProxyNode("n", "ns-a")).sidecar is None


def test_root_namespace_default_keeps_each_namespace_to_itself_and_shared() -> None:
    m = model(BASE + sidecar("istio-system", "[./*, shared/*]"))
    assert hosts_for(m, "ns-a") == {A, C}  # ./ is the proxy's namespace for the root default
    assert hosts_for(m, "ns-b") == {B, C}
    assert hosts_for(m, None) == {A, B, C}  # the embedded proxy: no namespace, no Sidecar


def test_namespace_sidecar_overrides_the_root_default() -> None:
    m = model(BASE + sidecar("istio-system", "[./*]") + sidecar("ns-a", "['*/*']"))
    assert hosts_for(m, "ns-a") == {A, B, C}
    assert hosts_for(m, "ns-b") == {B}


def test_workload_selector_picks_the_sidecar_for_matching_labels_only() -> None:
    text = (
        BASE
        + sidecar("ns-a", "[./*]")
        + sidecar(
            "ns-a",
            "[ns-b/b.ns-b.svc.cluster.local]",
            "client",
            "workloadSelector: {labels: {app: x}}",
        )
    )
    m = model(text)
    assert hosts_for(m, "ns-a", app="x") == {B}
    assert hosts_for(m, "ns-a", app="y") == {A}
    assert egress_scope(m, ProxyNode("n", "ns-a", (("app", "x"),))).sidecar == "ns-a/client"


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        ("['~/*']", set()),
        ("['*/c.shared.svc.cluster.local']", {C}),
        ("['*/*.ns-b.svc.cluster.local']", {B}),
        ("['shared/*', 'ns-b/*']", {B, C}),
    ],
)
def test_egress_host_forms(hosts: str, expected: set[str]) -> None:
    assert hosts_for(model(BASE + sidecar("ns-a", hosts)), "ns-a") == expected


def test_export_to_still_applies_under_a_sidecar() -> None:
    text = entry("a", "ns-a", "127.0.10.1") + entry("p", "ns-b", "127.0.10.2", "exportTo: [.]")
    m = model(text + sidecar("ns-a", "['*/*']"))
    assert hosts_for(m, "ns-a") == {A}
    assert hosts_for(m, "ns-b") == {A, "p.ns-b.svc.cluster.local"}


def test_a_malformed_egress_host_is_an_error_naming_the_field() -> None:
    loaded = load_text(BASE + sidecar("ns-a", "[reviews]"), "sc.yaml")
    (problem,) = [p for p in loaded.problems if p.is_error]
    assert "egress" in problem.format() and "namespace/dnsName" in problem.format()
