"""Protocol selection from a port name, as Aeraki's port-name convention defines it."""

from __future__ import annotations

import pytest

from metamesh.api import (
    ApplicationProtocol,
    PortProtocol,
    PortProtocolError,
    application_codecs,
    protocol_for_port,
)

APPS = {"dubbo": "dubbo", "thrift": "thrift", "brpc": "brpc"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("tcp-metaprotocol-dubbo", PortProtocol("metaprotocol", "dubbo", "dubbo")),
        ("tcp-metaprotocol-thrift-hello-server", PortProtocol("metaprotocol", "thrift", "thrift")),
        ("tcp-metaprotocol-brpc-9000", PortProtocol("metaprotocol", "brpc", "brpc")),
        ("tcp-MetaProtocol-dubbo", PortProtocol("metaprotocol", "dubbo", "dubbo")),
        ("tcp-dubbo", PortProtocol("dubbo")),
        ("tcp-thrift-x", PortProtocol("thrift")),
        ("tcp-redis", PortProtocol("redis")),
        ("tcp-kafka", PortProtocol("kafka")),
        ("tcp-zookeeper", PortProtocol("zookeeper")),
        ("tcp-mongo", PortProtocol("mongo")),
        ("http", None),
        ("http-web", None),
        ("tcp", None),
        ("", None),
    ],
)
def test_protocol_for_port(name: str, expected: PortProtocol | None) -> None:
    assert protocol_for_port(name, APPS) == expected


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("tcp-metaprotocol", "names no application protocol"),
        ("tcp-metaprotocol-", "names no application protocol"),
        ("tcp-metaprotocol-Dubbo", "'Dubbo', which no ApplicationProtocol"),
        ("tcp-metaprotocol-trpc-1", "'trpc', which no ApplicationProtocol"),
    ],
)
def test_unresolvable_metaprotocol_ports(name: str, fragment: str) -> None:
    with pytest.raises(PortProtocolError, match=fragment):
        protocol_for_port(name, APPS)


def test_application_codecs_table() -> None:
    ap = ApplicationProtocol.model_validate(
        {
            "apiVersion": "metaprotocol.aeraki.io/v1alpha1",
            "kind": "ApplicationProtocol",
            "metadata": {"name": "trpc"},
            "spec": {"protocol": "trpc", "codec": "aeraki.meta_protocol.codec.trpc"},
        }
    )
    table = application_codecs([ap])
    assert table == {"dubbo": "dubbo", "thrift": "thrift", "trpc": "trpc"}
    assert protocol_for_port("tcp-metaprotocol-trpc", table) == PortProtocol(
        "metaprotocol", "trpc", "trpc"
    )
