"""Loading YAML: multi-document files, directories, and every kind of failure as a Problem."""

from __future__ import annotations

from pathlib import Path

from metamesh.api import DestinationRule, MetaRouter, ServiceEntry, fqdn, load_paths, load_text

SE = """\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: a
spec:
  hosts: [a.example]
"""
DR = """\
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: a
  namespace: other
spec:
  host: a.example
"""


def test_multi_document_with_empty_documents() -> None:
    result = load_text(f"---\n{SE}---\n---\n{DR}", "f.yaml")
    assert result.problems == []
    (se,) = result.of_kind(ServiceEntry)
    (dr,) = result.of_kind(DestinationRule)
    assert se.namespace == "default" and dr.namespace == "other"
    assert [item.origin.document for item in result.items] == [0, 2]


def test_default_namespace_can_be_chosen() -> None:
    (se,) = load_text(SE, default_namespace="prod").of_kind(ServiceEntry)
    assert se.namespace == "prod"


def test_bad_yaml_reports_file_and_line_and_keeps_earlier_documents() -> None:
    text = SE + "---\nkind: ServiceEntry\nmetadata: {name: [unclosed\n"
    result = load_text(text, "bad.yaml")
    assert len(result.items) == 1
    (problem,) = result.problems
    assert problem.file == "bad.yaml" and problem.line == 10  # where the parser gave up
    assert problem.message.startswith("invalid YAML")
    assert problem.message.endswith("(while parsing a flow sequence started at line 9)")
    assert problem.format().startswith("bad.yaml:10: error: invalid YAML")


FOREIGN = """\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: ns}
spec: {hosts: [reviews]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: ratings}
---
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: {name: default, namespace: istio-system}
spec: {}
"""


def test_kinds_metamesh_does_not_read_are_skipped_once_per_kind_and_file() -> None:
    result = load_text(SE + "---\n" + FOREIGN, "mixed.yaml")
    assert len(result.of_kind(ServiceEntry)) == 1
    assert [(p.severity, p.kind, p.line) for p in result.problems] == [
        ("info", "VirtualService", 8),
        ("info", "Service", 13),
        ("info", "Telemetry", 21),
    ]
    first = result.problems[0]
    assert not first.is_error
    assert first.format() == (
        "mixed.yaml:8: info: VirtualService: skipped 2 objects (ns/reviews, ratings): "
        "metamesh does not read VirtualService (networking.istio.io/v1beta1)"
    )


