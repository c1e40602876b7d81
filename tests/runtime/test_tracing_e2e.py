"""A trace across the mesh, exported by the proxy over OTLP to a real OTLP
receiver (the official protobuf service: gRPC for Thrift, OTLP/HTTP for Dubbo).

A client calls service A through the proxy with its own ``traceparent``; A's handler calls B
through the proxy with the context it received (as an instrumented service does); B answers.
The proxy makes one CLIENT span per hop: the first the child of the client's span, the second
the child of the first (A forwarded what the proxy wrote), both in the client's trace; B
received the second span as its parent. Thrift: Apache THeader servers and client; Dubbo:
dubbo-py providers (the chain in tests/runtime/dubbopy_chain.py) and consumer."""

from __future__ import annotations

import socket
import sys
import threading
import types
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.transport import TSocket
from thrift.transport.THeaderTransport import THeaderClientType

from metamesh.runtime.tracing import TracingSettings, enable_tracing
from tests.codecs.dubbo import peers
from tests.codecs.thrift.apache_peer import ApacheServer, connect
from tests.runtime import mesh_config as mc
from tests.runtime.proxy_thread import ProxyThread
from tests.runtime.thrift_servers import NamedCalc
from tests.support.otlp import OtlpReceiver
from tests.support.ports import free_port

pytestmark = [pytest.mark.interop, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CONTEXT = f"00-{TRACE}-{CLIENT_SPAN}-01"
CHAIN = Path(__file__).with_name("dubbopy_chain.py")


class ChainCalc(NamedCalc):
    """Service A: ``echo(s)`` calls B's ``echo(s)`` through the mesh with the received
    ``traceparent`` and answers ``A>`` + B's answer."""

    def __init__(self, gen: types.ModuleType, next_port: int) -> None:
        super().__init__(gen, "A")
        self.gen, self.next_port = gen, next_port
        self.server: ChainServer | None = None

    def echo(self, s: str) -> str:
        assert self.server is not None
        received = self.server.current.proto.get_headers().get(b"traceparent", b"")
        sock = TSocket.TSocket("127.0.0.1", self.next_port)
        proto = THeaderProtocol(sock, (THeaderClientType.HEADERS,))
        sock.open()
        try:
            proto.set_header(b"traceparent", received)
            return f"A>{self.gen.Calc.Client(proto).echo(s)}"
        finally:
            sock.close()


class ChainServer(ApacheServer):
    """A THeader server whose handler can read the headers of the request it is serving."""

    def __init__(self, processor: Any) -> None:
        super().__init__(processor, "header", "binary")
        self.current = threading.local()

    def _serve(self, client: Any) -> None:
        proto = THeaderProtocol(client, (THeaderClientType.HEADERS,))
        self.current.proto = proto
        try:
            while not self._closed:
                self.processor.process(proto, proto)
        except Exception:  # the client closed
            pass
        client.close()


def traced_proxy(
    stack: ExitStack, codec: str, a: int, b: int, b_port: int, receiver: str, protocol: str
) -> ProxyThread:
    listener_b = mc.listener("b", codec, "b")
    listener_b["address"]["socket_address"]["port_value"] = b_port
    snap = mc.snapshot(
        [mc.listener("a", codec, "a"), listener_b],
        [mc.cluster("outbound|1||a.test", a), mc.cluster("outbound|1||b.test", b)],
        {
            "a": [mc.route("to-a", "outbound|1||a.test", method="~.*")],
            "b": [mc.route("to-b", "outbound|1||b.test", method="~.*")],
        },
    )
    proxy = stack.enter_context(ProxyThread(snap))
    server = proxy.server
    assert server is not None
    settings = TracingSettings(receiver, protocol, 0.0)  # sampled only by the client's flag
    proxy.call(enable_tracing, server, settings)
    return proxy


def check_trace(receiver: OtlpReceiver, proxy: ProxyThread, b_saw: str, protocol: str) -> None:
    server = proxy.server
    assert server is not None
    proxy.call(lambda: server.tracing.flush())  # type: ignore[union-attr]
    spans = [s for _, s in receiver.wait_for(2)]
    assert len(spans) == 2
    by_route = {
        next(a.value.string_value for a in s.attributes if a.key == "metamesh.route"): s
        for s in spans
    }
    first, second = by_route["to-a"], by_route["to-b"]
    for span in (first, second):
        assert span.trace_id.hex() == TRACE
        assert span.kind == span.SPAN_KIND_CLIENT
        attributes = {a.key: a.value for a in span.attributes}
        assert attributes["rpc.system"].string_value == protocol
        assert attributes["metamesh.response_code"].int_value == 0
        assert attributes["server.address"].string_value == "127.0.0.1"
        assert span.end_time_unix_nano > span.start_time_unix_nano
    assert first.parent_span_id.hex() == CLIENT_SPAN
    assert second.parent_span_id == first.span_id  # A forwarded the context the proxy wrote
    assert b_saw == f"00-{TRACE}-{second.span_id.hex()}-01"
    assert first.start_time_unix_nano <= second.start_time_unix_nano
    assert second.end_time_unix_nano <= first.end_time_unix_nano


def test_thrift_theader_trace_over_otlp_grpc(calc_gen: types.ModuleType) -> None:
    receiver = OtlpReceiver()
    b_port = free_port()
    with ExitStack() as stack:
        stack.callback(receiver.stop)
        b = stack.enter_context(
            ApacheServer(calc_gen.Calc.Processor(NamedCalc(calc_gen, "B")), "header", "binary")
        )
        handler = ChainCalc(calc_gen, b_port)
        a = stack.enter_context(ChainServer(calc_gen.Calc.Processor(handler)))
        handler.server = a
        proxy = traced_proxy(stack, "thrift", a.port, b.port, b_port, receiver.grpc_address, "grpc")
        with connect(calc_gen.Calc, "header", "binary", proxy.port("a")) as peer:
            peer.protocol.set_header(b"traceparent", CONTEXT.encode())
            assert peer.client.echo("x") == "A>B:x"
        [headers] = b.headers
        check_trace(receiver, proxy, headers[b"traceparent"].decode(), "thrift")


def test_dubbo_trace_over_otlp_http() -> None:
    from dubbo.client import DubboClient

    receiver = OtlpReceiver()
    b_port = free_port()
    with ExitStack() as stack:
        stack.callback(receiver.stop)
        b = peers.Peer([sys.executable, str(CHAIN), "0", "B"], CHAIN.parent)
        stack.callback(b.stop)
        a = peers.Peer(
            [sys.executable, str(CHAIN), "0", "A", "127.0.0.1", str(b_port)], CHAIN.parent
        )
        stack.callback(a.stop)
        proxy = traced_proxy(stack, "dubbo", a.port, b.port, b_port, receiver.http_address, "http")
        before = set(threading.enumerate())
        consumer: Any = DubboClient("127.0.0.1", proxy.port("a"), dubbo_version="2.0.2")
        receiver_thread = next(
            t for t in set(threading.enumerate()) - before if "_recv_loop" in t.name
        )
        try:
            reply = peers.dubbopy_call(
                consumer, "sayHello", "x", service_version="0.0.0", traceparent=CONTEXT
            )
        finally:
            consumer._sock.shutdown(socket.SHUT_RDWR)
            receiver_thread.join(5)
            consumer._sock.close()
        assert reply.status == 20, reply
        head, _, b_saw = reply.data.partition("|")
        assert head == "A>B:x"
        check_trace(receiver, proxy, b_saw, "dubbo")
