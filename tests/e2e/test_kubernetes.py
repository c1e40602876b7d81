"""``metamesh control-plane --kubernetes`` + ``metamesh proxy --xds``, objects applied with kubectl.

The cluster is the API server stand-in (tests/control/kube_apiserver.py: no kube-apiserver can
run here); everything reaches it over HTTP from the real ``kubectl`` (the CRDs from
``deploy/crds.yaml``, a Namespace, a Service whose port is named
``tcp-metaprotocol-thrift-calc``, two Pods, a DestinationRule and MetaRouters) and the real
``kubernetes_asyncio`` client inside the control plane. Two real Apache Thrift servers play the
Pods (a named ``targetPort`` resolves to each one's port); a real Apache Thrift client calls
the Service's clusterIP through the proxy on one connection while:

- the MetaRouter is re-applied with another route (v1 -> v2);
- a Pod's ``version`` label is changed with ``kubectl label``, so the v2 subset gains it;
- a MetaRouter naming a subset that does not exist is applied: it is held at its last good
  version, and its ``status.conditions`` and an Event say why (``kubectl get``);
- the API server answers 500s, cuts every watch mid-object and forgets its history (410), then
  stops: the calls keep their routes; once it is back, a Pod relabelled is followed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import pytest

from tests.codecs.dubbo.peers import Peer
from tests.codecs.thrift.apache_peer import ApacheServer
from tests.control.kube_apiserver import RunningApiServer
from tests.e2e.mesh import Metamesh, ThriftClient, wait_until
from tests.e2e.test_up_dubbo import PROVIDER, Consumer
from tests.runtime.thrift_servers import NamedCalc
from tests.support.ports import free_port

pytestmark = [pytest.mark.interop, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
HOST = "calc.demo.svc.cluster.local"


def app(v1: int, v2: int) -> str:
    pods = "".join(
        f"""---
apiVersion: v1
kind: Pod
metadata:
  name: calc-{name}
  namespace: demo
  labels: {{app: calc, version: {name}}}
spec:
  serviceAccountName: calc
  containers:
  - name: calc
    image: calc:latest
    ports: [{{name: thrift, containerPort: {port}}}]
"""
        for name, port in (("v1", v1), ("v2", v2))
    )
    return f"""apiVersion: v1
kind: Namespace
metadata: {{name: demo}}
---
apiVersion: v1
kind: Service
metadata: {{name: calc, namespace: demo}}
spec:
  selector: {{app: calc}}
  ports:
  - {{name: tcp-metaprotocol-thrift-calc, port: 9090, targetPort: thrift}}
{pods}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: calc, namespace: demo}}
spec:
  host: calc
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


def router(subset: str) -> str:
    return f"""apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: calc, namespace: demo}}
spec:
  hosts: [calc.demo.svc.cluster.local]
  routes:
  - name: all-{subset}
    route: [{{destination: {{host: {HOST}, subset: {subset}}}}}]
"""


class Kubectl:
    def __init__(self, kubeconfig: Path, tmp: Path) -> None:
        self.kubeconfig, self.tmp = kubeconfig, tmp

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def apply(self, text: str) -> str:
        return self("apply", "--validate=false", "-f", "-", stdin=text)


@pytest.fixture
def servers(calc_gen: types.ModuleType) -> Iterator[tuple[int, int]]:
    with ExitStack() as stack:
        ports = []
        for name in ("v1", "v2"):
            processor = calc_gen.Calc.Processor(NamedCalc(calc_gen, name))
            ports.append(stack.enter_context(ApacheServer(processor, "framed", "binary")).port)
        yield ports[0], ports[1]


def answers(client: ThriftClient, count: int = 30) -> set[str]:
    return {client.echo(str(i)).split(":")[0] for i in range(count)}


