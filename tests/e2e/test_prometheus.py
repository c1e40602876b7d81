"""Istio's dashboards' queries against a real Prometheus scraping a running mesh.

``metamesh up`` serves a Thrift service (Apache thrift servers v1 and v2) and a Dubbo service
(dubbo-py providers v1 and v2), each split 50/50 between its versions by a MetaRouter; real
clients call them (Apache Thrift framed/binary, dubbo-py), some calls to a method no route
matches. Debian's ``prometheus`` runs on a loopback port with ``deploy/prometheus/prometheus.yml``
(its target replaced by the mesh's admin address, scraped every second). Then, through
Prometheus' HTTP API:

* every query of ``deploy/grafana/metamesh-services.json`` returns series (variables set to all
  services, reporter ``source``), with the values each must have: both versions of both
  services, an error rate above zero, p50 <= p90 <= p99;
* Kiali's graph query returns the edges metamesh-up -> each service's workloads;
* once traffic has stopped, Prometheus' totals per service, version and response code equal
  what the clients counted.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from thrift.Thrift import TApplicationException

from tests.codecs.dubbo import peers
from tests.codecs.thrift.apache_peer import ApacheServer
from tests.e2e import mesh
from tests.e2e.mesh import DeployedMesh, ThriftClient, free_address, wait_until, write
from tests.runtime.thrift_servers import NamedCalc
from tests.support.ports import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.interop,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "metamesh-services.json"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROVIDER = Path(__file__).with_name("dubbopy_versioned.py")
IFACE = "org.apache.dubbo.demo.DemoService"
DUBBO_HOST = IFACE.lower()
DUBBO_META = "{name: demo, namespace: dubbo}"
KIALI_EDGES = (
    'sum(rate(istio_requests_total{reporter="source"}[1m])) by (source_cluster, '
    "source_workload_namespace, source_workload, source_canonical_service, "
    "source_canonical_revision, destination_cluster, destination_service_namespace, "
    "destination_service, destination_service_name, destination_workload_namespace, "
    "destination_workload, destination_canonical_service, destination_canonical_revision, "
    "request_protocol, response_code, grpc_response_status, response_flags) > 0"
)


def service(
    meta: str, host: str, at: tuple[str, int], port: str, app: str, v: dict[str, int]
) -> str:
    """ServiceEntry (endpoints labelled app and version) + DestinationRule + 50/50 MetaRouter."""
    routes = f"""  - name: split
    match: {{attributes: {{method: {{regex: "sayHello|echo"}}}}}}
    route: [{mesh.to("v1", 50, host)}, {mesh.to("v2", 50, host)}]"""
    entry = mesh.service_with_subsets(meta, host, at, port, v, app=app)
    return f"""{entry}---
{mesh.router(routes, host=host, meta=meta)}"""


class Prometheus:
    """Debian's prometheus on a loopback port, scraping ``target`` every second."""

    def __init__(self, tmp: Path, target: str) -> None:
        config = SCRAPE_CONFIG.read_text()
        assert '"127.0.0.1:15000"' in config and "/stats/prometheus" in config
        config = config.replace('"127.0.0.1:15000"', json.dumps(target))
        config = config.replace("scrape_interval: 5s", "scrape_interval: 1s")
        (tmp / "prometheus.yml").write_text(config)
        self.address = f"127.0.0.1:{free_port()}"
        self.log = (tmp / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address={self.address}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self.ready, "prometheus /-/ready", 30.0)

    def ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited (see prometheus.log)"
        try:
            with urllib.request.urlopen(f"http://{self.address}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"http://{self.address}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every target, variables set to reporter source / all services."""
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$reporter", "source").replace("$service", ".*")
            yield panel["title"], expr


class Traffic:
    """Calls from real clients, counted by (service, outcome) as the clients saw them."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

    def thrift(self, gen: types.ModuleType, at: tuple[str, int]) -> None:
        client = ThriftClient(gen, *at)
        try:
            i = 0
            while not self.stop.is_set():
                i += 1
                if i % 5 == 0:
                    with pytest.raises(TApplicationException):
                        client.client.ping()
                    self.counts[(mesh.HOST, "1")] += 1
                else:
                    assert client.client.echo(str(i)).endswith(str(i))
                    self.counts[(mesh.HOST, "0")] += 1
                time.sleep(0.004)
        except BaseException as e:  # reported by the test
            self.errors.append(e)
        finally:
            client.close()

    def dubbo(self, at: tuple[str, int]) -> None:
        from dubbo.client import DubboClient

        before = set(threading.enumerate())
        consumer: Any = DubboClient(at[0], at[1], dubbo_version="2.0.2")
        receiver = next(t for t in set(threading.enumerate()) - before if "_recv_loop" in t.name)
        try:
            i = 0
            while not self.stop.is_set():
                i += 1
                method = "getAttachment" if i % 5 == 0 else "sayHello"
                reply = peers.dubbopy_call(consumer, method, "x", service_version="0.0.0")
                assert reply.ok is (method == "sayHello"), reply
                self.counts[(DUBBO_HOST, "0" if reply.ok else "1")] += 1
                time.sleep(0.004)
        except BaseException as e:
            self.errors.append(e)
        finally:
            consumer._sock.shutdown(socket.SHUT_RDWR)
            receiver.join(5)
            consumer._sock.close()


def test_istio_dashboard_queries_on_a_real_prometheus(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    if not Path(PROMETHEUS).exists():
        pytest.fail("Debian's prometheus is not installed: run scripts/setup.sh")
    config = tmp_path / "mesh"
    config.mkdir()
    thrift_at, dubbo_at = free_address(), free_address()
    providers = [
        peers.Peer([sys.executable, str(PROVIDER), "0", v], PROVIDER.parent) for v in ("v1", "v2")
    ]
    try:
        with (
            ApacheServer(
                calc_gen.Calc.Processor(NamedCalc(calc_gen, "v1")), "framed", "binary"
            ) as v1,
            ApacheServer(
                calc_gen.Calc.Processor(NamedCalc(calc_gen, "v2")), "framed", "binary"
            ) as v2,
        ):
            ports = {"v1": v1.port, "v2": v2.port}
            thrift = service(
                mesh.THRIFT_META, mesh.HOST, thrift_at, "tcp-metaprotocol-thrift-e2e", "calc", ports
            )
            write(config / "thrift.yaml", thrift)
            ports = {"v1": providers[0].port, "v2": providers[1].port}
            dubbo = service(
                DUBBO_META,
                DUBBO_HOST,
                dubbo_at,
                "tcp-metaprotocol-dubbo-e2e",
                "demo-provider",
                ports,
            )
            write(config / "dubbo.yaml", dubbo)
            with DeployedMesh(tmp_path, "up", config) as up:
                up.wait_for(f"{dubbo_at[0]}:{dubbo_at[1]}  dubbo  split -> v1 50%")
                up.wait_for(f"{thrift_at[0]}:{thrift_at[1]}  thrift  split -> v1 50%")
                prometheus = Prometheus(tmp_path, up.admin())
                try:
                    check_queries(prometheus, calc_gen, thrift_at, dubbo_at)
                finally:
                    prometheus.stop()
                assert up.stop() == 0
    finally:
        for p in providers:
            p.stop()


def check_queries(
    prometheus: Prometheus,
    gen: types.ModuleType,
    thrift_at: tuple[str, int],
    dubbo_at: tuple[str, int],
) -> None:
    traffic = Traffic()
    threads = [
        threading.Thread(target=traffic.thrift, args=(gen, thrift_at)),
        threading.Thread(target=traffic.dubbo, args=(dubbo_at,)),
    ]
    for t in threads:
        t.start()
    try:
        queries = list(dashboard_queries())
        assert len(queries) >= 10
        # every panel has data once two scrapes with traffic are in (rate needs two samples)
        wait_until(
            lambda: all(prometheus.query(q) for _, q in queries), "every panel's series", 30.0
        )
    finally:
        traffic.stop.set()
        for t in threads:
            t.join(15)
    assert traffic.errors == []
    results = {title: prometheus.query(q) for title, q in queries}

    by_workload = results["Request rate by source and destination workload and version"]
    edges = {
        (
            r["metric"]["source_workload"],
            r["metric"]["destination_workload"],
            r["metric"]["destination_version"],
        )
        for r in by_workload
    }
    assert edges == {
        ("metamesh-up", "calc-v1", "v1"),
        ("metamesh-up", "calc-v2", "v2"),
        ("metamesh-up", "demo-provider-v1", "v1"),
        ("metamesh-up", "demo-provider-v2", "v2"),
        ("metamesh-up", "unknown", "unknown"),  # the unrouted calls: no endpoint
    }, by_workload
    errors = {
        r["metric"]["destination_service"]: float(r["value"][1])
        for r in results["Error rate (response_code not 0)"]
    }
    assert set(errors) == {mesh.HOST, DUBBO_HOST} and all(0 < e < 1 for e in errors.values()), (
        errors
    )
    flags = {
        (r["metric"]["destination_service"], r["metric"]["response_flags"])
        for r in results["Local replies by response flag"]
    }
    assert flags == {(mesh.HOST, "NR"), (DUBBO_HOST, "NR")}
    latency = {}
    for r in prometheus.query(
        next(q for t, q in queries if t == "Request duration p50 / p90 / p99" and "0.50" in q)
    ):
        latency[r["metric"]["destination_service"], r["metric"]["destination_version"]] = float(
            r["value"][1]
        )
    assert {k for k in latency if k[1] != "unknown"} == {
        (mesh.HOST, "v1"),
        (mesh.HOST, "v2"),
        (DUBBO_HOST, "v1"),
        (DUBBO_HOST, "v2"),
    }
    quantiles = [
        {
            (r["metric"]["destination_service"], r["metric"]["destination_version"]): float(
                r["value"][1]
            )
            for r in prometheus.query(q)
        }
        for t, q in queries
        if t == "Request duration p50 / p90 / p99"
    ]
    for key in latency:
        p50, p90, p99 = (q[key] for q in quantiles)
        assert 0 < p50 <= p90 <= p99 < 1000, (key, p50, p90, p99)
    kiali = prometheus.query(KIALI_EDGES)
    assert {
        (
            r["metric"]["destination_canonical_service"],
            r["metric"]["destination_canonical_revision"],
        )
        for r in kiali
    } >= {("calc", "v1"), ("calc", "v2"), ("demo-provider", "v1"), ("demo-provider", "v2")}
    assert {r["metric"]["request_protocol"] for r in kiali} == {"thrift", "dubbo"}
    check_totals(prometheus, traffic)


def check_totals(prometheus: Prometheus, traffic: Traffic) -> None:
    """After the last call, Prometheus' totals equal what the clients counted."""
    expected = {k: float(n) for k, n in traffic.counts.items()}

    def totals() -> dict[tuple[str, str], float]:
        rows = prometheus.query("sum(istio_requests_total) by (destination_service, response_code)")
        return {
            (r["metric"]["destination_service"], r["metric"]["response_code"]): float(r["value"][1])
            for r in rows
        }

    wait_until(lambda: totals() == expected, f"Prometheus totals == {expected}", 15.0)
    versions = prometheus.query(
        'sum(istio_requests_total{response_code="0"}) by (destination_service, destination_version)'
    )
    for service in (mesh.HOST, DUBBO_HOST):
        split = {
            r["metric"]["destination_version"]: float(r["value"][1])
            for r in versions
            if r["metric"]["destination_service"] == service
        }
        assert set(split) == {"v1", "v2"} and sum(split.values()) == expected[(service, "0")]
        assert min(split.values()) > 0.2 * sum(split.values()), split  # 50/50 within chance
