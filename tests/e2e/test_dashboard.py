"""The live dashboard in a real browser: Debian's headless Chromium loads the proxy admin's
``/dashboard`` while ``metamesh up`` carries real traffic (Apache Thrift and dubbo-py clients,
each service split 50/50 between v1 and v2, some calls unrouted).

Chromium's rendered DOM (``--dump-dom`` after a few virtual seconds of the page polling
``/dashboard/data``) shows both services, both versions of each, a request rate above zero on
their edges, the routes in force with their weights and the proxy's health; a second load a
moment later shows a larger request total (the numbers move); a screenshot is saved under the
test's temp dir and its size checked."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from metamesh.proxy.telemetry import Workload
from tests.codecs.dubbo import peers
from tests.codecs.thrift.apache_peer import ApacheServer
from tests.e2e import mesh
from tests.e2e.mesh import DeployedMesh, free_address, write
from tests.e2e.test_prometheus import DUBBO_HOST, DUBBO_META, PROVIDER, Traffic, service
from tests.runtime import mesh_config as mc
from tests.runtime.proxy_thread import ProxyThread
from tests.runtime.thrift_servers import NamedCalc
from tests.support.ports import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.interop,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def chromium(tmp: Path, url: str, *args: str) -> str:
    """Headless Chromium on ``url`` for 4 virtual seconds (the page polls every second)."""
    out = subprocess.run(
        [
            CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", f"--user-data-dir={tmp / 'chromium-profile'}",
            "--virtual-time-budget=4000", "--window-size=1400,900", *args, url,
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def cell(dom: str, service: str, version: str, cls: str) -> float:
    row = re.search(rf'<tr data-edge="{re.escape(service)}:{version}">(.*?)</tr>', dom)
    assert row is not None, (service, version, dom[-3000:])
    value = re.search(rf'<td class="num {cls}">([0-9.]+)</td>', row.group(1))
    assert value is not None, row.group(1)
    return float(value.group(1))


def test_dashboard_in_headless_chromium(calc_gen: types.ModuleType, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: run scripts/setup.sh")
    config = tmp_path / "mesh"
    config.mkdir()
    thrift_at, dubbo_at = free_address(), free_address()
    providers = [
        peers.Peer([sys.executable, str(PROVIDER), "0", v], PROVIDER.parent) for v in ("v1", "v2")
    ]
    try:
        calc = calc_gen.Calc.Processor
        with (
            ApacheServer(calc(NamedCalc(calc_gen, "v1")), "framed", "binary") as v1,
            ApacheServer(calc(NamedCalc(calc_gen, "v2")), "framed", "binary") as v2,
        ):
            port = "tcp-metaprotocol-thrift-e2e"
            ports = {"v1": v1.port, "v2": v2.port}
            write(
                config / "thrift.yaml",
                service(mesh.THRIFT_META, mesh.HOST, thrift_at, port, "calc", ports),
            )
            port = "tcp-metaprotocol-dubbo-e2e"
            ports = {"v1": providers[0].port, "v2": providers[1].port}
            write(
                config / "dubbo.yaml",
                service(DUBBO_META, DUBBO_HOST, dubbo_at, port, "demo-provider", ports),
            )
            with DeployedMesh(tmp_path, "up", config) as up:
                up.wait_for(f"{dubbo_at[0]}:{dubbo_at[1]}  dubbo  split -> v1 50%")
                up.wait_for(f"{thrift_at[0]}:{thrift_at[1]}  thrift  split -> v1 50%")
                check_page(
                    tmp_path, f"http://{up.admin()}/dashboard", calc_gen, thrift_at, dubbo_at
                )
                assert up.stop() == 0
    finally:
        for p in providers:
            p.stop()


def check_page(
    tmp: Path,
    url: str,
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
        first = chromium(tmp, url, "--dump-dom")
        second = chromium(tmp, url, "--dump-dom")
        shot = tmp / "dashboard.png"
        chromium(tmp, url, f"--screenshot={shot}")
    finally:
        traffic.stop.set()
        for t in threads:
            t.join(15)
    assert traffic.errors == []
    for service_name in (mesh.HOST, DUBBO_HOST):
        assert f'data-node="service:{service_name}"' in first
        for version in ("v1", "v2"):
            assert f'data-node="version:{service_name}:{version}"' in first
            assert cell(first, service_name, version, "rate") > 0  # requests flowing now
            assert cell(second, service_name, version, "total") > cell(
                first, service_name, version, "total"
            )
    total = [int(re.search(r'id="total-requests">(\d+)<', d).group(1)) for d in (first, second)]  # type: ignore[union-attr]
    assert 0 < total[0] < total[1]  # the numbers move
    assert "split" in first and "50%" in first  # the routes in force with their weights
    assert "LIVE" in first and "2/2 healthy" in first  # the proxy's health
    assert 'data-node="source:metamesh-up"' in first
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


@contextlib.contextmanager
def workload_proxy(name: str, v1: int, v2: int) -> Iterator[ProxyThread]:
    """A client-side proxy of workload ``name``: calc.test -> v1 and v2 (round robin), with an
    admin on a free port."""
    cluster = mc.cluster("outbound|9090||calc.test", v1, v2)
    lb_endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    for ep, version in zip(lb_endpoints, ("v1", "v2"), strict=True):
        ep["metadata"] = {"labels": {"version": version}}
    snap = mc.snapshot(
        [mc.listener("calc", "thrift", "calc.test_9090")],
        [cluster],
        {"calc.test_9090": [mc.route("all", "outbound|9090||calc.test", method="~.*")]},
    )
    with ProxyThread(snap, admin_port=0) as proxy:
        assert proxy.server is not None
        proxy.call(setattr, proxy.server.core.stats, "local", Workload(name, "default"))
        yield proxy


def calls(gen: types.ModuleType, port: int, stop: threading.Event, errors: list[str]) -> None:
    client = mesh.ThriftClient(gen, "127.0.0.1", port)
    try:
        while not stop.is_set():
            if not client.echo("x").endswith(":x"):
                errors.append("bad answer")
            time.sleep(0.004)
    finally:
        client.close()


def test_mesh_dashboard_of_several_proxies(calc_gen: types.ModuleType, tmp_path: Path) -> None:
    """``metamesh dashboard`` over two proxies' admins and one address where nothing answers:
    one graph with both source workloads, every proxy's health, the pushes each took."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: run scripts/setup.sh")
    calc, dead, port = calc_gen.Calc.Processor, free_port(), free_port()
    stop, errors = threading.Event(), list[str]()
    with ExitStack() as stack:
        v1, v2 = (
            stack.enter_context(ApacheServer(calc(NamedCalc(calc_gen, v)), "framed", "binary"))
            for v in ("v1", "v2")
        )
        proxies = [
            stack.enter_context(workload_proxy(n, v1.port, v2.port)) for n in ("web", "batch")
        ]
        admins = [f"127.0.0.1:{p.server.bound_admin_port}" for p in proxies if p.server]
        args = [a for x in (*admins, f"127.0.0.1:{dead}") for a in ("--proxy", x)]
        dash = stack.enter_context(
            mesh.Metamesh(tmp_path, "dashboard", "dashboard", *args, "--port", str(port))
        )
        dash.wait_for(f"metamesh dashboard: http://127.0.0.1:{port}/dashboard (3 proxies)")
        threads = [
            threading.Thread(target=calls, args=(calc_gen, p.port("calc"), stop, errors))
            for p in proxies
        ]
        for t in threads:
            t.start()
        try:
            url = f"http://127.0.0.1:{port}/dashboard"
            first = chromium(tmp_path, url, "--dump-dom")
            second = chromium(tmp_path, url, "--dump-dom")
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        assert dash.stop() == 0
    assert errors == []
    assert "mesh of 3 proxies, 2 answering" in first
    for source in ("web", "batch"):
        assert f'data-node="source:{source}"' in first
    for version in ("v1", "v2"):
        assert f'data-node="version:calc.test:{version}"' in first
        assert cell(first, "calc.test", version, "rate") > 0
        assert cell(second, "calc.test", version, "total") > cell(
            first, "calc.test", version, "total"
        )
    for admin, name in zip(admins, ("web", "batch"), strict=True):
        row = re.search(rf'<tr data-proxy="{admin}">(.*?)</tr>', first)
        assert row is not None and "LIVE" in row.group(1) and "2/2 healthy" in row.group(1)
        assert f"ACK <small>{name} ({admin})</small>" in first  # the config each one took
    down = re.search(rf'<tr data-proxy="127.0.0.1:{dead}">(.*?)</tr>', first)
    assert down is not None and "unreachable" in down.group(1)
    assert dash.stderr().count(f"proxy 127.0.0.1:{dead} unreachable") == 1  # once, not per poll


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as reply:
        body: bytes = reply.read()
        return body


