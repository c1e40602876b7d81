"""``metamesh validate``: output format, summary and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from metamesh.cli import main
from tests.api.conftest import HOST, base_docs, set_path, to_yaml

MESH = Path(__file__).resolve().parents[2] / "examples" / "mesh"


def test_clean_set_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(MESH)]) == 0
    assert capsys.readouterr().out == "0 errors, 0 warnings in 8 resources from 3 files\n"


BAD = """\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: svc, namespace: ns}
spec:
  hosts: [svc.ns.svc.cluster.local]
  ports: [{number: 9090, name: tcp-metaprotocol-thrift}]
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: svc, namespace: ns}
spec:
  host: svc
  subsets: [{name: v1}, {name: v2}]
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {name: svc, namespace: ns}
spec:
  hosts: [svc.ns.svc.cluster.local]
  routes:
  - name: split
    route:
    - destination: {host: svc, subset: v1}
      weight: 30
    - destination: {host: svc, subset: v9}
      weight: 30
  - name: x
    route: [{destination: {host: svc}}]
"""


def test_errors_exit_one_with_compiler_style_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    assert main(["validate", str(bad)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{bad}:22: error: MetaRouter ns/svc: spec.routes[0].route: total destination weight "
        "60 != 100",
        f"{bad}:25: error: MetaRouter ns/svc: spec.routes[0].route[1].destination.subset: "
        f"no DestinationRule for '{HOST}' defines subset 'v9' (known: v1, v2)",
        f"{bad}:27: warning: MetaRouter ns/svc: spec.routes[1]: route 'x' is never used: "
        "route #0 before it has no match (only the last route should have no match)",
        "2 errors, 1 warning in 3 resources from 1 file",
    ]


def test_warnings_alone_exit_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = base_docs()
    set_path(docs, "dr", "spec.host", "elsewhere.ns.svc.cluster.local")
    set_path(docs, "mr", "spec.routes.0.route.0.destination.subset", None)
    (tmp_path / "w.yaml").write_text(to_yaml(docs))
    assert main(["validate", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ": warning: DestinationRule ns/svc: spec.host: no ServiceEntry declares" in out
    assert out.endswith("0 errors, 1 warning in 4 resources from 1 file\n")


def test_invalid_yaml_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.yaml").write_text("a: [\n")
    assert main(["validate", str(tmp_path / "x.yaml"), str(tmp_path / "gone.yaml")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{tmp_path / 'gone.yaml'}: error: no such file")
    assert out[1].startswith(f"{tmp_path / 'x.yaml'}:2: error: invalid YAML")


def test_subprocess_and_help() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "metamesh", "validate", "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0 and "PATH" in run.stdout
    run = subprocess.run(
        [sys.executable, "-m", "metamesh", "validate", str(MESH)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


FOREIGN = """\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: ns}
spec: {hosts: [reviews]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews, namespace: ns}
"""


def test_kinds_not_read_are_listed_and_fail_only_with_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mesh.yaml").write_text(to_yaml(base_docs()))
    (tmp_path / "istio.yaml").write_text(FOREIGN)
    istio = tmp_path / "istio.yaml"
    assert main(["validate", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{istio}:1: info: VirtualService: skipped 1 object (ns/reviews): "
        "metamesh does not read VirtualService (networking.istio.io/v1beta1)",
        f"{istio}:6: info: Deployment: skipped 1 object (ns/reviews): "
        "metamesh does not read Deployment (apps/v1)",
        "0 errors, 0 warnings, 2 skipped kinds in 4 resources from 1 file",
    ]
    assert main(["validate", "--strict", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.endswith(
        "0 errors, 0 warnings, 2 skipped kinds in 4 resources from 1 file "
        "(--strict: any of them fails)\n"
    )


def test_strict_fails_on_warnings_and_passes_a_clean_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "--strict", str(MESH)]) == 0
    assert capsys.readouterr().out == "0 errors, 0 warnings in 8 resources from 3 files\n"
    docs = base_docs()
    set_path(docs, "dr", "spec.host", "elsewhere.ns.svc.cluster.local")
    set_path(docs, "mr", "spec.routes.0.route.0.destination.subset", None)
    (tmp_path / "w.yaml").write_text(to_yaml(docs))
    assert main(["validate", str(tmp_path)]) == 0
    assert main(["validate", "--strict", str(tmp_path)]) == 1


def test_config_limits_are_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # examples/mesh holds 8 resources: under a limit of 7 the whole load is refused, naming it
    assert main(["validate", "--max-config-resources", "7", str(MESH)]) == 1
    out = capsys.readouterr().out
    assert "7" in out and "resources" in out and "error" in out
    assert main(["validate", "--max-config-resources", "8", str(MESH)]) == 0
    capsys.readouterr()
    # the same document is refused or accepted by the alias ratio alone
    shared = tmp_path / "shared.yaml"
    shared.write_text(_shared_block_entry(16))
    assert main(["validate", str(shared)]) == 0
    capsys.readouterr()
    assert main(["validate", "--yaml-alias-ratio", "1", str(shared)]) == 1
    assert "alias" in capsys.readouterr().out
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (1024 * 1024) + b"\n")
    assert main(["validate", "--max-config-file-mib", "1", str(big)]) == 1
    assert "big.yaml" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--max-config-documents must be at least 1"):
        main(["validate", "--max-config-documents", "0", str(MESH)])


def _shared_block_entry(uses: int) -> str:
    """A valid ServiceEntry whose endpoints share one labels block ``uses`` times (aliases that
    expand to well over the floor of 1,000 nodes, but under 10x the document)."""
    labels = "{" + ", ".join(f"k{i}: v{i}" for i in range(30)) + "}"
    endpoints = [f"  - {{address: 127.0.0.{i + 1}, labels: *l}}" for i in range(uses)]
    return (
        "\n".join(
            [
                "apiVersion: networking.istio.io/v1beta1",
                "kind: ServiceEntry",
                "metadata: {name: shared, namespace: ns}",
                "spec:",
                "  hosts: [shared.example]",
                "  addresses: [127.0.10.98]",
                "  resolution: STATIC",
                "  ports: [{number: 9, name: tcp-metaprotocol-thrift-x}]",
                "  endpoints:",
                f"  - {{address: 127.0.0.254, labels: &l {labels}}}",
                *endpoints,
            ]
        )
        + "\n"
    )
