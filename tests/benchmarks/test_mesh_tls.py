"""The two-hop mutual TLS benchmark (benchmarks/mesh_tls.py) and its configs.

The mesh manifests pass ``metamesh validate`` without a warning (every field acted on); the
Envoy pair's configs pass Envoy's own validation; and one tiny run of the harness (a second of
``c4k8`` and of handshakes, one repetition) measures metamesh, the Envoy L7 pair and the
plaintext C floor pair and the plaintext metamesh mesh with every reply's id matched, and every
``openssl s_time`` handshake completed by the server side (the plaintext targets have no TLS
port, so two handshake rows). Only
in the pure pass: the harness is the same for either build, and the mesh's native build is
what the mesh e2e tests run in the native pass (this file's ~25 s are kept out of it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import mesh_tls
from benchmarks.mesh_tls_configs import envoy_pair, write_mesh
from benchmarks.mesh_tls_targets import MeshCa
from benchmarks.targets import find_envoy

ENVOY = find_envoy()
NATIVE = bool(os.environ.get("METAMESH_EXPECT_NATIVE"))
pytestmark = pytest.mark.skipif(NATIVE, reason="the harness is the same on either build")


@pytest.mark.parametrize("mtls", [True, False], ids=["mtls", "plaintext"])
def test_the_mesh_manifests_validate_without_warnings(mtls: bool, tmp_path: Path) -> None:
    services = {"thrift": (15001, 15002), "dubbo": (15003, 15004)}
    mesh = write_mesh(tmp_path / "mesh", services, mtls)
    run = subprocess.run(
        [sys.executable, "-m", "metamesh", "validate", str(mesh)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 errors, 0 warnings in 10 resources" in run.stdout, run.stdout + run.stderr


@pytest.mark.skipif(ENVOY is None, reason="no Envoy (benchmarks/setup.sh)")
@pytest.mark.parametrize("kind", ["l7", "tcp"])
def test_the_envoy_pair_passes_envoy_validation(kind: str, tmp_path: Path) -> None:
    import yaml

    ca = MeshCa(tmp_path / "ca")
    certs = {"sleep": ca.issue("client-ns", "sleep"), "server": ca.issue("bench", "server")}
    ports = {"client": 1, "client_admin": 2, "server": 3, "server_admin": 4, "upstream": 5}
    for config in envoy_pair(kind, "dubbo", ports, certs, ca.root):
        path = tmp_path / "envoy.yaml"
        path.write_text(yaml.safe_dump(config))
        run = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.slow
@pytest.mark.skipif(ENVOY is None, reason="no Envoy (benchmarks/setup.sh)")
def test_a_tiny_run_measures_both_two_hop_paths(capsys: pytest.CaptureFixture[str]) -> None:
    code = mesh_tls.main(
        ["--protocol", "thrift",
         "--targets", "metamesh,envoy,floor-c,floor-py,metamesh-plain,metamesh-static",
         "--shapes", "c4k8",
         "--reps", "1", "--warmup", "0.5", "--duration", "1", "--handshake-seconds", "1",
         "--build", "pure", "--no-save"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "Unavailable" not in out, out
    rows = {line.split("|")[2].strip(): line for line in out.splitlines() if "| c4k8 |" in line}
    floor = "floor: C x2, plaintext, no features"
    plain = "metamesh x2, plaintext"
    static = "metamesh static x2, plaintext, no mesh"
    mesh = "metamesh x2 + mTLS"
    floor_py = "floor: Python (mypyc)+uvloop x2, plaintext, no features"
    envoy = "Envoy thrift_proxy x2 + mTLS"
    assert set(rows) == {mesh, envoy, floor, floor_py, plain, static}, out
    for row in rows.values():
        assert "failed" not in row and "errors" not in row and "id mismatches" not in row, row
    for measured in (mesh, floor, floor_py, plain, static):
        assert re.fullmatch(r"\d+\.\d\dx", rows[measured].split("|")[9].strip()), out
    done = re.findall(r"\| ([\d,]+) of ([\d,]+) \|", out)
    assert len(done) == 2 and all(a == b and a != "0" for a, b in done), out
