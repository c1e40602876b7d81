"""``--workers 2`` with real peers: Apache Thrift and dubbo-py clients through ``metamesh up``.

One proxy as two processes (worker 0 holds the xDS stream and the admin): a Thrift service
split 50/50 between two Apache servers, a Dubbo service (two dubbo-py providers) behind a local
rate limit. Twelve client connections of each protocol spread over the workers (the kernel's
SO_REUSEPORT hash). Checked:

* both workers serve clients (``/server_info`` ``workers``), each with the config in force;
* the split reaches both Thrift servers, and a live route change (all to v2) applies in both
  workers with no failed call: every call after the change is answered by v2;
* the rate limit holds for the whole proxy: at most ``maxTokens`` calls pass, the rest are
  answered by the proxy with Dubbo's over-limit error;
* the merged ``/stats/prometheus`` counts per service, version and response code equal what
  the servers received and the clients saw;
* ``kill -9`` of worker 1 mid-traffic: a warning, ``metamesh_worker_restarts_total`` 1, a new
  pid in ``/server_info``; clients whose connection was on worker 0 never saw an error, and
  new connections are served; SIGTERM then drains both and the proxy exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import types
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.codecs.dubbo import peers
from tests.codecs.thrift.apache_peer import ApacheServer
from tests.e2e import mesh
from tests.e2e.mesh import DeployedMesh, Metamesh, ThriftClient, free_address, wait_until, write
from tests.runtime.thrift_servers import NamedCalc
from tests.support import prom

pytestmark = [
    pytest.mark.slow,
    pytest.mark.interop,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
PROVIDER = Path(__file__).parents[1] / "e2e" / "dubbopy_versioned.py"
IFACE = "org.apache.dubbo.demo.DemoService"
DUBBO_HOST = IFACE.lower()
DUBBO_META = "{name: demo, namespace: dubbo}"
CLIENTS = 12
TOKENS = 30


def thrift_yaml(at: tuple[str, int], ports: dict[str, int], routes: str) -> str:
    entry = mesh.service_with_subsets(
        mesh.THRIFT_META, mesh.HOST, at, "tcp-metaprotocol-thrift-e2e", ports, app="calc"
    )
    return f"{entry}---\n{mesh.router(routes)}"


def split_routes() -> str:
    return f"  - name: split\n    route: [{mesh.to('v1', 50)}, {mesh.to('v2', 50)}]"


def all_v2_routes() -> str:
    return f"  - name: all-v2\n    route: [{mesh.to('v2')}]"


def dubbo_yaml(at: tuple[str, int], ports: dict[str, int]) -> str:
    entry = mesh.service_with_subsets(
        DUBBO_META, DUBBO_HOST, at, "tcp-metaprotocol-dubbo-e2e", ports, app="demo-provider"
    )
    routes = (
        f"  - name: split\n    route: [{mesh.to('v1', 50, DUBBO_HOST)}, "
        f"{mesh.to('v2', 50, DUBBO_HOST)}]\n"
        "  localRateLimit:\n"
        f"    tokenBucket: {{maxTokens: {TOKENS}, tokensPerFill: {TOKENS}, fillInterval: 3600s}}"
    )
    return f"{entry}---\n{mesh.router(routes, host=DUBBO_HOST, meta=DUBBO_META)}"


def get(admin: str, path: str) -> bytes:
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=10) as reply:
        body: bytes = reply.read()
        return body


def server_info(admin: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(get(admin, "/server_info"))
    return info


class ThriftCallers:
    """Clients on their own connections calling ``echo`` until stopped; per client, the
    answers (``v1:...``/``v2:...``) and the errors it saw."""

    def __init__(self, gen: types.ModuleType, at: tuple[str, int], n: int) -> None:
        self.gen, self.at = gen, at
        self.stop = threading.Event()
        self.answers: list[list[str]] = [[] for _ in range(n)]
        self.errors: list[list[BaseException]] = [[] for _ in range(n)]
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]

    def _run(self, i: int) -> None:
        client: ThriftClient | None = None
        k = 0
        while not self.stop.is_set():
            k += 1
            try:
                if client is None:
                    client = ThriftClient(self.gen, *self.at)
                self.answers[i].append(client.echo(f"{i}-{k}"))
            except Exception as exc:  # counted; the client reconnects
                self.errors[i].append(exc)
                if client is not None:
                    client.close()
                client = None
                time.sleep(0.05)
            time.sleep(0.003)
        if client is not None:
            client.close()

    def __enter__(self) -> ThriftCallers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(20)

    def calls(self) -> int:
        return sum(len(a) for a in self.answers)


def dubbo_calls(at: tuple[str, int], n: int) -> Counter[str]:
    """``n`` dubbo-py consumers, one call each on a connection of its own: replies by outcome
    (``v1``/``v2`` from the provider that answered, else the over-limit error)."""
    from dubbo.client import DubboClient

    outcomes: Counter[str] = Counter()
    for i in range(n):
        before = set(threading.enumerate())
        consumer: Any = DubboClient(at[0], at[1], dubbo_version="2.0.2")
        receiver = next(t for t in set(threading.enumerate()) - before if "_recv_loop" in t.name)
        try:
            reply = peers.dubbopy_call(consumer, "sayHello", f"c{i}", service_version="0.0.0")
            if reply.ok:
                outcomes[str(reply.data).split(":")[0]] += 1
            else:
                assert "rate limit" in str(reply.error), reply.error
                outcomes["limited"] += 1
        finally:
            consumer._sock.shutdown(socket.SHUT_RDWR)
            receiver.join(5)
            consumer._sock.close()
    return outcomes


def test_two_workers_with_real_thrift_and_dubbo_clients(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    config = tmp_path / "mesh"
    config.mkdir()
    thrift_at, dubbo_at = free_address(), free_address()
    handlers = {v: NamedCalc(calc_gen, v) for v in ("v1", "v2")}
    providers = [
        peers.Peer([sys.executable, str(PROVIDER), "0", v], PROVIDER.parent) for v in ("v1", "v2")
    ]
    try:
        with (
            ApacheServer(calc_gen.Calc.Processor(handlers["v1"]), "framed", "binary") as v1,
            ApacheServer(calc_gen.Calc.Processor(handlers["v2"]), "framed", "binary") as v2,
        ):
            write(
                config / "thrift.yaml",
                thrift_yaml(thrift_at, {"v1": v1.port, "v2": v2.port}, split_routes()),
            )
            dubbo_ports = {"v1": providers[0].port, "v2": providers[1].port}
            write(config / "dubbo.yaml", dubbo_yaml(dubbo_at, dubbo_ports))
            args = ("up", str(config), "--admin-port", "0", "--workers", "2")
            with Metamesh(tmp_path, "up", *args) as up:
                up.wait_for(f"{thrift_at[0]}:{thrift_at[1]}  thrift  split -> v1 50%", 60)
                up.wait_for(f"{dubbo_at[0]}:{dubbo_at[1]}  dubbo", 60)
                admin = up.admin()
                run_checks(
                    up, admin, calc_gen, thrift_at, dubbo_at, config, handlers, v1.port, v2.port
                )
    finally:
        for p in providers:
            p.stop()


def run_checks(
    up: Metamesh,
    admin: str,
    gen: types.ModuleType,
    thrift_at: tuple[str, int],
    dubbo_at: tuple[str, int],
    config: Path,
    handlers: dict[str, NamedCalc],
    v1_port: int,
    v2_port: int,
) -> None:
    info = server_info(admin)
    workers = info["workers"]
    assert [w["worker"] for w in workers] == [0, 1] and all(w["state"] == "LIVE" for w in workers)
    with ThriftCallers(gen, thrift_at, CLIENTS) as callers:
        wait_until(lambda: callers.calls() >= 200, "200 Thrift calls", 30)
        per_worker = [w["clients"] for w in server_info(admin)["workers"]]
        assert all(n > 0 for n in per_worker), per_worker  # the kernel spread the clients
        # live route change: every worker has it once the proxy says it serves it
        write(
            config / "thrift.yaml",
            thrift_yaml(thrift_at, {"v1": v1_port, "v2": v2_port}, all_v2_routes()),
        )
        up.wait_for(f"{thrift_at[0]}:{thrift_at[1]}  thrift  all-v2 -> v2", 30)
        marks = [len(a) for a in callers.answers]
        wait_until(lambda: callers.calls() >= sum(marks) + 200, "200 calls after the change", 30)
        check_clusters_and_config(admin)
    assert all(not e for e in callers.errors), callers.errors  # the change dropped nothing
    # a call in flight at the change keeps the routes it started with: skip one per client
    after = [a[m + 1 :] for a, m in zip(callers.answers, marks, strict=True)]
    assert all(x.startswith("v2:") for a in after for x in a)
    seen = Counter(x.split(":")[0] for a in callers.answers for x in a)
    assert seen["v1"] > 0 and seen["v2"] > 0, seen
    assert seen == Counter({v: len(h.echoes()) for v, h in handlers.items()})

    outcomes = dubbo_calls(dubbo_at, 2 * TOKENS)
    assert outcomes["limited"] >= TOKENS and outcomes["v1"] + outcomes["v2"] <= TOKENS, outcomes

    text = get(admin, "/stats/prometheus").decode()
    for version in ("v1", "v2"):
        n = prom.total(
            text,
            "istio_requests_total",
            destination_service=mesh.HOST,
            destination_version=version,
            response_code="0",
        )
        assert n == seen[version], (version, n, seen)
        n = prom.total(
            text,
            "istio_requests_total",
            destination_service=DUBBO_HOST,
            destination_version=version,
            response_code="0",
        )
        assert n == outcomes[version], (version, n, outcomes)
    limited = prom.total(
        text, "istio_requests_total", destination_service=DUBBO_HOST, response_code="1"
    )
    assert limited == outcomes["limited"]
    assert prom.total(text, "metamesh_ratelimit_over_limit_total") == outcomes["limited"]
    count = prom.total(
        text, "istio_request_duration_milliseconds_count", destination_service=mesh.HOST
    )
    assert count == seen["v1"] + seen["v2"]  # the histograms merged too
    assert prom.total(text, "metamesh_workers") == 2
    edges = json.loads(get(admin, "/dashboard/data"))["edges"]
    assert sum(e["ok"] for e in edges if e["service"] == mesh.HOST) == seen["v1"] + seen["v2"]

    kill_a_worker(up, admin, gen, thrift_at)
    pids = [w["pid"] for w in server_info(admin)["workers"]]
    assert up.stop() == 0  # SIGTERM: both workers drained, worker 0 exits once they are gone
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "did not exit in time" not in up.stderr()


def check_clusters_and_config(admin: str) -> None:
    """Under traffic: each worker holds its own upstream connection to v2, and /clusters adds
    them up; /config_dump is the version every worker runs."""
    clusters = json.loads(get(admin, "/clusters?format=json"))["clusters"]
    (v2,) = [c for c in clusters if c["name"].endswith(f"|v2|{mesh.HOST}")]
    (host,) = v2["hosts"]
    assert host["health"] == "healthy" and host["unhealthy_workers"] == 0
    assert host["cx_active"] >= 2 and v2["cx_active"] >= 2, v2  # one per worker at least
    assert "::cx_active::" in get(admin, "/clusters").decode()
    dump = json.loads(get(admin, "/config_dump"))
    versions = {w["config_version"] for w in server_info(admin)["workers"]}
    assert versions == {dump["version"]}, (versions, dump["version"])


def kill_a_worker(up: Metamesh, admin: str, gen: types.ModuleType, at: tuple[str, int]) -> None:
    """SIGKILL worker 1 under traffic: restarted and counted; worker 0's clients unaffected."""
    before = server_info(admin)["workers"][1]
    with ThriftCallers(gen, at, CLIENTS) as callers:
        wait_until(lambda: callers.calls() >= 100, "100 Thrift calls", 30)
        os.kill(before["pid"], signal.SIGKILL)

        def restarted() -> bool:
            w = server_info(admin)["workers"][1]
            return bool(w["state"] == "LIVE" and w["pid"] != before["pid"])

        wait_until(restarted, "worker 1 restarted", 60)
        marks = callers.calls()
        wait_until(lambda: callers.calls() >= marks + 200, "200 calls after the restart", 30)
    untouched = [i for i, e in enumerate(callers.errors) if not e]
    assert untouched, "every client saw an error: none was on worker 0"
    assert all(len(callers.answers[i]) > 0 for i in range(CLIENTS))
    text = get(admin, "/stats/prometheus").decode()
    assert prom.total(text, "metamesh_worker_restarts_total", worker="1") == 1
    assert server_info(admin)["workers"][1]["restarts"] == 1
    assert f"worker 1 (pid {before['pid']}) exited with signal 9" in up.stderr()


