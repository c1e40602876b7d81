"""Real Envoy as an ADS client of metamesh's server: it ACKs our clusters and endpoints.

Each test runs twice: ``api_type: GRPC`` (state of the world) and ``DELTA_GRPC`` (incremental).

Envoy has no MetaProtocol filter, so the bootstrap takes only CDS (and, through the clusters,
EDS) over ADS. The server runs on its own event loop in a thread; Envoy (from ``.venv-envoy``,
installed by ``benchmarks/setup.sh``) runs in a new session with ``--concurrency 1`` and a
unique ``--base-id`` and is killed in teardown.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from metamesh.api import load_text
from metamesh.control.model import MeshModel, build_model
from metamesh.control.translate import CLUSTER_TYPE, ENDPOINT_TYPE, translate
from metamesh.xds.server import AdsServer
from tests.control.cases import DUBBO, EXAMPLES, THRIFT, example_model

pytestmark = pytest.mark.interop
ROOT = Path(__file__).resolve().parents[2]
NODE = "envoy-under-test"

BOOTSTRAP = """
node: {{id: {node}, cluster: metamesh-test}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: metamesh_xds}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: metamesh_xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: metamesh_xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""


def envoy_binary() -> Path:
    found = sorted(ROOT.glob(".venv-envoy/lib/python3*/site-packages/envoy/_bin/envoy"))
    assert found, "real Envoy missing: run scripts/setup.sh (it calls benchmarks/setup.sh)"
    return found[0]


class ServerThread:
    """An :class:`AdsServer` on its own event loop, driven from the test thread."""

    def __init__(self, model: MeshModel) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.call(lambda: AdsServer(translate, model, quiet=0.05, max_delay=0.5))
        self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def call(self, fn: Callable[[], Any]) -> Any:
        done: Future[Any] = Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except Exception as e:  # handed back to the test thread
                done.set_exception(e)

        self.loop.call_soon_threadsafe(run)
        return done.result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def ads() -> Iterator[ServerThread]:
    server = ServerThread(example_model())
    yield server
    server.close()


@pytest.fixture(params=["GRPC", "DELTA_GRPC"])
def api_type(request: pytest.FixtureRequest) -> str:
    """State-of-the-world or incremental ADS (``ads_config.api_type``)."""
    return str(request.param)


@pytest.fixture
def envoy(ads: ServerThread, api_type: str, tmp_path: Path) -> Iterator[str]:
    """Starts Envoy against ``ads``; yields its admin base URL."""
    config = tmp_path / "bootstrap.yaml"
    config.write_text(BOOTSTRAP.format(node=NODE, port=ads.port, api_type=api_type))
    admin_file = tmp_path / "admin-address"
    log = (tmp_path / "envoy.log").open("wb")
    base_id = 1_000_000 + (os.getpid() % 100_000) * 4 + (api_type == "DELTA_GRPC")
    proc = subprocess.Popen(
        [
            str(envoy_binary()),
            "-c",
            str(config),
            "--concurrency",
            "1",
            "--base-id",
            str(base_id),
            "--admin-address-path",
            str(admin_file),
            "-l",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: admin_file.exists() and admin_file.read_text().strip() != "", "admin")
        yield f"http://{admin_file.read_text().strip()}"
    finally:
        proc.kill()
        proc.wait(10)
        log.close()
        if proc.returncode not in (-9, 0):
            print((tmp_path / "envoy.log").read_text())


def admin_clusters(admin: str) -> str:
    with urllib.request.urlopen(f"{admin}/clusters", timeout=5) as response:
        text: str = response.read().decode()
        return text


def acked(ads: ServerThread, version: str) -> bool:
    status = ads.call(
        lambda: (
            ads.server.acked_version(NODE, CLUSTER_TYPE),
            ads.server.acked_version(NODE, ENDPOINT_TYPE),
        )
    )
    return bool(status == (version, version))


def model_from(*texts: str) -> MeshModel:
    protocols = (EXAMPLES / "application-protocols.yaml").read_text()
    resources = load_text("\n---\n".join((protocols, *texts)))
    assert not resources.problems
    return build_model(resources)


def changed_model() -> MeshModel:
    """Only the thrift service, with v1 moved to a new endpoint address."""
    return model_from((EXAMPLES / "thrift.yaml").read_text().replace("127.0.20.1", "127.0.20.9"))


def warming_clusters(admin: str) -> str:
    url = f"{admin}/config_dump?resource=dynamic_warming_clusters"
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


def test_envoy_acks_clusters_and_endpoints_then_a_new_version(
    ads: ServerThread, envoy: str, api_type: str
) -> None:
    wait_for(lambda: acked(ads, "1"), "Envoy to ACK CDS and EDS version 1")
    clusters = admin_clusters(envoy)
    for name, address in (
        (f"outbound|9090|v1|{THRIFT}", "127.0.20.1:19090"),
        (f"outbound|9090|v2|{THRIFT}", "127.0.20.2:19090"),
        (f"outbound|20880|v2|{DUBBO}", "127.0.20.4:20880"),
        (f"outbound|20880||{DUBBO}", "127.0.20.3:20880"),
    ):
        assert f"{name}::{address}::" in clusters
    assert ads.call(lambda: ads.server.nacks()) == []

    ads.call(lambda: ads.server.set_model(changed_model()))
    wait_for(lambda: acked(ads, "2"), "Envoy to ACK CDS and EDS version 2")
    wait_for(lambda: DUBBO not in admin_clusters(envoy), "Envoy to drop the dubbo clusters")
    clusters = admin_clusters(envoy)
    assert f"outbound|9090|v1|{THRIFT}::127.0.20.9:19090::" in clusters
    assert "127.0.20.1:19090" not in clusters
    status = ads.call(lambda: ads.server.status())[NODE]
    assert status[CLUSTER_TYPE]["nack"] is None and status[ENDPOINT_TYPE]["nack"] is None
    delta = api_type == "DELTA_GRPC"
    assert status[CLUSTER_TYPE]["delta"] is delta and status[ENDPOINT_TYPE]["delta"] is delta


def test_an_updated_cluster_gets_its_endpoints_again(ads: ServerThread, envoy: str) -> None:
    """Envoy re-warms a changed EDS cluster: the server resends its (unchanged) endpoints.

    Without that, Envoy would hold the new clusters warming, and the CDS ACK, until its
    initial fetch timeout, and EDS would never be ACKed at version 2.
    """
    wait_for(lambda: acked(ads, "1"), "Envoy to ACK CDS and EDS version 1")
    thrift = (EXAMPLES / "thrift.yaml").read_text()
    assert "connectTimeout: 500ms" in thrift
    slower = thrift.replace("connectTimeout: 500ms", "connectTimeout: 700ms")
    ads.call(
        lambda: ads.server.set_model(model_from((EXAMPLES / "dubbo.yaml").read_text(), slower))
    )
    wait_for(lambda: acked(ads, "2"), "Envoy to ACK CDS and EDS version 2")
    assert warming_clusters(envoy).strip() in ("", "{}")
    clusters = admin_clusters(envoy)
    assert f"outbound|9090|v1|{THRIFT}::127.0.20.1:19090::" in clusters
    assert f"outbound|20880|v2|{DUBBO}::127.0.20.4:20880::" in clusters
