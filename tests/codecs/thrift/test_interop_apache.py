"""Real Apache Thrift client -> relay (ThriftCodec) -> real Apache Thrift server.

For every transport x protocol pair the real peers understand (framed, buffered and THeader x
binary and compact, plus non-strict binary), calls go through the codec-driven relay and the
tests check both what the client gets and what the codec recorded from the real frames.
"""

from __future__ import annotations

import itertools
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from thrift.Thrift import TApplicationException
from thrift.TMultiplexedProcessor import TMultiplexedProcessor
from thrift.transport.THeaderTransport import THeaderTransformID

from metamesh.codecs import (
    Codec,
    ErrorKind,
    LocalError,
    Message,
    MessageType,
    Mutation,
    ResponseStatus,
)
from metamesh.codecs.thrift import ThriftCodec
from metamesh.codecs.thrift import header as theader
from tests.codecs.thrift.apache_peer import (
    FLAVOURS,
    ApacheServer,
    CalcHandler,
    GreeterHandler,
    connect,
)
from tests.support.relay import Relay, RequestPolicy

pytestmark = pytest.mark.interop


@contextmanager
def calc_stack(
    gen: types.ModuleType,
    transport: str,
    protocol: str,
    on_request: RequestPolicy = lambda _m: None,
    response_mutation: Mutation | None = None,
    codec_factory: Callable[[], Codec] | None = None,
) -> Iterator[tuple[CalcHandler, ApacheServer, Relay]]:
    handler = CalcHandler(gen)
    processor = gen.Calc.Processor(handler)
    with (
        ApacheServer(processor, transport, protocol) as server,
        Relay(
            codec_factory or ThriftCodec,
            ("127.0.0.1", server.port),
            on_request=on_request,
            response_mutation=response_mutation,
        ) as relay,
    ):
        yield handler, server, relay


def _call_everything(c: Any, gen: types.ModuleType) -> None:
    assert c.ping() is None
    assert c.add(2, 40) == 42
    assert c.echo("h\u00e9llo") == "h\u00e9llo"
    assert c.addPair(gen.ttypes.Pair(a=3, b=4)) == 7
    with pytest.raises(gen.ttypes.CalcError) as info:
        c.fail(7)
    assert info.value.code == 7
    c.fire("x")
    assert c.ping() is None


@pytest.mark.parametrize(("transport", "protocol"), FLAVOURS)
def test_calls_through_relay(calc_gen: types.ModuleType, transport: str, protocol: str) -> None:
    with calc_stack(calc_gen, transport, protocol) as (handler, _server, relay):
        with connect(calc_gen.Calc, transport, protocol, relay.port, seqid=41) as peer:
            _call_everything(peer.client, calc_gen)
        assert handler.fired == ["x"]
    assert relay.errors == []
    requests = [(m.metadata["method"], m.type, m.request_id) for m in relay.requests]
    calls = ["ping", "add", "echo", "addPair", "fail", "fire", "ping"]
    assert [r[0] for r in requests] == calls
    assert [r[1] for r in requests] == [MessageType.REQUEST] * 5 + [
        MessageType.ONEWAY,
        MessageType.REQUEST,
    ]
    assert {r[2] for r in requests} == {41}
    responses = [(m.metadata["method"], m.type, m.status) for m in relay.responses]
    ok, declared = ResponseStatus.OK, ResponseStatus.BUSINESS_EXCEPTION
    assert responses == [
        ("ping", MessageType.RESPONSE, ok),
        ("add", MessageType.RESPONSE, ok),
        ("echo", MessageType.RESPONSE, ok),
        ("addPair", MessageType.RESPONSE, ok),
        ("fail", MessageType.RESPONSE, declared),
        ("ping", MessageType.RESPONSE, ok),
    ]
    assert all(m.request_id == 41 for m in relay.responses)