def connections_to(port: int) -> int:
    """ESTABLISHED TCP connections to ``port`` on this host (``/proc/net/tcp`` and ``tcp6``)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            remote, state = line.split()[2:4]
            if state == "01" and remote.endswith(f":{port:04X}"):
                count += 1
    return count


def test_proxy_xds_with_two_workers_holds_one_xds_stream(
    calc_gen: types.ModuleType, tmp_path: Path
) -> None:
    """``control-plane`` + ``proxy --xds --workers 2``: one ADS connection for the whole
    proxy, and a route change reaches the clients of both workers."""
    config = tmp_path / "mesh"
    config.mkdir()
    at = free_address()
    handlers = {v: NamedCalc(calc_gen, v) for v in ("v1", "v2")}
    with (
        ApacheServer(calc_gen.Calc.Processor(handlers["v1"]), "framed", "binary") as v1,
        ApacheServer(calc_gen.Calc.Processor(handlers["v2"]), "framed", "binary") as v2,
    ):
        ports = {"v1": v1.port, "v2": v2.port}
        write(config / "thrift.yaml", thrift_yaml(at, ports, split_routes()))
        with DeployedMesh(tmp_path, "xds", config, "--workers", "2") as deployed:
            deployed.wait_for(f"{at[0]}:{at[1]}  thrift  split -> v1 50%", 60)
            admin = deployed.admin()
            xds_port = int(deployed.control.args[deployed.control.args.index("--xds-port") + 1])
            with ThriftCallers(calc_gen, at, CLIENTS) as callers:
                wait_until(lambda: callers.calls() >= 100, "100 Thrift calls", 30)
                workers = server_info(admin)["workers"]
                assert all(w["clients"] > 0 for w in workers), workers
                assert connections_to(xds_port) == 1  # one ADS stream, not one per worker
                write(config / "thrift.yaml", thrift_yaml(at, ports, all_v2_routes()))
                deployed.wait_for(f"{at[0]}:{at[1]}  thrift  all-v2 -> v2", 30)
                marks = [len(a) for a in callers.answers]
                wait_until(lambda: callers.calls() >= sum(marks) + 100, "100 more calls", 30)
            assert all(not e for e in callers.errors), callers.errors
            assert all(
                x.startswith("v2:")
                for a, m in zip(callers.answers, marks, strict=True)
                for x in a[m + 1 :]
            )
            versions = {w["config_version"] for w in server_info(admin)["workers"]}
            assert len(versions) == 1, versions
            assert deployed.stop() == 0
