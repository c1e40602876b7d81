"""The Kubernetes source against the API server stand-in, through the real client and kubectl.

Objects are applied with the real ``kubectl``; the source reads them with the real
``kubernetes_asyncio`` client. The faults are the stand-in's (tests/control/kube_apiserver.py):
a watch cut in the middle of an object, 500s, 410 Gone after a compaction, a server that stops
answering (a timeout), a server that is gone and comes back. Each time the last good objects
stay (no update drops them), the source says it is failing, and a change made meanwhile is
caught up when the server answers again.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path

import pytest

from metamesh.api.istio import ServiceEntry
from metamesh.api.loader import ResourceSet
from metamesh.api.metaprotocol import MetaRouter
from metamesh.control.model import MeshModel
from metamesh.control.sources.kubernetes import KubernetesSettings, KubernetesSource
from metamesh.control.sources.kubernetes_objects import CORE_RESOURCES, custom_resources
from metamesh.control.sources.merge import MergedSources
from tests.control.kube_apiserver import RunningApiServer

REPO = Path(__file__).resolve().parents[2]
ROUTER = "kubernetes://metaprotocol.aeraki.io/metarouters/default/demo"


def router(route: str) -> str:
    return f"""apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: demo, namespace: default}}
spec:
  hosts: [demo.default.svc.cluster.local]
  routes:
  - name: {route}
