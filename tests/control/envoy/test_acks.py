"""Envoy ACKs every resource type it is sent, for every example and for the policy set.

Each case is one model served to one real Envoy (:mod:`.envoy_node`): the mesh example
(``examples/mesh``), each step of the demo (``src/metamesh/demo/manifests``) and a set that
uses every policy the Envoy translation emits (:data:`POLICIES`). The test waits until Envoy
has ACKed the current version of every type it subscribed to (LDS, CDS, EDS and the
thrift_proxy / dubbo_proxy RDS), then checks that the server recorded no NACK and that
Envoy's ``/config_dump`` has no ``error_state``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from string import Template

import pytest

from metamesh.api import load_paths, load_text
from metamesh.control.model import MeshModel, build_model
from metamesh.xds.resources import (
    CLUSTER_TYPE,
    DUBBO_ROUTE_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    THRIFT_ROUTE_TYPE,
)
from tests.control.cases import EXAMPLES
from tests.control.envoy.envoy_node import EnvoyNode, error_states
from tests.xds.test_envoy import ServerThread, wait_for

pytestmark = pytest.mark.interop
ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "src/metamesh/demo/manifests"
NODE = "envoy-acks"


_PAIRS = [(p, v) for p in ("thrift", "dubbo") for v in ("v1", "v2")]
DEMO_VALUES: dict[str, object] = {
    "thrift_address": "127.0.91.1",
    "dubbo_address": "127.0.91.2",
    "thrift_port": 19500,
    "dubbo_port": 19501,
    **{f"{p}_{v}_host": f"127.0.92.{i}" for i, (p, v) in enumerate(_PAIRS, 1)},
    **{f"{p}_{v}_port": 19600 + i for i, (p, v) in enumerate(_PAIRS)},
}


def demo_model(step: str) -> MeshModel:
    """The demo's services (its placeholders filled as the demo fills them) and one step."""
    services = Template((DEMO / "services.yaml").read_text()).substitute(DEMO_VALUES)
    resources = load_text(services + "\n---\n" + (DEMO / step).read_text())
    assert not resources.problems, resources.problems
    return build_model(resources)


def model_of_paths(*paths: Path) -> MeshModel:
    resources = load_paths(list(paths))
    assert not resources.problems, resources.problems
    return build_model(resources)


def acked_everything(ads: ServerThread, expected: set[str]) -> bool:
    """Every type in ``expected`` subscribed, the current version sent (a type whose resources
    did not change keeps its older version) and everything sent ACKed."""
    status = ads.call(lambda: ads.server.status()).get(NODE, {})
    version = ads.call(lambda: ads.server.version)
    subscribed = {url: s for url, s in status.items() if s["subscribed"]}
    if not expected <= set(subscribed):
        return False
    sent = [int(s["sent_version"] or 0) for s in subscribed.values()]
    acked = all(s["acked_version"] == s["sent_version"] for s in subscribed.values())
    return acked and max(sent) == int(version)


@pytest.fixture(params=["GRPC", "DELTA_GRPC"])
def served(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[ServerThread, EnvoyNode]]:
    """Envoy on state-of-the-world ADS, then on incremental (delta) ADS."""
    ads = ServerThread(MeshModel())
    envoy = EnvoyNode(ads.port, tmp_path, NODE, api_type=str(request.param))
    yield ads, envoy
    envoy.close()
    ads.close()


def check_acked(ads: ServerThread, envoy: EnvoyNode, model: MeshModel, expected: set[str]) -> None:
    ads.call(lambda: ads.server.set_model(model))
    ads.call(lambda: ads.server.flush())
    try:
        wait_for(lambda: acked_everything(ads, expected), "Envoy to ACK every type", 20)
    except AssertionError:
        status = ads.call(lambda: ads.server.status()).get(NODE)
        raise AssertionError(f"{status}\n{envoy.log()[-3000:]}") from None
    assert ads.call(lambda: ads.server.nacks()) == []
    assert error_states(envoy.config_dump()) == []


def test_envoy_acks_every_example(served: tuple[ServerThread, EnvoyNode]) -> None:
    ads, envoy = served
    everything = {LISTENER_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE, THRIFT_ROUTE_TYPE, DUBBO_ROUTE_TYPE}
    check_acked(ads, envoy, model_of_paths(EXAMPLES), everything)
    dump = envoy.config_dump()
    assert "envoy.filters.network.thrift_proxy" in str(dump)
    assert "envoy.filters.network.dubbo_proxy" in str(dump)
    for step in sorted(p.name for p in DEMO.glob("[0-9]-*.yaml")):
        check_acked(ads, envoy, demo_model(step), everything)


