"""deploy/ is what ``metamesh render-manifests`` prints, and its CRDs follow the models."""

from __future__ import annotations

import io
import subprocess
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml

from metamesh.api.loader import KINDS
from metamesh.cli import main
from metamesh.control.sources.kubernetes_manifests import documents, render
from metamesh.control.sources.kubernetes_objects import plural
from tests.control.kube_apiserver import RunningApiServer

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize("part", ["crds", "crds-aeraki", "control-plane", "sidecar-template"])
def test_deploy_files_are_the_rendered_manifests(part: str) -> None:
    rendered = render(part)
    assert (DEPLOY / f"{part}.yaml").read_text() == rendered, (
        f"deploy/{part}.yaml is stale: regenerate it with "
        f"`metamesh render-manifests {part} > deploy/{part}.yaml` (crds-aeraki: from Python)"
    )


def test_render_manifests_prints_them() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["render-manifests", "crds"]) == 0
    assert out.getvalue() == render("crds")


def _walk(node: Any, path: str = "") -> list[str]:
    """Paths of schema nodes that are not structural (no type and not marked free-form)."""
    bad = []
    if isinstance(node, dict):
        if "$ref" in node or "anyOf" in node or "oneOf" in node or "title" in node:
            bad.append(path)
        if not (
            {"type", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string"}
            & node.keys()
        ):
            bad.append(path)
        for key in ("properties",):
            for name, child in (node.get(key) or {}).items():
                bad += _walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            bad += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            bad += _walk(node["additionalProperties"], f"{path}{{}}")
    return bad


def test_every_kind_has_a_structural_crd_and_read_rights() -> None:
    crds = {c["spec"]["names"]["kind"]: c for c in documents("crds")}
    assert set(crds) == set(KINDS)
    for kind, crd in crds.items():
        cls = KINDS[kind]
        versions = [v["name"] for v in crd["spec"]["versions"]]
        assert [f"{crd['spec']['group']}/{v}" for v in versions] == list(cls.API_VERSIONS)
        assert sum(v["storage"] for v in crd["spec"]["versions"]) == 1
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert _walk(schema) == [], kind
        assert crd["spec"]["scope"] == ("Namespaced" if cls.NAMESPACED else "Cluster")
    rules = next(d for d in documents("control-plane") if d["kind"] == "ClusterRole")["rules"]
    readable = {r for rule in rules if "watch" in rule["verbs"] for r in rule["resources"]}
    assert {plural(k) for k in KINDS} | {"services", "pods", "namespaces", "endpointslices"} <= (
        readable
    )
    writes = {(r, v) for rule in rules for r in rule["resources"] for v in rule["verbs"]}
    assert not any(
        v in ("create", "update", "patch", "delete")
        for r, v in writes
        if not r.endswith("/status") and r != "events"
    )


def test_a_duration_is_a_string_and_an_enum_is_kept() -> None:
    crd = next(c for c in documents("crds") if c["spec"]["names"]["kind"] == "MetaRouter")
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    route = spec["properties"]["routes"]["items"]["properties"]
    assert route["timeout"] == {"type": "string", "nullable": True}
    retry_on = route["retries"]["properties"]["retryOn"]["items"]
    assert retry_on["enum"] == ["connect-failure", "reset", "error-response", "timeout"]
    assert list(yaml.safe_load_all(render("crds"))) == documents("crds")


def test_the_crds_schemas_refuse_what_the_models_refuse(tmp_path: Path) -> None:
    """Applied with kubectl to the stand-in, which checks objects against their CRD's schema."""
    router = """apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: demo}}
spec:
  hosts: [demo.default.svc.cluster.local]
  routes:
  - {{name: r, timeout: {timeout}, retries: {{retryOn: [{retry_on}]}}}}
"""
    with RunningApiServer() as api:
        kubeconfig = str(api.kubeconfig(tmp_path / "kubeconfig"))

        def kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["kubectl", "--kubeconfig", kubeconfig, *args, "--validate=false"],
                input=stdin, capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip

        assert kubectl("apply", "-f", str(DEPLOY / "crds.yaml")).returncode == 0
        good = router.format(timeout="1.5s", retry_on="reset")
        assert kubectl("apply", "-f", "-", stdin=good).returncode == 0
        number = kubectl("apply", "-f", "-", stdin=router.format(timeout=5, retry_on="reset"))
        assert number.returncode != 0
        assert "spec.routes[0].timeout in body must be of type string" in number.stderr
        enum = kubectl("apply", "-f", "-", stdin=router.format(timeout="1s", retry_on="later"))
        assert enum.returncode != 0 and 'Unsupported value: "later"' in enum.stderr