@pytest.mark.parametrize(("transport", "protocol"), [("framed", "binary"), ("header", "compact")])
def test_multiplexed_services(calc_gen: types.ModuleType, transport: str, protocol: str) -> None:
    processor = TMultiplexedProcessor()
    processor.registerProcessor("Calc", calc_gen.Calc.Processor(CalcHandler(calc_gen)))
    processor.registerProcessor("Greeter", calc_gen.Greeter.Processor(GreeterHandler()))
    with (
        ApacheServer(processor, transport, protocol) as server,
        Relay(ThriftCodec, ("127.0.0.1", server.port)) as relay,
    ):
        with connect(calc_gen.Calc, transport, protocol, relay.port, "Calc") as calc:
            assert calc.client.add(1, 2) == 3
        with connect(calc_gen.Greeter, transport, protocol, relay.port, "Greeter") as greeter:
            assert greeter.client.greet("bob") == "hello bob"
    assert relay.errors == []
    assert [m.metadata for m in relay.requests] == [
        {"service": "Calc", "method": "add", "full_method": "Calc:add"},
        {"service": "Greeter", "method": "greet", "full_method": "Greeter:greet"},
    ]


@pytest.mark.parametrize(("transport", "protocol"), FLAVOURS)
@pytest.mark.parametrize(
    ("kind", "app_type"),
    [
        (ErrorKind.ROUTE_NOT_FOUND, TApplicationException.UNKNOWN_METHOD),
        (ErrorKind.NO_HEALTHY_UPSTREAM, TApplicationException.INTERNAL_ERROR),
    ],
)
def test_error_reply_reaches_real_client(
    calc_gen: types.ModuleType, transport: str, protocol: str, kind: ErrorKind, app_type: int
) -> None:
    def policy(m: Message) -> LocalError | None:
        if m.metadata["method"] == "echo":
            return LocalError(kind, "metamesh: no route for echo")
        return None

    with (
        calc_stack(calc_gen, transport, protocol, on_request=policy) as (_h, _s, relay),
        connect(calc_gen.Calc, transport, protocol, relay.port, seqid=9) as peer,
    ):
        with pytest.raises(TApplicationException) as info:
            peer.client.echo("x")
        assert (info.value.type, info.value.message) == (app_type, "metamesh: no route for echo")
        assert peer.seqids_read == [9]
        # the same connection keeps working
        assert peer.client.add(5, 6) == 11
    assert relay.errors == []


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_header_mutation_and_client_headers(calc_gen: types.ModuleType, protocol: str) -> None:
    policy: RequestPolicy = lambda _m: {"x-mesh": "on", "x-user": "bob"}  # noqa: E731
    with (
        calc_stack(
            calc_gen, "header", protocol, on_request=policy, response_mutation={"x-resp": "1"}
        ) as (_h, server, relay),
        connect(calc_gen.Calc, "header", protocol, relay.port) as peer,
    ):
        peer.protocol.set_header(b"x-user", b"alice")
        peer.protocol.set_header(b"x-trace", b"t-1")
        assert peer.client.add(1, 1) == 2
        assert peer.protocol.get_headers() == {b"x-resp": b"1"}
        assert peer.client.echo("again") == "again"
    assert relay.errors == []
    # the client's headers reached the codec as metadata
    assert relay.requests[0].metadata["x-user"] == "alice"
    assert relay.requests[0].metadata["x-trace"] == "t-1"
    assert relay.requests[0].metadata["method"] == "add"
    # and the relay's mutation reached the real server (replacing x-user, keeping x-trace)
    assert server.headers[0] == {b"x-user": b"bob", b"x-trace": b"t-1", b"x-mesh": b"on"}
    assert server.headers[1] == {b"x-user": b"bob", b"x-mesh": b"on"}


@pytest.mark.parametrize(("transport", "protocol"), [f for f in FLAVOURS if f[0] != "header"])
def test_mutation_dropped_without_headers(
    calc_gen: types.ModuleType, transport: str, protocol: str
) -> None:
    codecs: list[ThriftCodec] = []

    def counting() -> ThriftCodec:
        codec = ThriftCodec()
        codecs.append(codec)
        return codec

    with (
        calc_stack(
            calc_gen, transport, protocol, on_request=lambda _m: {"x": "y"}, codec_factory=counting
        ) as (_h, _s, relay),
        connect(calc_gen.Calc, transport, protocol, relay.port) as peer,
    ):
        assert peer.client.add(2, 2) == 4
    assert sum(c.dropped_mutations for c in codecs) == 1


