"""``examples/mesh`` with its backends, as the README runs it: ``metamesh demo backends``
(real Apache thrift and dubbo-py servers v1/v2 on the ServiceEntries' endpoint addresses),
``metamesh up examples/mesh`` and ``metamesh demo client thrift|dubbo``, each a subprocess.
The clients' output must show both versions answering and the method routes of the example
MetaRouters (Thrift sayHello -> v2, Dubbo sayHello -> v1) holding for every call.

The run uses a copy of ``examples/mesh`` with every address and port moved to free ones (the
live demo takes 127.0.10.1:9090 and 127.0.10.2:20880 too, and a test must not meet another
run on the machine there); the addresses the example itself names are checked apart."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from metamesh.demo.backends import SampleEndpoint, sample_services
from metamesh.demo.mesh import DemoError
from tests.e2e.mesh import Metamesh, free_address, free_port

pytestmark = pytest.mark.interop
ROOT = Path(__file__).resolve().parents[2]
MESH = ROOT / "examples" / "mesh"
CALL = re.compile(r"^\s+\d+ (sayHello|echo)\('call-\d+'\) -> (v1|v2)  '(v1|v2):", re.M)


def test_sample_services_are_the_serviceentries_endpoints() -> None:
    by_protocol = {s.protocol: s for s in sample_services(MESH)}
    thrift, dubbo = by_protocol["thrift"], by_protocol["dubbo"]
    assert (thrift.address, thrift.port) == ("127.0.10.1", 9090)
    assert thrift.endpoints == (
        SampleEndpoint("127.0.20.1", 19090, "v1"),
        SampleEndpoint("127.0.20.2", 19090, "v2"),
    )
    assert (dubbo.address, dubbo.port) == ("127.0.10.2", 20880)
    assert dubbo.interface == "org.apache.dubbo.samples.basic.api.DemoService"
    assert dubbo.endpoints == (
        SampleEndpoint("127.0.20.3", 20880, "v1"),
        SampleEndpoint("127.0.20.4", 20880, "v2"),
    )


def test_a_directory_with_errors_or_no_service_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("kind: ServiceEntry\napiVersion: networking.istio.io/v1\n")
    with pytest.raises(DemoError, match="has errors"):
        sample_services(tmp_path)
    (tmp_path / "bad.yaml").unlink()
    with pytest.raises(DemoError, match="no ServiceEntry with a Thrift or Dubbo"):
        sample_services(tmp_path)


def relocated_mesh(directory: Path) -> Path:
    """A copy of examples/mesh in ``directory`` with its addresses and ports moved to free ones.

    Each example port is shared by the addresses that use it (20880: the Dubbo service address
    and both providers), so each is replaced by one port free on all of them."""
    text = {f.name: f.read_text() for f in MESH.glob("*.yaml")}
    groups = {
        "9090": ["127.0.10.1"],
        "19090": ["127.0.20.1", "127.0.20.2"],
        "20880": ["127.0.10.2", "127.0.20.3", "127.0.20.4"],
    }
    moved: dict[str, str] = {}
    for port, addresses in groups.items():
        new = [free_address()[0] for _ in addresses]
        while len(set(new) | set(moved.values())) < len(new) + len(moved):
            new = [free_address()[0] for _ in addresses]
        moved.update(zip(addresses, new, strict=True))
        moved[port] = str(port_free_on(new))
    mesh_dir = directory / "mesh"
    mesh_dir.mkdir()
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in moved) + r")\b")
    for name, body in text.items():
        (mesh_dir / name).write_text(pattern.sub(lambda m: moved[m.group(1)], body))
    return mesh_dir


def port_free_on(addresses: list[str]) -> int:
    """A port that can be bound on each of ``addresses``."""
    while True:
        port = free_port()
        try:
            for address in addresses:
                with socket.socket() as s:
                    s.bind((address, port))
        except OSError:
            continue
        return port


def run_client(mesh: Path, protocol: str, count: int) -> dict[str, list[str]]:
    """``metamesh demo client``: the versions that answered, per method."""
    out = subprocess.run(
        [sys.executable, "-m", "metamesh", "demo", "client", protocol, str(mesh), "-c", str(count)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    calls = CALL.findall(out.stdout)
    assert len(calls) == count, out.stdout
    assert all(v == prefix for _, v, prefix in calls)  # the version shown is the reply's
    assert out.stdout.splitlines()[-1].endswith("failed: 0")
    return {m: [v for method, v, _ in calls if method == m] for m in ("sayHello", "echo")}


def test_backends_up_and_clients_as_the_readme_runs_them(tmp_path: Path) -> None:
    mesh = relocated_mesh(tmp_path)
    services = {s.protocol: s for s in sample_services(mesh)}
    thrift_at = f"{services['thrift'].address}:{services['thrift'].port}"
    dubbo_at = f"{services['dubbo'].address}:{services['dubbo'].port}"
    admin = free_port()
    with (
        Metamesh(tmp_path, "backends", "demo", "backends", str(mesh)) as backends,
        Metamesh(
            tmp_path, "up", "up", str(mesh), "--admin-port", str(admin), "--xds-port", "0"
        ) as up,
    ):
        backends.wait_for("Serving; Ctrl-C to stop.")
        up.wait_for(f"{dubbo_at}  dubbo  say-hello-to-v1 -> v1; split -> v1 20%, v2 80%")
        up.wait_for(f"{thrift_at}  thrift  say-hello-to-v2 -> v2; split -> v1 20%, v2 80%")

        # sayHello is pinned, echo split 20/80: both versions answer (all-one-version odds
        # for the 100 / 20 echo calls: 0.8**100, 0.2**20)
        thrift = run_client(mesh, "thrift", 200)
        assert set(thrift["sayHello"]) == {"v2"} and set(thrift["echo"]) == {"v1", "v2"}
        dubbo = run_client(mesh, "dubbo", 40)
        assert set(dubbo["sayHello"]) == {"v1"} and "v2" in set(dubbo["echo"])
        assert up.stop() == 0
        assert backends.stop() == 0
    handled = backends.stdout().splitlines()[-1]
    assert handled == (
        "metamesh demo backends: stopping (calls handled: dubbo v1 "
        f"{20 + dubbo['echo'].count('v1')}, dubbo v2 {dubbo['echo'].count('v2')}, thrift v1 "
        f"{thrift['echo'].count('v1')}, thrift v2 {100 + thrift['echo'].count('v2')})"
    )


def test_client_without_a_mesh_says_what_to_start(tmp_path: Path) -> None:
    address, port = free_address()
    text = (MESH / "thrift.yaml").read_text()
    text = text.replace("127.0.10.1", address).replace("number: 9090", f"number: {port}")
    (tmp_path / "thrift.yaml").write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "metamesh", "demo", "client", "thrift", str(tmp_path),
         "--wait", "0.5"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith(f"metamesh demo client: waiting for {address}:{port} to accept")
    assert f"cannot connect to {address}:{port}" in out.stderr
    assert f"is `metamesh up {tmp_path}` running?" in out.stderr
