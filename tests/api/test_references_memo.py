"""The reference check reuses a router's problems only while what it names is unchanged."""

from __future__ import annotations

from metamesh.api import load_text
from metamesh.api.loader import ResourceSet
from metamesh.api.references import check_references

ROUTER = """
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {name: a, namespace: ns}
spec:
  hosts: [a.ns.svc.cluster.local]
  routes: [{name: r, route: [{destination: {host: b.ns.svc.cluster.local, subset: v2}}]}]
"""


def service(host: str, subsets: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host}, namespace: ns}}
spec:
  hosts: [{host}.ns.svc.cluster.local]
  addresses: [127.0.10.{len(host)}]
  ports: [{{number: 7000, name: tcp-metaprotocol-thrift-x}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host}, namespace: ns}}
spec: {{host: {host}.ns.svc.cluster.local, subsets: {subsets}}}
"""


def merged(*sets: ResourceSet) -> ResourceSet:
    out = ResourceSet()
    for one in sets:
        out.extend(one)
    return out


def subset_errors(resources: ResourceSet) -> list[str]:
    return [p.message for p in check_references(resources) if "subset" in p.message]


def test_a_router_is_rechecked_when_a_host_it_names_changes() -> None:
    router = load_text(ROUTER, "router.yaml")  # the same objects in every check below
    a = load_text(service("a", "[]"), "a.yaml")
    with_v2 = load_text(service("b", "[{name: v2, labels: {v: '2'}}]"), "b.yaml")
    assert subset_errors(merged(router, a, with_v2)) == []
    assert subset_errors(merged(router, a, with_v2)) == []  # reused
    without = load_text(service("b", "[{name: v1, labels: {v: '1'}}]"), "b.yaml")
    (error,) = subset_errors(merged(router, a, without))
    assert "'v2'" in error
    assert subset_errors(merged(router, a, with_v2)) == []
