"""Dubbo provider znodes -> ServiceEntries (control/sources/dubbo_registry.py), table-tested.

The provider names are the three real registrations metamesh meets: Dubbo 2.7's (URL-encoded
with ``URLEncoder``, parameters sorted), sofa-rpc-node's ZooKeeper registry (no path, custom
metadata) and dubbo-py's ``DubboService.register`` (``quote_plus``, and its missing ``&`` before
``group``), plus garbage.
"""

from __future__ import annotations

from urllib.parse import quote, quote_plus

import pytest

from metamesh.api.istio import ServiceEntry
from metamesh.api.references import check_references
from metamesh.api.validate import check_resources
from metamesh.control.model import build_model
from metamesh.control.sources.dubbo_registry import (
    PORT_NAME,
    UnusableProvider,
    interface_services,
    parse_provider,
    provider_labels,
    service_host,
)
from tests.control.zookeeper_server import dubbo27_provider_node, dubbo27_provider_url

IFACE = "org.apache.dubbo.demo.DemoService"
HOST = "org.apache.dubbo.demo.demoservice"
ORIGIN = f"zookeeper://127.0.0.1:2181/dubbo/{IFACE}/providers"

SOFA = quote(
    "dubbo://127.0.0.1:39521?startTime=1796480478551&pid=21256&uniqueId=&dynamic=true"
    "&appName=demo-v1&timeout=3000&serialization=hessian2&weight=100&accepts=100000"
    f"&language=nodejs&rpcVer=50400&protocol=dubbo&interface={IFACE}&version=0.0.0&group="
    "&aeraki_meta_app_version=v1",
    safe="",
)
DUBBO_PY = quote_plus(
    f"dubbo://127.0.0.1:20881/{IFACE}?anyhost=true&application=demo-provider&dubbo=2.0.2"
    f"&interface={IFACE}&methods=sayHello,echo&pid=1&revision=1.0.0&side=provider"
    "&timestamp=1700000000001&version=1.0.0"
)


def entries(nodes: list[str], **kwargs: object) -> list[ServiceEntry]:
    result = interface_services(ORIGIN, IFACE, nodes, namespace="dubbo", **kwargs)  # type: ignore[arg-type]
    return result.resources.of_kind(ServiceEntry)


def test_dubbo27_registration_becomes_a_service_named_after_the_interface() -> None:
    node = dubbo27_provider_node(IFACE, "10.0.0.7", 20880, version="1.0.0", weight="50")
    [se] = entries([node])
    assert se.name == "zk-org-apache-dubbo-demo-demoservice" and se.namespace == "dubbo"
    assert se.spec.hosts == [HOST] and se.spec.addresses == []  # the model allocates one
    assert [(p.number, p.name) for p in se.spec.ports] == [(20880, PORT_NAME)]
    [endpoint] = se.spec.endpoints
    assert endpoint.address == "10.0.0.7" and endpoint.ports == {PORT_NAME: 20880}
    assert endpoint.weight == 50
    labels = endpoint.labels
    assert labels["version"] == "1.0.0" and labels["side"] == "provider"
    assert labels["application"] == "demo-provider" and labels["weight"] == "50"
    assert labels["methods"] == "sayHello-sayHelloAsync"  # ',' is not a label character
    assert se.metadata.annotations == {"metamesh.io/dubbo-interface": IFACE}


def test_every_registration_style_parses() -> None:
    sofa = parse_provider(SOFA, IFACE)
    assert (sofa.address, sofa.port, sofa.param("appName")) == ("127.0.0.1", 39521, "demo-v1")
    assert provider_labels(sofa)["version"] == "v1"  # aeraki_meta_app_version wins
    assert "group" not in provider_labels(sofa)  # empty values are left out
    py = parse_provider(DUBBO_PY, IFACE)
    assert (py.port, py.param("version"), py.param("methods")) == (20881, "1.0.0", "sayHello,echo")
    dubbo27 = parse_provider(dubbo27_provider_node(IFACE, "[::1]", 20880), IFACE)
    assert dubbo27.address == "::1"


def test_metamesh_parameters_set_labels() -> None:
    node = dubbo27_provider_node(IFACE, "10.0.0.7", 20880, **{"metamesh.zone": "a", "version": "2"})
    labels = provider_labels(parse_provider(node, IFACE))
    assert labels["zone"] == "a" and labels["version"] == "2"