def live(admin: str) -> bool:
    try:
        return get(f"http://{admin}/ready").startswith(b"LIVE")
    except urllib.error.HTTPError:  # 503 until the first config is in force
        return False


def test_control_plane_serves_the_mesh_page(calc_gen: types.ModuleType, tmp_path: Path) -> None:
    """``control-plane --admin-port``: ``/dashboard`` of the proxies connected to it, found by
    the admin address each tells in its xDS node: two ``proxy --xds`` processes (one carrying
    real Apache Thrift calls, one inbound-only and idle), their health and the pushes each
    ACKed as the control plane saw them."""
    config = tmp_path / "mesh"
    config.mkdir()
    address, port = free_address()
    xds = free_port()
    calc = calc_gen.Calc.Processor
    with ExitStack() as stack:
        v1, v2 = (
            stack.enter_context(ApacheServer(calc(NamedCalc(calc_gen, v)), "framed", "binary"))
            for v in ("v1", "v2")
        )
        mesh.thrift_mesh(config, address, port, v1.port, v2.port)
        control = stack.enter_context(
            mesh.Metamesh(tmp_path, "cp", "control-plane", "--config-dir", str(config),
                          "--xds-port", str(xds), "--admin-port", "0")
        )  # fmt: skip
        control.wait_for("control plane admin on 127.0.0.1:")
        line = next(x for x in control.stdout().splitlines() if "control plane admin on" in x)
        page = "http://127.0.0.1:" + line.rsplit(":", 1)[1].strip() + "/dashboard"
        dial = ("--xds", f"127.0.0.1:{xds}", "--admin-port", "0")
        proxies = [
            stack.enter_context(mesh.Metamesh(tmp_path, n, "proxy", *dial, "--node-id", n, *more))
            for n, more in (("web", ()), ("batch", ("--no-outbound",)))
        ]
        admins = [p.admin() for p in proxies]
        for admin in admins:
            mesh.wait_until(lambda a=admin: live(a), f"{admin} LIVE")
        client = mesh.ThriftClient(calc_gen, address, port)
        stack.callback(client.close)
        for i in range(20):
            assert client.echo(str(i)).endswith(str(i))
        first = json.loads(get(page + "/data"))
        for i in range(20):
            client.echo(str(i))
        second = json.loads(get(page + "/data"))
        assert b"metamesh: live mesh" in get(page)
    health = {p["address"]: p for p in first["proxies"]}
    assert set(health) == set(admins)
    assert [health[a]["workload"] for a in admins] == ["web", "batch"]
    assert all(p["state"] == "LIVE" for p in health.values())
    assert {(p["proxy"], p["status"]) for p in first["pushes"]} == {
        ("web", "ACK"),
        ("batch", "ACK"),
    }
    totals = [sum(e["ok"] for e in d["edges"] if e["source"] == "web") for d in (first, second)]
    assert totals == [20, 40]
    assert {e["version"] for e in first["edges"]} == {"v1", "v2"}
