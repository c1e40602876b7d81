"""The sample manifests under examples/mesh validate clean and say what they claim."""

from __future__ import annotations

from pathlib import Path

from metamesh.api import MetaRouter, ServiceEntry, load_paths, protocol_for_port, validate
from metamesh.api.protocol import application_codecs

MESH = Path(__file__).resolve().parents[2] / "examples" / "mesh"


def test_sample_set_validates_clean() -> None:
    resources = load_paths([MESH])
    assert [p.format() for p in validate(resources)] == []
    assert len(resources.of_kind(ServiceEntry)) == 2 and len(resources.of_kind(MetaRouter)) == 2


def test_sample_ports_select_dubbo_and_thrift_codecs() -> None:
    resources = load_paths([MESH])
    table = application_codecs([])
    codecs = set()
    for se in resources.of_kind(ServiceEntry):
        assert se.spec.addresses[0].startswith("127.0.10.")
        for port in se.spec.ports:
            protocol = protocol_for_port(port.name, table)
            assert protocol is not None
            codecs.add(protocol.codec)
    assert codecs == {"dubbo", "thrift"}


def test_sample_routers_have_a_method_route_and_a_20_80_split() -> None:
    for router in load_paths([MESH]).of_kind(MetaRouter):
        first, second = router.spec.routes[:2]
        assert first.match is not None and "method" in first.match.attributes
        assert [
            (d.destination.subset if d.destination else None, d.weight) for d in second.route
        ] == [
            ("v1", 20),
            ("v2", 80),
        ]
