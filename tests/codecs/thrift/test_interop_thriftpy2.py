"""Real thriftpy2 client -> relay (ThriftCodec) -> real thriftpy2 server.

thriftpy2 loads the same IDL at runtime (no compiler) and is an independent implementation of
the wire format, so it checks the codec against a second reading of the spec.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import types
from collections.abc import Iterator

import pytest
import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.server import TThreadedServer
from thriftpy2.thrift import TApplicationException, TProcessor
from thriftpy2.transport import (
    TBufferedTransportFactory,
    TFramedTransportFactory,
    TServerSocket,
)

from metamesh.codecs import ErrorKind, LocalError, Message, MessageType, ResponseStatus
from metamesh.codecs.thrift import ThriftCodec
from tests.codecs.thrift.apache_peer import IDL, CalcHandler
from tests.support.relay import Relay

pytestmark = pytest.mark.interop

_FACTORIES = {
    ("framed", "binary"): (TFramedTransportFactory, TBinaryProtocolFactory),
    ("buffered", "compact"): (TBufferedTransportFactory, TCompactProtocolFactory),
    ("framed", "compact"): (TFramedTransportFactory, TCompactProtocolFactory),
    ("buffered", "binary"): (TBufferedTransportFactory, TBinaryProtocolFactory),
}


@pytest.fixture(scope="module")
def calc_idl() -> types.ModuleType:
    return thriftpy2.load(str(IDL), module_name="metamesh_calc_tp2_thrift")


class _Handler(CalcHandler):
    """The Apache peer's Calc handler; thriftpy2 keeps the declared exception on the IDL module."""

    def fail(self, code: int) -> int:
        raise self._gen.CalcError(code=code, message="boom")


@contextlib.contextmanager
def _server(idl: types.ModuleType, transport: str, protocol: str) -> Iterator[tuple[_Handler, int]]:
    tf, pf = _FACTORIES[(transport, protocol)]
    handler = _Handler(idl)
    # make_server() refuses port 0, so assemble the same server by hand on an ephemeral port
    server = TThreadedServer(
        TProcessor(idl.Calc, handler),
        TServerSocket(host="127.0.0.1", port=0),
        iprot_factory=pf(),
        itrans_factory=tf(),
        daemon=True,
    )
    server.trans.listen()
    server.trans.listen = lambda: None  # serve() calls listen() again; we already bound
    port = server.trans.sock.getsockname()[1]
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield handler, port
    finally:
        server.close()
        with contextlib.suppress(OSError):
            server.trans.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        server.trans.close()
        thread.join(timeout=5)


@pytest.mark.parametrize(("transport", "protocol"), list(_FACTORIES))
def test_thriftpy2_through_relay(calc_idl: types.ModuleType, transport: str, protocol: str) -> None:
    tf, pf = _FACTORIES[(transport, protocol)]

    def policy(m: Message) -> LocalError | None:
        if m.metadata["method"] == "echo":
            return LocalError(ErrorKind.ROUTE_NOT_FOUND, "denied by metamesh")
        return None

    with (
        _server(calc_idl, transport, protocol) as (handler, port),
        Relay(ThriftCodec, ("127.0.0.1", port), on_request=policy) as relay,
    ):
        client = make_client(
            calc_idl.Calc, "127.0.0.1", relay.port, proto_factory=pf(), trans_factory=tf()
        )
        try:
            assert client.add(2, 40) == 42
            assert client.addPair(calc_idl.Pair(a=1, b=2)) == 3
            with pytest.raises(calc_idl.CalcError) as info:
                client.fail(5)
            assert info.value.code == 5
            with pytest.raises(TApplicationException) as app:
                client.echo("x")
            assert (app.value.type, app.value.message) == (
                TApplicationException.UNKNOWN_METHOD,
                "denied by metamesh",
            )
            client.fire("y")
            client.ping()
        finally:
            client.close()
        assert handler.fired == ["y"]
    assert relay.errors == []
    assert [(m.metadata["method"], m.type) for m in relay.requests] == [
        ("add", MessageType.REQUEST),
        ("addPair", MessageType.REQUEST),
        ("fail", MessageType.REQUEST),
        ("echo", MessageType.REQUEST),
        ("fire", MessageType.ONEWAY),
        ("ping", MessageType.REQUEST),
    ]
    assert [m.status for m in relay.responses] == [
        ResponseStatus.OK,
        ResponseStatus.OK,
        ResponseStatus.BUSINESS_EXCEPTION,
        ResponseStatus.OK,
    ]