@pytest.mark.parametrize(
    ("node", "reason", "malformed"),
    [
        ("garbage", "not a provider URL", True),
        (quote_plus("dubbo://127.0.0.1:notaport/x"), "not a provider URL", True),
        (quote_plus("dubbo://127.0.0.1/x"), "no port", True),
        (quote_plus("dubbo://provider.example:20880/x"), "is not an IP address", True),
        (quote_plus(f"dubbo://0.0.0.0:20880/{IFACE}"), "not an address to connect to", True),
        (quote_plus("dubbo://127.0.0.1:1/com.Other"), "names interface com.Other", True),
        (quote_plus(f"tri://127.0.0.1:50051/{IFACE}"), "tri:// is not Dubbo", False),
        (quote_plus(f"dubbo://127.0.0.1:1/{IFACE}?enabled=false"), "enabled=false", False),
        (quote_plus(f"dubbo://127.0.0.1:1/{IFACE}?category=routers"), "category=routers", False),
    ],
)
def test_unusable_providers_say_why(node: str, reason: str, malformed: bool) -> None:
    with pytest.raises(UnusableProvider) as caught:
        parse_provider(node, IFACE)
    assert reason in caught.value.reason and caught.value.malformed is malformed
    result = interface_services(ORIGIN, IFACE, [node], namespace="dubbo")
    assert [(s.node, s.malformed) for s in result.skipped] == [(node, malformed)]
    assert result.providers == 0 and result.hosts == (HOST,)  # the service stays, empty


def test_one_service_per_group_and_the_groups_stay_after_their_providers_leave() -> None:
    nodes = [
        dubbo27_provider_node(IFACE, "10.0.0.1", 20880, group="Blue"),
        dubbo27_provider_node(IFACE, "10.0.0.2", 20880),
    ]
    result = interface_services(ORIGIN, IFACE, nodes, namespace="dubbo")
    assert result.hosts == (HOST, f"{HOST}-blue") and result.groups == {"", "Blue"}
    later = interface_services(ORIGIN, IFACE, [], namespace="dubbo", known_groups=result.groups)
    assert later.hosts == result.hosts
    empty = later.resources.of_kind(ServiceEntry)
    assert all(not se.spec.endpoints and se.spec.resolution == "NONE" for se in empty)
    assert check_resources(later.resources) == []  # STATIC would need endpoints
    assert set(build_model(later.resources).services) == {HOST, f"{HOST}-blue"}
    assert service_host("com.acme.My_Svc$Inner", "g 1") == "com.acme.my-svc-inner-g-1"


def test_a_provider_restarted_on_its_port_is_one_endpoint_the_latest() -> None:
    old = dubbo27_provider_node(IFACE, "10.0.0.1", 20880, timestamp="1", version="v1")
    new = dubbo27_provider_node(IFACE, "10.0.0.1", 20880, timestamp="2", version="v2")
    [se] = entries([new, old])
    assert [e.labels["version"] for e in se.spec.endpoints] == ["v2"]


def test_service_port_is_configurable_and_each_endpoint_keeps_its_own_port() -> None:
    nodes = [
        dubbo27_provider_node(IFACE, "10.0.0.1", 20001),
        dubbo27_provider_node(IFACE, "10.0.0.2", 20002),
    ]
    [se] = entries(nodes, service_port=30880)
    assert se.spec.ports[0].number == 30880
    assert [e.ports[PORT_NAME] for e in se.spec.endpoints] == [20001, 20002]


def test_the_entries_validate_and_build_a_dubbo_service_with_an_allocated_address() -> None:
    nodes = [SOFA, DUBBO_PY, dubbo27_provider_node(IFACE, "10.0.0.7", 20880)]
    result = interface_services(ORIGIN, IFACE, nodes, namespace="dubbo")
    assert check_resources(result.resources) == [] and check_references(result.resources) == []
    model = build_model(result.resources)
    assert model.problems == ()
    service = model.services[HOST]
    assert service.allocated_address and service.addresses[0].startswith("127.240.")
    assert service.ports[0].codec == "dubbo" and len(service.endpoints) == 3


def test_dubbo27_url_helper_matches_the_documented_example() -> None:
    url = dubbo27_provider_url(IFACE, "10.0.0.7", 20880)
    assert url.startswith(f"dubbo://10.0.0.7:20880/{IFACE}?anyhost=true&application=")
    assert dubbo27_provider_node(IFACE, "10.0.0.7", 20880).startswith("dubbo%3A%2F%2F10.0.0.7")
