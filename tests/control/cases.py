"""Shared inputs for the control-plane tests: the example mesh and small hand-made sets."""

from __future__ import annotations

from pathlib import Path

from metamesh.api import load_paths, load_text
from metamesh.control.model import MeshModel, build_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "mesh"
DUBBO = "org.apache.dubbo.samples.basic.api.demoservice"
THRIFT = "thrift-sample-server.meta-thrift.svc.cluster.local"


def example_model() -> MeshModel:
    resources = load_paths([EXAMPLES])
    assert not resources.problems
    return build_model(resources)


def model_of(text: str) -> MeshModel:
    resources = load_text(text)
    assert not resources.problems, resources.problems
    return build_model(resources)


def service_entry(
    host: str = "kv",
    addresses: str = "[127.0.10.9]",
    port_name: str = "tcp-metaprotocol-thrift-kv",
    namespace: str = "ns",
    extra: str = "",
) -> str:
    return f"""
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: {host}, namespace: {namespace}}}
spec:
  hosts: [{host}]
  addresses: {addresses}
  ports: [{{number: 7000, name: {port_name}}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.30.1, labels: {{version: v1}}}}
  - {{address: 127.0.30.2, ports: {{{port_name}: 7001}}, labels: {{version: v2}}, weight: 3}}
{extra}
"""


def rules(host: str = "kv", subsets: str = "[v1, v2]") -> str:
    """A DestinationRule with the given subsets (each selecting ``version: <name>``)."""
    names = subsets.strip("[]").split(", ")
    listed = ", ".join(f"{{name: {n}, labels: {{version: {n}}}}}" for n in names)
    return f"""
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: {host}, namespace: ns}}
spec: {{host: {host}, subsets: [{listed}]}}
"""


def router(subset: str = "v1", host: str = "kv") -> str:
    return f"""
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: {host}, namespace: ns}}
spec:
  hosts: [{host}.ns.svc.cluster.local]
  routes: [{{name: all, route: [{{destination: {{host: {host}, subset: {subset}}}}}]}}]
"""