def test_each_file_reports_its_own_skipped_kinds(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(FOREIGN)
    (tmp_path / "b.yaml").write_text(FOREIGN)
    result = load_paths([tmp_path])
    assert sorted((Path(p.file).name, p.kind) for p in result.problems) == [
        ("a.yaml", "Service"),
        ("a.yaml", "Telemetry"),
        ("a.yaml", "VirtualService"),
        ("b.yaml", "Service"),
        ("b.yaml", "Telemetry"),
        ("b.yaml", "VirtualService"),
    ]


def test_unknown_kind_that_is_no_kubernetes_object_is_an_error() -> None:
    result = load_text("apiVersion: v1\nkind: Pod\nmetadata: {labels: {}}\n", "k.yaml")
    (problem,) = result.problems
    assert problem.is_error
    assert problem.kind == "Pod" and problem.field_path == "kind" and problem.line == 2
    assert "unknown kind 'Pod'" in problem.message
    assert "not a Kubernetes object (no metadata.name)" in problem.message


def test_unknown_kind_in_a_group_metamesh_owns_is_an_error() -> None:
    text = "apiVersion: metaprotocol.aeraki.io/v1alpha1\nkind: MetaRoutr\nmetadata: {name: r}\n"
    (problem,) = load_text(text, "k.yaml").problems
    assert problem.is_error and problem.line == 2
    assert problem.message == (
        "unknown kind 'MetaRoutr' in API group metaprotocol.aeraki.io "
        "(its kinds: ApplicationProtocol, MetaRouter)"
    )


def test_skipped_kind_close_to_a_metamesh_kind_is_a_warning() -> None:
    text = SE.replace("kind: ServiceEntry", "kind: ServiceEntyr")
    (problem,) = load_text(text, "k.yaml").problems
    assert problem.severity == "warning" and problem.kind == "ServiceEntyr"
    assert problem.message.endswith("; did you mean ServiceEntry?")


def test_tab_in_indentation_says_tab_with_file_and_line() -> None:
    for text, line in (
        (SE.replace("  hosts:", "\thosts:"), 6),  # libyaml: "cannot start any token"
        ("a:\n  - x\n\t- y\n", 3),  # libyaml: "tab character that violates indentation"
    ):
        (problem,) = load_text(text, "t.yaml").problems
        assert problem.line == line
        assert "tab" in problem.message
        assert problem.format().startswith(f"t.yaml:{line}: error: invalid YAML: ")


def test_missing_kind_and_non_mapping_documents() -> None:
    result = load_text("metadata: {name: x}\n---\n- a list\n", "k.yaml")
    messages = [p.message for p in result.problems]
    assert messages == ["missing kind", "document is not a mapping"]


def test_wrong_api_version_for_kind() -> None:
    text = SE.replace("networking.istio.io/v1beta1", "networking.istio.io/v2")
    (problem,) = load_text(text).problems
    assert problem.field_path == "apiVersion" and problem.line == 1


def test_unknown_field_names_field_path_and_line() -> None:
    text = SE + "  portz: []\n"
    (problem,) = load_text(text, "u.yaml").problems
    assert (problem.field_path, problem.line) == ("spec.portz", 7)
    assert problem.message == "unknown field 'portz'"
    assert problem.format() == (
        "u.yaml:7: error: ServiceEntry default/a: spec.portz: unknown field 'portz'"
    )


def test_every_model_error_is_collected() -> None:
    text = SE.replace("hosts: [a.example]", "resolution: NOPE\n  location: X\n  bogus: 1")
    result = load_text(text + "---\n" + SE.replace("name: a", "name: b") + "  x: 1\n")
    paths = sorted(p.field_path for p in result.problems)
    assert paths == ["spec.bogus", "spec.location", "spec.resolution", "spec.x"]


def test_status_and_metadata_extras_are_accepted() -> None:
    text = SE.replace(
        "  name: a\n", "  name: a\n  labels: {app: a}\n  resourceVersion: '7'\n  uid: u\n"
    )
    result = load_text(text + "status: {conditions: []}\n")
    assert result.problems == [] and len(result.items) == 1


def test_kubernetes_list_is_unpacked() -> None:
    text = "apiVersion: v1\nkind: List\nitems:\n- " + SE.replace("\n", "\n  ").rstrip() + "\n"
    text += "- {apiVersion: networking.istio.io/v1, kind: DestinationRule, metadata: {name: b},"
    text += " spec: {host: a, bad: 1}}\n"
    result = load_text(text)
    assert len(result.of_kind(ServiceEntry)) == 1
    (problem,) = result.problems
    assert problem.field_path == "spec.bad" and problem.line == 10


def test_directory_is_loaded_recursively_in_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "dr.yml").write_text(DR)
    (tmp_path / "a.yaml").write_text(SE)
    (tmp_path / "notes.txt").write_text("not yaml: [")
    result = load_paths([tmp_path])
    assert result.problems == []
    assert [type(i.resource) for i in result.items] == [ServiceEntry, DestinationRule]
    assert result.items[1].origin.file == str(tmp_path / "b" / "dr.yml")


def test_missing_path_is_a_problem(tmp_path: Path) -> None:
    (problem,) = load_paths([tmp_path / "nope.yaml"]).problems
    assert "no such file" in problem.message


def test_field_line_lookup_for_validation() -> None:
    text = (
        "apiVersion: metaprotocol.aeraki.io/v1alpha1\nkind: MetaRouter\nmetadata: {name: r}\n"
        "spec:\n  hosts: [a]\n  routes:\n  - name: x\n    route:\n    - destination: {host: a}\n"
        "      weight: 5\n"
    )
    (item,) = load_text(text).items
    assert isinstance(item.resource, MetaRouter)
    assert item.origin.line_of(("spec", "routes", 0, "route", 0, "weight")) == 10
    assert item.origin.line_of(("spec", "routes", 0, "missing")) == 7


def test_fqdn() -> None:
    assert fqdn("reviews", "prod") == "reviews.prod.svc.cluster.local"
    assert fqdn("reviews.prod", "x") == "reviews.prod"
    assert fqdn("org.apache.dubbo.demo", "x") == "org.apache.dubbo.demo"
    assert fqdn("*.example.com", "x") == "*.example.com"
