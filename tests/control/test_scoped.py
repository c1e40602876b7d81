"""ScopedTranslator: one translation per scope, and a change re-translates only what it touches."""

from __future__ import annotations

from metamesh.control.model import MeshModel
from metamesh.control.scoped import ScopedTranslator, scope_key
from metamesh.control.translate import ProxyNode, translate
from tests.control.test_scope import entry, model, sidecar

ROOT_DEFAULT = sidecar("istio-system", "[./*]")
NS_A = [ProxyNode(f"a{i}", "ns-a", (("app", "client"),)) for i in range(3)]
NS_B = [ProxyNode(f"b{i}", "ns-b", (("app", "client"),)) for i in range(3)]


def mesh(a_address: str = "127.0.10.1", extra: str = "") -> MeshModel:
    return model(
        entry("a", "ns-a", a_address)
        + entry("a2", "ns-a", "127.0.10.5")
        + entry("b", "ns-b", "127.0.10.2")
        + ROOT_DEFAULT
        + extra
    )


def test_nodes_of_one_scope_share_one_translation_equal_to_translate() -> None:
    cache = ScopedTranslator()
    m = mesh()
    results = [cache(m, node) for node in NS_A + NS_B]
    assert all(r is results[0] for r in results[:3]) and all(r is results[3] for r in results[3:])
    assert sorted(cache.translations.values()) == [1, 1]
    for node, got in zip(NS_A + NS_B, results, strict=True):
        assert got == translate(m, node)


def test_a_change_visible_to_one_scope_retranslates_that_scope_only() -> None:
    cache = ScopedTranslator()
    before = mesh()
    b_before = cache(before, NS_B[0])
    cache(before, NS_A[0])
    built = cache.fragments_built
    after = mesh(a_address="127.0.10.9")  # a.ns-a moves: only ns-a's proxies see it
    got_a = cache(after, NS_A[1])
    assert cache(after, NS_B[1]) is b_before  # ns-b: not re-translated, same object
    assert cache.translations[scope_key(NS_A[0])] == 2
    assert cache.translations[scope_key(NS_B[0])] == 1
    assert cache.fragments_built == built + 1  # a2 (unchanged) reused its fragment
    assert got_a == translate(after, NS_A[1])
    assert "127.0.10.9_7000" in got_a.listeners


def test_an_equal_model_rebuilt_translates_nothing() -> None:
    cache = ScopedTranslator()
    first = cache(mesh(), NS_A[0])
    assert cache(mesh(), NS_A[0]) is first
    assert cache.translations[scope_key(NS_A[0])] == 1


def test_a_sidecar_change_retranslates_every_scope() -> None:
    cache = ScopedTranslator()
    cache(mesh(), NS_A[0])
    cache(mesh(), NS_B[0])
    after = mesh(extra=sidecar("ns-b", "['*/*']"))
    assert cache(after, NS_B[0]) == translate(after, NS_B[0])
    assert len(cache(after, NS_B[0]).clusters) == 3
    cache(after, NS_A[0])
    assert set(cache.translations.values()) == {2}
    assert cache.fragments_built == 3  # who sees what changed, not the services


def test_a_change_to_a_host_another_router_names_retranslates_all() -> None:
    router = """
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {name: b, namespace: ns-b}
spec:
  hosts: [b]
  routes: [{name: r, mirror: {host: a.ns-a.svc.cluster.local}, route: [{destination: {host: b}}]}]
"""
    cache = ScopedTranslator()
    b_before = cache(mesh(extra=router), NS_B[0])
    after = mesh(a_address="127.0.10.9", extra=router)
    assert cache(after, NS_B[0]) is not b_before
    assert cache(after, NS_B[0]) == translate(after, NS_B[0])