"""


class Cluster:
    def __init__(self, api: RunningApiServer, tmp: Path) -> None:
        self.api = api
        self.kubeconfig = api.kubeconfig(tmp / "kubeconfig")
        self.updates: list[Mapping[str, ResourceSet]] = []

    async def kubectl(self, *args: str, stdin: str | None = None) -> str:
        done = await asyncio.to_thread(
            subprocess.run,
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    async def apply(self, text: str) -> None:
        await self.kubectl("apply", "--validate=false", "-f", "-", stdin=text)

    def route(self) -> str | None:
        """The route name of the MetaRouter in the last update (None: not there)."""
        if not self.updates or ROUTER not in self.updates[-1]:
            return None
        routers = self.updates[-1][ROUTER].of_kind(MetaRouter)
        return routers[0].spec.routes[0].name if routers else None

    def fault(self, method: str, *args: object) -> None:
        server = self.api.server
        assert server is not None
        self.api.call(getattr(server, method), *args)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def run(
    tmp_path: Path,
    body: Callable[[Cluster, KubernetesSource], Awaitable[None]],
    **settings: object,
) -> None:
    async def main() -> None:
        with RunningApiServer() as api:
            cluster = Cluster(api, tmp_path)
            crds = str(REPO / "deploy" / "crds.yaml")
            await cluster.kubectl("apply", "--validate=false", "-f", crds)
            await cluster.apply(router("first"))
            options: dict[str, object] = {
                "kubeconfig": str(cluster.kubeconfig),
                "backoff_min": 0.05,
                "backoff_max": 0.3,
                "write_status": False,
                **settings,
            }
            source = KubernetesSource(KubernetesSettings(**options), cluster.updates.append)  # type: ignore[arg-type]
            await source.start()
            try:
                assert await source.wait_synced(10)
                await until(lambda: cluster.route() == "first", "the first update")
                await body(cluster, source)
            finally:
                await source.close()

    asyncio.run(main())


def test_watch_resumes_from_its_version_and_relists_after_410(tmp_path: Path) -> None:
    async def body(cluster: Cluster, source: KubernetesSource) -> None:
        await cluster.apply(router("second"))
        await until(lambda: cluster.route() == "second", "a watched change")
        # once per resource (every kind metamesh reads, and the core ones): changes come by watch
        assert source.counters["lists"] == len(custom_resources()) + len(CORE_RESOURCES)
        cluster.fault("compact")  # the history is gone: 410 on the watch
        await until(lambda: source.counters["relists"] > 0, "a relist")
        await cluster.apply(router("third"))
        await until(lambda: cluster.route() == "third", "a change after the relist")
        assert source.counters["failures"] == 0
        server = cluster.api.server
        assert server is not None
        watches = [p for _, p in server.requests if "metarouters?" in p and "watch=True" in p]
        assert all("allowWatchBookmarks=True" in p and "resourceVersion=" in p for p in watches)

    run(tmp_path, body)


def test_watch_cut_mid_object_and_500s_keep_the_last_good_objects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(cluster: Cluster, source: KubernetesSource) -> None:
        seen = len(cluster.updates)
        cluster.fault("fail", 40, 500)
        cluster.fault("cut_watches")  # every stream ends inside a JSON object
        await until(lambda: source.counters["failures"] >= 10, "failures")
        assert source.counters["bad_events"] >= 1
        assert source.state == "unreachable"
        assert "the last good config stays in force" in caplog.text
        assert cluster.updates[seen:] == [] or cluster.route() == "first"
        await until(lambda: source.state == "synced", "recovery", timeout=20)
        await cluster.apply(router("after"))
        await until(lambda: cluster.route() == "after", "a change after recovery")

    with caplog.at_level("INFO", "metamesh.control.sources.kubernetes"):
        run(tmp_path, body)


def test_a_silent_server_times_out_and_one_that_is_gone_is_waited_for(tmp_path: Path) -> None:
    async def body(cluster: Cluster, source: KubernetesSource) -> None:
        cluster.fault("stall", True)  # requests hang: the watches' read timeout ends them
        await until(lambda: source.state == "unreachable", "a timeout", timeout=15)
        assert cluster.route() == "first"
        cluster.fault("stall", False)
        await until(lambda: source.state == "synced", "recovery", timeout=15)

        cluster.api.stop()  # connection refused
        await until(lambda: source.state == "unreachable", "the outage", timeout=15)
        assert cluster.route() == "first"
        cluster.api.restart()
        await cluster.apply(router("back"))
        await until(lambda: cluster.route() == "back", "the change made after the restart", 20)

    run(tmp_path, body, watch_timeout=1, request_timeout=1.0)


@pytest.mark.slow
def test_after_a_long_outage_the_cluster_is_followed_again_within_two_seconds(
    tmp_path: Path,
) -> None:
    """Issue 15: a source reconnects with a jittered back-off capped at 1 s by default, so the
    time from the API server's return to the source following it again stays short however
    long the outage (with the 5 s cap this had, ~3 s after an 8 s outage)."""
    defaults = KubernetesSettings()

    async def body(cluster: Cluster, source: KubernetesSource) -> None:
        loop = asyncio.get_running_loop()
        cluster.api.stop()
        await until(lambda: source.state == "unreachable", "the outage", timeout=15)
        await asyncio.sleep(8.0)  # every reflector's back-off has grown to its cap
        cluster.api.restart()
        back = loop.time()
        await until(lambda: source.state == "synced", "recovery", timeout=15)
        took = loop.time() - back
        assert took <= 2.0, f"following the cluster again {took:.1f}s after it came back"
        await cluster.apply(router("back"))
        await until(lambda: cluster.route() == "back", "a change after the outage")

    run(tmp_path, body, backoff_min=defaults.backoff_min, backoff_max=defaults.backoff_max)


def test_a_forbidden_resource_does_not_hold_back_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        with RunningApiServer() as api:
            cluster = Cluster(api, tmp_path)
            assert api.server is not None
            api.server.forbidden.add("redisservices.redis.aeraki.io")
            await cluster.kubectl("apply", "--validate=false", "-f", str(REPO / "deploy/crds.yaml"))
            await cluster.apply(router("first"))
            settings = KubernetesSettings(kubeconfig=str(cluster.kubeconfig), write_status=False)
            source = KubernetesSource(settings, cluster.updates.append)
            await source.start()
            try:
                assert await source.wait_synced(10)
                await until(lambda: cluster.route() == "first", "the update")
            finally:
                await source.close()

    with caplog.at_level("WARNING", "metamesh.control.sources.kubernetes"):
        asyncio.run(main())
    assert "redisservices.redis.aeraki.io is forbidden (RBAC?)" in caplog.text


def test_bookmarks_move_the_version_and_the_metamesh_namespace_opt_out(tmp_path: Path) -> None:
    async def body(cluster: Cluster, source: KubernetesSource) -> None:
        await until(lambda: source.counters["bookmarks"] > 0, "a bookmark", timeout=5)
        await cluster.kubectl(
            "label", "namespace", "default", "metamesh.io/discovery=disabled", "--overwrite"
        )
        await until(lambda: cluster.route() is None, "the namespace left out")
        await cluster.kubectl("label", "namespace", "default", "metamesh.io/discovery-")
        await until(lambda: cluster.route() == "first", "the namespace back")

    run(tmp_path, body)


BAD_SERVICE = """apiVersion: v1
kind: Service
metadata: {name: odd, namespace: default}
spec:
  ports: [{name: tcp-metaprotocol-nope-x, port: 7000}]
"""

ORDERS = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: orders, namespace: default}
spec:
  hosts: [orders.default.svc.cluster.local]
  ports: [{number: 9090, name: tcp-metaprotocol-thrift-orders}]
"""
ORDERS_FILE = "kubernetes://networking.istio.io/serviceentries/default/orders"