def test_kubectl_applied_service_pods_and_router_route_real_thrift_calls(
    calc_gen: types.ModuleType, servers: tuple[int, int], tmp_path: Path
) -> None:
    with ExitStack() as stack:
        api = stack.enter_context(RunningApiServer())
        kubectl = Kubectl(api.kubeconfig(tmp_path / "kubeconfig"), tmp_path)
        kubectl("apply", "--validate=false", "-f", str(REPO / "deploy" / "crds.yaml"))
        kubectl.apply(app(*servers))
        kubectl.apply(router("v1"))
        jsonpath = "jsonpath={.spec.clusterIP}"
        jsonpath = "jsonpath={.spec.clusterIP}"
        cluster_ip = kubectl("get", "service", "calc", "-n", "demo", "-o", jsonpath)
        xds = str(free_port())
        kubeconfig = str(tmp_path / "kubeconfig")
        cp_args = ("control-plane", "--kubernetes", "--kubeconfig", kubeconfig, "--xds-port", xds)
        cp = stack.enter_context(Metamesh(tmp_path, "cp", *cp_args))
        cp.wait_for("control plane (xDS) on")
        assert "watching kubernetes (" in cp.stdout()
        proxy_args = ("proxy", "--xds", f"127.0.0.1:{xds}", "--admin-port", "0")
        proxy = stack.enter_context(
            Metamesh(tmp_path, "proxy", *proxy_args, "--node-id", "k8s-e2e", "--namespace", "demo")
        )
        proxy.wait_for(f"{cluster_ip}:9090  thrift  all-v1 -> v1")
        client = stack.enter_context(closing(ThriftClient(calc_gen, cluster_ip, 9090)))
        assert answers(client) == {"v1"}

        kubectl.apply(router("v2"))  # a route change, through the API server
        wait_until(lambda: client.echo("poll").startswith("v2:"), "the v2 route", timeout=15)
        assert answers(client) == {"v2"}

        # a Pod label change moves it into the v2 subset: both servers answer now
        kubectl("label", "pod", "calc-v1", "-n", "demo", "version=v2", "--overwrite")
        wait_until(lambda: "v1" in answers(client, 10), "calc-v1 in subset v2", timeout=15)
        assert answers(client, 40) == {"v1", "v2"}

        # an invalid MetaRouter: held at its last good version, reported on the object
        kubectl.apply(router("nope"))
        get_router = ("get", "metarouter", "calc", "-n", "demo", "-o", "json")
        get_router = ("get", "metarouter", "calc", "-n", "demo", "-o", "json")
        wait_until(lambda: "HeldAtLastGood" in kubectl(*get_router), "the condition", timeout=15)
        status = json.loads(kubectl(*get_router))
        condition = status["status"]["conditions"][0]
        assert condition["type"] == "Accepted" and condition["status"] == "False"
        assert "nope" in condition["message"]
        events = kubectl("get", "events", "-n", "demo", "-o", "json")
        assert any(
            e["reason"] == "InvalidConfig" and e["involvedObject"]["name"] == "calc"
            for e in json.loads(events)["items"]
        )
        assert answers(client, 40) == {"v1", "v2"}  # the last good router is in force
        assert client.same_connection()
        assert "kubernetes://metaprotocol.aeraki.io/metarouters/demo/calc" in cp.stderr()

        # the API server misbehaves, then goes away: the mesh keeps its config and traffic
        server = api.server
        assert server is not None
        api.call(server.fail, 20, 500)
        api.call(server.cut_watches)  # every watch stream ends inside an object
        api.call(server.compact)  # and resuming needs a relist (410 Gone)
        wait_until(lambda: "the last good config stays in force" in cp.stderr(), "the log line")
        wait_until(lambda: server.pending_failures == 0, "the 500s answered", timeout=15)
        assert answers(client, 40) == {"v1", "v2"}
        api.stop()
        assert answers(client, 40) == {"v1", "v2"}
        api.restart()
        # caught up once the API server answers again: calc-v1 leaves subset v2
        kubectl("label", "pod", "calc-v1", "-n", "demo", "version=v1", "--overwrite")
        wait_until(lambda: answers(client, 10) == {"v2"}, "the change after the outage", 20)
        assert client.same_connection()


