"""``metamesh proxy-config --admin`` pointed at a real Envoy: the same views as for a metamesh
proxy, read from Envoy's ``/config_dump`` and ``/clusters``.

metamesh's ADS server (in a thread) serves the examples (Thrift as ``thrift_proxy``, Dubbo as
``generic_proxy``) and a Redis service with a prefix route and a mirror (``redis_proxy``) to a
real Envoy whose listeners are moved onto one loopback address of their own
(``METAMESH_LISTEN_ADDRESS``), so nothing else on the host is disturbed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from metamesh.api import load_text
from metamesh.cli import main
from metamesh.control.model import build_model
from metamesh.runtime.envoy_admin import is_envoy_dump
from metamesh.runtime.proxy_config import VIEWS, fetch_config_dump, select
from tests.control.cases import EXAMPLES
from tests.control.envoy.envoy_node import EnvoyNode
from tests.xds.test_envoy import ServerThread, wait_for

pytestmark = pytest.mark.interop
REDIS = "redis.demo.svc.cluster.local"
THRIFT = "thrift-sample-server.meta-thrift.svc.cluster.local"
DUBBO = "org.apache.dubbo.samples.basic.api.demoservice"
REDIS_YAML = f"""
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: redis, namespace: demo}}
spec:
  hosts: [{REDIS}]
  addresses: [127.0.31.1]
  ports: [{{number: 6379, name: tcp-redis, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-redis: 7000}}}}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: redis-a, namespace: demo}}
spec:
  hosts: [redis-a]
  addresses: [127.0.31.2]
  ports: [{{number: 6380, name: tcp-redis, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-redis: 7001}}}}]
---
apiVersion: redis.aeraki.io/v1alpha1
kind: RedisService
metadata: {{name: redis, namespace: demo}}
spec:
  host: [{REDIS}]
  redis:
  - match: {{key: {{prefix: "a:", removePrefix: true}}}}
    route: {{host: redis-a}}
  - route: {{host: {REDIS}}}
    mirror: [{{route: {{host: redis-a}}, percentage: {{value: 50}}}}]
"""


@pytest.fixture(scope="module")
def envoy_admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real Envoy fed the examples and the Redis service; yields (admin, listen address)."""
    texts = [path.read_text() for path in sorted(EXAMPLES.glob("*.yaml"))]
    resources = load_text("\n---\n".join([*texts, REDIS_YAML]), "mesh.yaml")
    assert not [p for p in resources.problems if p.is_error]
    model = build_model(resources)
    listen = f"127.0.12.{random.randint(10, 250)}"
    ads = ServerThread(model)
    workdir = Path(tmp_path_factory.mktemp("envoy"))
    node = EnvoyNode(ads.port, workdir, "envoy-proxy-config", {"METAMESH_LISTEN_ADDRESS": listen})
    try:
        admin = node.admin.removeprefix("http://")
        wait_for(lambda: len(fetch_config_dump(admin)["listeners"]) == 4, "Envoy's 4 listeners")
        yield admin, listen
    finally:
        node.close()
        ads.close()


def test_an_envoy_dump_is_read_into_the_metamesh_shape(envoy_admin: tuple[str, str]) -> None:
    admin, listen = envoy_admin
    dump = fetch_config_dump(admin)
    assert dump["data_plane"] == "envoy" and not is_envoy_dump(dump)
    listeners = {x["name"]: x for x in dump["listeners"]}
    assert listeners["127.0.31.1_6379"] == {
        "name": "127.0.31.1_6379",
        "address": listen,
        "port": 6379,
        "codec": "envoy.filters.network.redis_proxy",
        "route_config_name": "127.0.31.1_6379",
        "stat_prefix": f"outbound|6379||{REDIS}",
    }
    assert listeners["127.0.10.1_9090"]["codec"] == "envoy.filters.network.thrift_proxy"
    assert listeners["127.0.10.1_9090"]["route_config_name"] == f"{THRIFT}_9090"
    assert listeners["127.0.10.2_20880"]["route_config_name"] == f"{DUBBO}_20880"
    clusters = {c["name"]: c for c in dump["clusters"]}
    (v1,) = clusters[f"outbound|9090|v1|{THRIFT}"]["endpoints"]
    assert (v1["address"], v1["port"]) == ("127.0.20.1", 19090)
    assert ["version", "v1"] in v1["labels"] and v1["health"] == "HEALTHY"
    assert clusters[f"outbound|9090|v1|{THRIFT}"]["lb_policy"] == "LEAST_REQUEST"


def test_the_tables_show_each_protocols_routes(
    envoy_admin: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    admin, listen = envoy_admin
    assert main(["proxy-config", "routes", "--admin", admin]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    # redis_proxy: the prefix route, then the catch-all with its mirror
    assert ["127.0.31.1_6379", "key^=a:", "outbound|6380||redis-a.demo.svc.cluster.local"] in rows
    assert [
        "127.0.31.1_6379", "*", f"outbound|6379||{REDIS}",
        "+mirror", "outbound|6380||redis-a.demo.svc.cluster.local",
    ] in rows  # fmt: skip
    # thrift_proxy's route table and the Dubbo one (dubbo_proxy's, or generic_proxy's
    # matchers): each with its method match and its 20/80 split
    assert any(r[0] == f"{THRIFT}_9090" and "method=sayHello" in r for r in rows), rows
    dubbo = [" ".join(r) for r in rows if r[0] == f"{DUBBO}_20880"]
    assert any("method=sayHello" in r for r in dubbo), dubbo
    assert any(f"outbound|20880|v2|{DUBBO} (80)" in r for r in dubbo), dubbo
    assert main(["proxy-config", "listeners", "--admin", admin]) == 0
    listeners = [line.split() for line in capsys.readouterr().out.splitlines()]
    redis_listener = ["127.0.31.1_6379", f"{listen}:6379", "envoy.filters.network.redis_proxy"]
    assert [*redis_listener, "127.0.31.1_6379"] in listeners


@pytest.mark.parametrize("view", VIEWS)
def test_json_output_from_envoy_is_that_kind_only(
    envoy_admin: tuple[str, str], view: str, capsys: pytest.CaptureFixture[str]
) -> None:
    admin, _ = envoy_admin
    assert main(["proxy-config", view, "-o", "json", "--admin", admin]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed and printed == select(view, fetch_config_dump(admin))


def test_stats_from_envoy_in_the_same_table_as_metamesh(
    envoy_admin: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    admin, _ = envoy_admin
    args = ["proxy-config", "stats", "--match", ".membership_total", "--admin", admin]
    assert main([*args, "-o", "json"]) == 0
    samples = {s["name"]: s["value"] for s in json.loads(capsys.readouterr().out)}
    # Envoy's own names, whole (its Prometheus export would cut the cluster name at a dot)
    assert samples[f"cluster.outbound|9090|v1|{THRIFT}.membership_total"] == 1
    assert samples[f"cluster.outbound|9090||{THRIFT}.membership_total"] == 2
    assert main(args) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["NAME", "LABELS", "VALUE"]
    assert [f"cluster.outbound|9090||{THRIFT}.membership_total", "2"] in rows