POLICIES = """\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: hello, namespace: server-ns}
spec:
  hosts: [hello.server-ns.svc.cluster.local]
  addresses: [127.0.93.1]
  ports: [{number: 9090, name: tcp-metaprotocol-thrift-hello}]
  resolution: STATIC
  workloadSelector: {labels: {app: hello}}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {name: hello-1, namespace: server-ns}
spec:
  address: 127.0.93.2
  ports: {tcp-metaprotocol-thrift-hello: 20001}
  labels: {app: hello, version: v1}
  serviceAccount: server
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: demo, namespace: server-ns}
spec:
  hosts: [org.apache.dubbo.demo.demoservice]
  addresses: [127.0.93.3]
  ports: [{number: 20880, name: tcp-metaprotocol-dubbo-demo}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.93.4, labels: {version: v1}}
  - {address: 127.0.93.5, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: demo, namespace: server-ns}
spec:
  host: org.apache.dubbo.demo.demoservice
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
    connectionPool: {tcp: {maxConnections: 10, connectTimeout: 1s}}
    outlierDetection: {consecutive5xxErrors: 3, interval: 5s, baseEjectionTime: 10s}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: strict, namespace: server-ns}
spec: {mtls: {mode: STRICT}}
---
apiVersion: metamesh.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {name: only-sleep, namespace: server-ns}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/client-ns/sa/sleep], ipBlocks: [127.0.0.0/8]}}]
  - from: [{source: {namespaces: [client-*], notPrincipals: ["*evil"]}}]
---
apiVersion: metamesh.io/v1alpha1
kind: MetaAuthorizationPolicy
metadata: {name: no-admin, namespace: server-ns}
spec:
  action: DENY
  rules:
  - from: [{source: {notIpBlocks: [127.0.0.0/8]}}]
    to: [{operation: {attributes: {method: {exact: admin}}}}]
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {name: hello, namespace: server-ns}
spec:
  hosts: [hello.server-ns.svc.cluster.local]
  routes:
  - name: by-header
    match: {attributes: {x-tenant: {prefix: be}, method: {exact: add}, service: {exact: Calc}}}
    route: [{destination: {host: hello.server-ns.svc.cluster.local}}]
    mirror: {host: hello.server-ns.svc.cluster.local}
    mirrorPercentage: {value: 50}
  - name: regex-method
    match: {attributes: {method: {regex: "get.*"}}}
    route: [{destination: {host: hello.server-ns.svc.cluster.local}}]
    timeout: 1s
  localRateLimit:
    tokenBucket: {fillInterval: 60s, maxTokens: 10, tokensPerFill: 10}
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {name: demo, namespace: server-ns}
spec:
  hosts: [org.apache.dubbo.demo.demoservice]
  routes:
  - name: grouped
    match:
      attributes:
        interface: {prefix: org.apache.}
        method: {regex: "say.*"}
        version: {exact: 1.0.0}
        group: {exact: blue}
        x-tenant: {}
    route: [{destination: {host: org.apache.dubbo.demo.demoservice, subset: v1}}]
  - name: split
    route:
    - {destination: {host: org.apache.dubbo.demo.demoservice, subset: v1}, weight: 30}
    - {destination: {host: org.apache.dubbo.demo.demoservice, subset: v2}, weight: 70}
    timeout: 2s
    retries: {attempts: 2}
"""


def test_envoy_acks_every_policy_it_is_sent(tmp_path: Path) -> None:
    """Network RBAC (ALLOW and DENY, principals, namespaces, IP blocks), the split, matches of
    every kind, mirrors, the cluster policies: all ACKed. The node is not a mesh workload, so
    the policies sit on its outbound listeners and no cluster waits for SDS secrets; a workload
    node's inbound STRICT listener is served by a real Envoy in ``test_mtls_envoy.py``."""
    ads = ServerThread(MeshModel())
    envoy = EnvoyNode(ads.port, tmp_path, NODE)
    try:
        everything = {LISTENER_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE, THRIFT_ROUTE_TYPE}
        check_acked(ads, envoy, build_model(load_text(POLICIES)), everything | {DUBBO_ROUTE_TYPE})
        dump = str(envoy.config_dump())
        assert "envoy.filters.network.rbac" in dump and "127.0.93.1_9090" in dump
    finally:
        envoy.close()
        ads.close()