def test_up_with_a_directory_and_kubernetes_routes_a_service_by_a_file_router(
    calc_gen: types.ModuleType, servers: tuple[int, int], tmp_path: Path
) -> None:
    """``metamesh up DIR --kubernetes``: the MetaRouter is a file, the Service a cluster's."""
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    (mesh / "router.yaml").write_text(router("v2"))
    with ExitStack() as stack:
        api = stack.enter_context(RunningApiServer())
        kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
        kubectl = Kubectl(kubeconfig, tmp_path)
        kubectl("apply", "--validate=false", "-f", str(REPO / "deploy" / "crds.yaml"))
        kubectl.apply(app(*servers))
        jsonpath = "jsonpath={.spec.clusterIP}"
        cluster_ip = kubectl("get", "service", "calc", "-n", "demo", "-o", jsonpath)
        args = ("up", str(mesh), "--kubernetes", "--kubeconfig", str(kubeconfig))
        up = stack.enter_context(Metamesh(tmp_path, "up", *args, "--admin-port", "0"))
        up.wait_for(f"{cluster_ip}:9090  thrift  all-v2 -> v2")
        client = stack.enter_context(closing(ThriftClient(calc_gen, cluster_ip, 9090)))
        assert answers(client) == {"v2"}


DUBBO_APP = """apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Service
metadata: {{name: demo, namespace: shop}}
spec:
  selector: {{app: demo}}
  ports:
  - {{name: tcp-metaprotocol-dubbo-demo, port: 20880, targetPort: dubbo}}
{pods}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: demo, namespace: shop}}
spec:
  host: demo.shop.svc.cluster.local
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: demo, namespace: shop}}
spec:
  hosts: [demo.shop.svc.cluster.local]
  routes:
  - name: hello-to-v2
    match: {{attributes: {{method: {{exact: sayHello}}}}}}
    route: [{{destination: {{host: demo.shop.svc.cluster.local, subset: v2}}}}]
  - name: rest-to-v1
    route: [{{destination: {{host: demo.shop.svc.cluster.local, subset: v1}}}}]
"""


@pytest.fixture
def providers() -> Iterator[tuple[int, int]]:
    """Two dubbo-py providers answering ``<version>:...`` (tests/e2e/dubbopy_versioned.py)."""
    started: list[Peer] = []
    try:
        for version in ("v1", "v2"):
            started.append(Peer([sys.executable, str(PROVIDER), "0", version], PROVIDER.parent))
        yield started[0].port, started[1].port
    finally:
        for peer in started:
            peer.stop()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_dubbo_service_in_the_cluster_routes_dubbo_py_calls_by_method(
    providers: tuple[int, int], tmp_path: Path
) -> None:
    pods = "".join(
        f"""---
apiVersion: v1
kind: Pod
metadata: {{name: demo-{v}, namespace: shop, labels: {{app: demo, version: {v}}}}}
spec:
  containers: [{{name: provider, image: demo, ports: [{{name: dubbo, containerPort: {p}}}]}}]
"""
        for v, p in zip(("v1", "v2"), providers, strict=True)
    )
    with ExitStack() as stack:
        api = stack.enter_context(RunningApiServer())
        kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
        kubectl = Kubectl(kubeconfig, tmp_path)
        kubectl("apply", "--validate=false", "-f", str(REPO / "deploy" / "crds.yaml"))
        kubectl.apply(DUBBO_APP.format(pods=pods))
        jsonpath = "jsonpath={.spec.clusterIP}"
        cluster_ip = kubectl("get", "service", "demo", "-n", "shop", "-o", jsonpath)
        xds = str(free_port())
        cp_args = ("control-plane", "--kubernetes", "--kubeconfig", str(kubeconfig))
        cp = stack.enter_context(Metamesh(tmp_path, "cp", *cp_args, "--xds-port", xds))
        cp.wait_for("control plane (xDS) on")
        proxy_args = ("proxy", "--xds", f"127.0.0.1:{xds}", "--admin-port", "0")
        proxy = stack.enter_context(Metamesh(tmp_path, "proxy", *proxy_args))
        proxy.wait_for(f"{cluster_ip}:20880  dubbo")
        consumer = Consumer((cluster_ip, 20880))
        stack.callback(consumer.close)
        assert {consumer.call("sayHello", str(i)) for i in range(10)} == {"v2"}
        assert {consumer.call("echo", str(i)) for i in range(10)} == {"v1"}
        assert consumer.last == "9" and consumer.same_connection()
