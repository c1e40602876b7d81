"""The live dashboard in a real browser: Debian's headless Chromium loads the proxy admin's
``/dashboard`` while ``metamesh up`` carries real traffic (Apache Thrift and dubbo-py clients,
each service split 50/50 between v1 and v2, some calls unrouted).

Chromium's rendered DOM (``--dump-dom`` after a few virtual seconds of the page polling
``/dashboard/data``) shows both services, both versions of each, a request rate above zero on
their edges, the routes in force with their weights and the proxy's health; a second load a
moment later shows a larger request total (the numbers move); a screenshot is saved under the
test's temp dir and its size checked."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

from tests.codecs.dubbo import peers
from tests.codecs.thrift.apache_peer import ApacheServer
from tests.e2e import mesh
from tests.e2e.mesh import DeployedMesh, free_address, write
from tests.e2e.test_prometheus import DUBBO_HOST, DUBBO_META, PROVIDER, Traffic, service
from tests.runtime.thrift_servers import NamedCalc

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
