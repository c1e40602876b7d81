"""``Codec.carries_headers``: whether a connection's requests can carry client-added headers,
which decides whether the tracer scans their frames for trace header names at all (Thrift:
THeader only; Dubbo: always, its attachments)."""

from __future__ import annotations

import pytest

from metamesh.codecs.dubbo import DubboCodec
from metamesh.codecs.thrift import ThriftCodec
from tests.codecs.dubbo import frames as dubbo
from tests.codecs.thrift import wire

CONTEXT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_dubbo_requests_carry_attachments() -> None:
    codec = DubboCodec()
    message = codec.decode(bytearray(dubbo.request(attachments={"traceparent": CONTEXT})))
    assert message is not None and codec.carries_headers
    assert message.metadata["traceparent"] == CONTEXT


@pytest.mark.parametrize(
    ("transport", "protocol"),
    [("framed", "binary"), ("unframed", "binary"), ("framed", "compact"), ("unframed", "compact")],
)
def test_thrift_without_theader_carries_no_headers(transport: str, protocol: str) -> None:
    codec = ThriftCodec()
    assert codec.decode(bytearray(wire.frame(transport, protocol, name="traceAdd"))) is not None
    assert not codec.carries_headers  # never scanned, whatever the method is called
    upstream = ThriftCodec()
    upstream.expect_variant(codec.wire_variant)  # the upstream side learns it from the client
    assert not upstream.carries_headers


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_thrift_theader_carries_headers(protocol: str) -> None:
    codec = ThriftCodec()
    data = wire.frame("header", protocol, headers={b"traceparent": CONTEXT.encode()})
    message = codec.decode(bytearray(data))
    assert message is not None and codec.carries_headers
    assert message.metadata["traceparent"] == CONTEXT
