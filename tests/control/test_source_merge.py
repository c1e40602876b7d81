"""Files and a registry feeding one model (control/sources/merge.py), no ZooKeeper needed.

The registry's sets are what :func:`interface_services` makes of real provider names; the
directory is a real temp dir loaded by the file source with the merge hook, as ``metamesh up
DIR --zookeeper`` wires them.
"""

from __future__ import annotations

from pathlib import Path

from metamesh.control.model import MeshModel
from metamesh.control.sources import FileSource, Held
from metamesh.control.sources.dubbo_registry import interface_services
from metamesh.control.sources.merge import SourceMerge
from tests.control.zookeeper_server import dubbo27_provider_node

IFACE = "org.apache.dubbo.demo.DemoService"
HOST = IFACE.lower()
ORIGIN = f"zookeeper://127.0.0.1:2181/dubbo/{IFACE}/providers"

RULES = f"""
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: demo, namespace: dubbo}}
spec:
  host: {HOST}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: demo, namespace: dubbo}}
spec:
  hosts: [{HOST}]
  routes:
  - name: split
    route:
    - {{destination: {{host: {HOST}, subset: v1}}, weight: 80}}
    - {{destination: {{host: {HOST}, subset: v2}}, weight: 20}}
"""

PINNED = f"""
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: pinned, namespace: dubbo}}
spec:
  hosts: [{HOST}]
  addresses: [127.0.10.9]
  ports: [{{number: 20880, name: tcp-metaprotocol-dubbo-pinned}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, labels: {{version: v1}}}}]
"""


def registry(*versions: str) -> dict[str, object]:
    nodes = [
        dubbo27_provider_node(IFACE, f"10.0.0.{i + 1}", 20880, aeraki_meta_app_version=v)
        for i, v in enumerate(versions)
    ]
    return {ORIGIN: interface_services(ORIGIN, IFACE, nodes, namespace="default").resources}


class Mesh:
    def __init__(self, directory: Path) -> None:
        self.models: list[MeshModel] = []
        self.lines: list[str] = []
        self.merge = SourceMerge(report=self.lines.append)
        self.files = FileSource(
            directory, self.models.append, report=self.lines.append, merge=self.merge
        )

    def registry(self, *versions: str) -> MeshModel | None:
        self.merge.update("zookeeper", registry(*versions))  # type: ignore[arg-type]
        return self.files.load()


def test_hand_written_rules_apply_to_the_registry_service(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    mesh = Mesh(tmp_path)
    # before the registry answers, the router names an unknown host: the file is held back
    assert mesh.files.load() is None
    assert mesh.files.held == {str(tmp_path / "rules.yaml"): Held.NOTHING}
    model = mesh.registry("v1", "v2")
    assert model is not None and not mesh.files.held
    service = model.services[HOST]
    assert service.router is not None and service.router.name == "demo"
    assert [s.name for s in service.subsets] == ["v1", "v2"]
    assert [e.address for e in service.endpoints_for("v2")] == ["10.0.0.2"]
    assert service.addresses[0].startswith("127.240.")
    # the registry's set is the same object while nothing changed: no new model
    mesh.merge.update("zookeeper", {ORIGIN: mesh.merge._sources["zookeeper"][ORIGIN]})
    assert mesh.files.load() is None
    # a provider leaves: a new model without it
    model = mesh.registry("v1")
    assert model is not None and [e.address for e in model.services[HOST].endpoints] == ["10.0.0.1"]
    # the last one leaves: the service stays, empty, and the rules stay in force
    model = mesh.registry()
    assert model is not None and model.services[HOST].endpoints == ()
    assert model.services[HOST].router is not None and not mesh.files.held


def test_a_service_entry_in_the_directory_wins_over_the_registry(tmp_path: Path) -> None:
    (tmp_path / "pinned.yaml").write_text(PINNED)
    mesh = Mesh(tmp_path)
    model = mesh.registry("v1", "v2")
    assert model is not None
    service = model.services[HOST]
    assert service.addresses == ("127.0.10.9",) and len(service.endpoints) == 1
    assert model.problems == ()
    conflict = (
        f"{HOST}: declared by ServiceEntry dubbo/pinned in {tmp_path / 'pinned.yaml'} and by "
        f"ServiceEntry default/zk-org-apache-dubbo-demo-demoservice from {ORIGIN}; "
        "dubbo/pinned is used, default/zk-org-apache-dubbo-demo-demoservice is ignored"
    )
    assert mesh.lines == [conflict]
    mesh.registry("v1")  # still in conflict: not repeated
    assert mesh.lines == [conflict]
    (tmp_path / "pinned.yaml").unlink()
    model = mesh.files.load()
    assert model is not None and model.services[HOST].addresses[0].startswith("127.240.")
    assert mesh.lines == [conflict]


def test_two_interfaces_giving_one_host_keep_the_first(tmp_path: Path) -> None:
    merge = SourceMerge(report=(lines := []).append)
    other = "Org.Apache.Dubbo.Demo.DemoService"
    origin2 = f"zookeeper://127.0.0.1:2181/dubbo/{other}/providers"
    node = dubbo27_provider_node(other, "10.0.0.9", 20880)
    second = interface_services(origin2, other, [node], namespace="default").resources
    merge.update("zookeeper", {**registry("v1"), origin2: second})  # type: ignore[dict-item]
    combined = merge({})
    assert len(combined[ORIGIN].items) + len(combined[origin2].items) == 1
    assert len(lines) == 1 and "is used" in lines[0]
