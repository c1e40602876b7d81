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


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerThread, EnvoyNode]]:
    ads = ServerThread(MeshModel())
    envoy = EnvoyNode(ads.port, tmp_path, NODE)
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