def test_one_leader_persists_a_service_entry_address_the_next_one_keeps(tmp_path: Path) -> None:
    async def main() -> None:
        with RunningApiServer() as api:
            cluster = Cluster(api, tmp_path)
            crds = str(REPO / "deploy" / "crds.yaml")
            await cluster.kubectl("apply", "--validate=false", "-f", crds)
            await cluster.apply(ORDERS)
            replicas = []
            for name in ("a", "b"):
                updates: list[Mapping[str, ResourceSet]] = []
                settings = KubernetesSettings(
                    kubeconfig=str(cluster.kubeconfig),
                    identity=name,
                    lease_duration=2,
                    lease_renew=0.2,
                    backoff_min=0.05,
                )
                source = KubernetesSource(settings, updates.append)
                await source.start()
                replicas.append((source, updates))

            def addresses(updates: list[Mapping[str, ResourceSet]]) -> list[str]:
                if not updates or ORDERS_FILE not in updates[-1]:
                    return []
                return updates[-1][ORDERS_FILE].of_kind(ServiceEntry)[0].spec.addresses

            get = ("get", "serviceentry", "orders", "-o", "json")
            await until(lambda: any(s.lease and s.lease.leading for s, _ in replicas), "a leader")
            leader, follower = sorted(
                replicas, key=lambda r: not (r[0].lease and r[0].lease.leading)
            )
            assert follower[0].lease is not None and not follower[0].lease.leading
            for _ in range(200):
                status = json.loads(await cluster.kubectl(*get)).get("status") or {}
                if status.get("addresses"):
                    break
                await asyncio.sleep(0.05)
            (entry,) = status["addresses"]
            assert entry["host"] == "orders.default.svc.cluster.local"
            assert entry["value"].startswith("127.240.")
            wanted = [entry["value"]]
            for _, seen in replicas:  # every replica serves the persisted address
                await until(partial(lambda u: addresses(u) == wanted, seen), "the address")
            assert leader[0].counters["addresses_allocated"] == 1

            await leader[0].close()  # the follower takes over once the Lease expires
            await until(lambda: bool(follower[0].lease and follower[0].lease.leading),
                        "a new leader", timeout=10)  # fmt: skip
            await cluster.apply(ORDERS.replace("9090", "9091"))
            await until(lambda: follower[1][-1][ORDERS_FILE].of_kind(ServiceEntry)[0]
                        .spec.ports[0].number == 9091, "the edit")  # fmt: skip
            assert addresses(follower[1]) == [entry["value"]]
            assert follower[0].counters["addresses_allocated"] == 0
            await follower[0].close()

    asyncio.run(main())


def test_the_examples_and_the_control_plane_manifests_apply_and_are_accepted(
    tmp_path: Path,
) -> None:
    """Through the merge step (no directory), as control-plane --kubernetes runs it."""
    kinds = "applicationprotocols,serviceentries,destinationrules,metarouters"

    async def main() -> None:
        with RunningApiServer() as api:
            cluster = Cluster(api, tmp_path)
            for manifests in (
                REPO / "deploy" / "crds.yaml",
                REPO / "deploy" / "control-plane.yaml",
            ):
                await cluster.kubectl("apply", "--validate=false", "-f", str(manifests))
            for namespace in ("meta-thrift", "meta-dubbo"):
                await cluster.apply(
                    f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n"
                )
            await cluster.kubectl(
                "apply", "--validate=false", "-f", str(REPO / "examples" / "mesh")
            )
            models: list[MeshModel] = []
            settings = KubernetesSettings(kubeconfig=str(cluster.kubeconfig), lease_renew=0.1)
            sources = MergedSources(None, models.append, namespace="default", kubernetes=settings)
            await sources.start()
            run = asyncio.create_task(sources.run())
            try:
                for _ in range(200):
                    listed = json.loads(await cluster.kubectl("get", kinds, "-A", "-o", "json"))
                    seen = {
                        f"{i['kind']}/{i['metadata']['name']}": (
                            ((i.get("status") or {}).get("conditions") or [{}])[0].get("reason")
                        )
                        for i in listed["items"]
                    }
                    if set(seen.values()) == {"Valid"}:
                        break
                    await asyncio.sleep(0.05)
                assert len(seen) == 8 and set(seen.values()) == {"Valid"}, seen
                hosts = set(models[-1].services)
                assert {"thrift-sample-server.meta-thrift.svc.cluster.local"} <= hosts, hosts

                await cluster.apply(BAD_SERVICE)  # its port names no ApplicationProtocol
                for _ in range(200):
                    events = json.loads(await cluster.kubectl("get", "events", "-o", "json"))
                    warned = [
                        e["message"]
                        for e in events["items"]
                        if e["involvedObject"]["name"] == "odd" and e["reason"] == "InvalidConfig"
                    ]
                    if warned:
                        break
                    await asyncio.sleep(0.05)
                assert "tcp-metaprotocol-nope-x" in warned[0], warned
                assert "odd.default.svc.cluster.local" not in models[-1].services
            finally:
                sources.stop()
                await run

    asyncio.run(main())
