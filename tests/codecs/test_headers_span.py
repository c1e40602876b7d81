"""``Codec.headers_span``: where a request's client-added headers can be, which is all the
tracer scans for trace header names (Dubbo: after the head; Thrift: THeader frames only)."""

from __future__ import annotations

import pytest

from metamesh.codecs import Message
from metamesh.codecs.dubbo import DubboCodec
from metamesh.codecs.thrift import ThriftCodec
from metamesh.proxy.tracing import MARKER
from tests.codecs.dubbo import frames as dubbo
from tests.codecs.thrift import wire

CONTEXT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def scanned(message: Message, start: int, end: int) -> bool:
    return start < end and message.frame.find(MARKER, start, end) >= 0


def test_dubbo_attachments_are_scanned_the_head_is_not() -> None:
    traced = DubboCodec().decode(bytearray(dubbo.request(attachments={"traceparent": CONTEXT})))
    assert traced is not None
    start, end = DubboCodec().headers_span(traced)
    assert 16 < start < end == len(traced.frame) and scanned(traced, start, end)
    named = dubbo.request(interface="com.example.tracer", attachments={"path": "svc"})
    message = DubboCodec().decode(bytearray(named))
    assert message is not None and MARKER in message.frame  # in the service name only
    assert not scanned(message, *DubboCodec().headers_span(message))


@pytest.mark.parametrize(
    ("transport", "protocol"),
    [("framed", "binary"), ("unframed", "binary"), ("framed", "compact"), ("unframed", "compact")],
)
def test_thrift_without_theader_has_no_headers(transport: str, protocol: str) -> None:
    codec = ThriftCodec()
    message = codec.decode(bytearray(wire.frame(transport, protocol, name="traceAdd")))
    assert message is not None
    start, end = codec.headers_span(message)
    assert start >= end  # nothing to scan, whatever the method is called


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_thrift_theader_headers_are_scanned(protocol: str) -> None:
    codec = ThriftCodec()
    data = wire.frame("header", protocol, headers={b"traceparent": CONTEXT.encode()})
    message = codec.decode(bytearray(data))
    assert message is not None
    assert scanned(message, *codec.headers_span(message))
    assert message.metadata["traceparent"] == CONTEXT