class _IdMap:
    """Shared by a connection's two codec instances: proxy id -> client id."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[int, int] = {}
        # ids that change the compact varint length and cross the i32 sign boundary
        self.next_ids = itertools.cycle([2**31 + 17, 300, 2**32 - 1, 0, 70_000])
        self.upstream_ids: list[int] = []


class _Remapping(Codec):
    """A Thrift codec whose ``encode`` sends the message under an id from ``ids``.

    Wraps a :class:`ThriftCodec` rather than subclassing it: the native (mypyc) build keeps
    the concrete codecs closed to Python subclasses. With ``mutate`` the request mutation is
    applied to the re-decoded, rewritten frame; without it mutations are ignored.
    """

    name = "thrift"
    request_id_bits = 32

    def __init__(self, ids: _IdMap, mutate: bool = False) -> None:
        super().__init__()
        self.inner = ThriftCodec()
        self.ids = ids
        self.mutate = mutate

    def decode(self, buffer: bytearray) -> Message | None:
        return self.inner.decode(buffer)

    def error_reply(self, request: Message, error: LocalError) -> bytes:
        return self.inner.error_reply(request, error)

    def encode(self, message: Message, mutation: Mutation | None = None) -> bytes:
        ids = self.ids
        assert message.request_id is not None
        with ids.lock:
            if message.is_request:
                new = next(ids.next_ids)
                ids.pending[new] = message.request_id
                ids.upstream_ids.append(new)
            else:
                new = ids.pending.pop(message.request_id)
        rewritten = self.inner.rewrite_request_id(message, new)
        if not (self.mutate and mutation):
            return rewritten
        again = ThriftCodec().decode(bytearray(rewritten))
        assert again is not None
        return ThriftCodec().encode(again, mutation)


@pytest.mark.parametrize(("transport", "protocol"), FLAVOURS)
def test_rewrite_request_id_round_trip(
    calc_gen: types.ModuleType, transport: str, protocol: str
) -> None:
    ids = _IdMap()
    with (
        calc_stack(calc_gen, transport, protocol, codec_factory=lambda: _Remapping(ids)) as (
            _h,
            _s,
            relay,
        ),
        connect(calc_gen.Calc, transport, protocol, relay.port, seqid=1234) as peer,
    ):
        assert peer.client.add(20, 22) == 42
        assert peer.client.echo("abc") == "abc"
        with pytest.raises(calc_gen.ttypes.CalcError):
            peer.client.fail(3)
        assert peer.client.add(1, 2) == 3
        assert peer.seqids_read == [1234] * 4
    assert relay.errors == []
    # the server saw (and answered with) the rewritten ids
    assert [m.request_id for m in relay.responses] == ids.upstream_ids
    assert ids.upstream_ids == [2**31 + 17, 300, 2**32 - 1, 0]
    assert ids.pending == {}


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_header_zlib_client_with_mutation_and_id_rewrite(
    calc_gen: types.ModuleType, protocol: str
) -> None:
    ids = _IdMap()
    with (
        calc_stack(
            calc_gen,
            "header",
            protocol,
            on_request=lambda _m: {"x-mesh": "zlib"},
            codec_factory=lambda: _Remapping(ids, mutate=True),
        ) as (_h, server, relay),
        connect(calc_gen.Calc, "header", protocol, relay.port, seqid=77) as peer,
    ):
        peer.protocol.add_transform(THeaderTransformID.ZLIB)
        peer.protocol.set_header(b"x-user", b"zed")
        assert peer.client.echo("compressed " * 50) == "compressed " * 50
        assert peer.client.add(3, 4) == 7
        assert peer.seqids_read == [77, 77]
    assert relay.errors == []
    assert theader.transform_count(relay.requests[0].frame) == 1  # the client did compress
    assert relay.requests[0].metadata["x-user"] == "zed"
    assert relay.requests[0].metadata["method"] == "echo"
    assert server.headers[0] == {b"x-user": b"zed", b"x-mesh": b"zlib"}
    assert [m.request_id for m in relay.responses] == ids.upstream_ids[:2]
