"""Real Apache Thrift peers for the interop tests: code generation, a server, clients.

The IDL (``tests/peers/thrift/calc.thrift``) is compiled with the ``thrift`` compiler (apt
``thrift-compiler``) into a temporary directory at test time. The server runs Apache's own
processors (plain and multiplexed) over Apache's transports and protocols, one thread per
connection, on 127.0.0.1 with an ephemeral port. Its accept loop is ours only so that it stops
cleanly when the test ends (Apache's ``TThreadedServer`` has no stop).
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import socket
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thrift.protocol.TBinaryProtocol import (
    TBinaryProtocol,
    TBinaryProtocolAccelerated,
    TBinaryProtocolAcceleratedFactory,
    TBinaryProtocolFactory,
)
from thrift.protocol.TCompactProtocol import (
    TCompactProtocolAccelerated,
    TCompactProtocolAcceleratedFactory,
)
from thrift.protocol.THeaderProtocol import THeaderProtocol, THeaderProtocolFactory
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.transport import TSocket
from thrift.transport.THeaderTransport import THeaderClientType, THeaderSubprotocolID
from thrift.transport.TTransport import (
    TBufferedTransport,
    TBufferedTransportFactory,
    TFramedTransport,
    TFramedTransportFactory,
    TTransportBase,
    TTransportException,
    TTransportFactoryBase,
)

from tests.support.thread_group import ThreadGroup

IDL = Path(__file__).resolve().parents[2] / "peers" / "thrift" / "calc.thrift"

#: (transport, protocol) pairs a real client and server can both speak.
FLAVOURS = [
    ("framed", "binary"),
    ("framed", "compact"),
    ("buffered", "binary"),
    ("buffered", "compact"),
    ("header", "binary"),
    ("header", "compact"),
    ("framed", "binary-nonstrict"),
    ("buffered", "binary-nonstrict"),
]


def generate(out_dir: Path) -> types.ModuleType:
    """Compile the IDL with ``thrift --gen py`` and import the generated package."""
    compiler = shutil.which("thrift")
    if compiler is None:
        raise RuntimeError("the thrift compiler is missing: apt-get install thrift-compiler")
    subprocess.run([compiler, "--gen", "py", "-out", str(out_dir), str(IDL)], check=True)
    sys.path.insert(0, str(out_dir))
    package = importlib.import_module("metamesh_calc")
    for name in ("Calc", "Greeter", "ttypes"):
        importlib.import_module(f"metamesh_calc.{name}")
    return package


class CalcHandler:
    """The Calc service: plain arithmetic, an echo, a declared exception and a oneway call."""

    def __init__(self, gen: types.ModuleType) -> None:
        self._gen = gen
        self.fired: list[str] = []

    def ping(self) -> None:
        return None

    def add(self, a: int, b: int) -> int:
        return a + b

    def echo(self, s: str) -> str:
        return s

    def addPair(self, p: Any) -> int:
        return int(p.a + p.b)

    def fail(self, code: int) -> int:
        raise self._gen.ttypes.CalcError(code=code, message="boom")

    def fire(self, s: str) -> None:
        self.fired.append(s)


class GreeterHandler:
    def greet(self, name: str) -> str:
        return f"hello {name}"


def _server_factories(transport: str, protocol: str) -> tuple[Any, Any]:
    if transport == "header":
        sub = THeaderSubprotocolID.COMPACT if protocol == "compact" else THeaderSubprotocolID.BINARY
        return TTransportFactoryBase(), THeaderProtocolFactory((THeaderClientType.HEADERS,), sub)
    tf = TFramedTransportFactory() if transport == "framed" else TBufferedTransportFactory()
    if protocol == "compact":
        return tf, TCompactProtocolAcceleratedFactory()
    if protocol == "binary-nonstrict":
        return tf, TBinaryProtocolFactory(strictRead=False, strictWrite=False)
    return tf, TBinaryProtocolAcceleratedFactory()


@dataclass
class ApacheServer:
    """An Apache Thrift server on 127.0.0.1:<port>; use as a context manager.

    ``headers`` collects, per processed message, the THeader info headers the server read.
    """

    processor: Any
    transport: str
    protocol: str
    headers: list[dict[bytes, bytes]] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._listener = TSocket.TServerSocket(host="127.0.0.1", port=0)
        self._listener.listen()
        self.port = self._listener.handle.getsockname()[1]
        self._clients: list[TTransportBase] = []
        self._threads = ThreadGroup()
        self._closed = False

    def __enter__(self) -> ApacheServer:
        self._threads.spawn(self._accept_loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        # shutdown() wakes the threads blocked in accept()/recv(); close() alone does not
        for sock in [self._listener.handle, *(c.handle for c in self._clients)]:
            with contextlib.suppress(OSError, AttributeError):  # handle is None once closed
                sock.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for client in self._clients:
            client.close()
        self._threads.join()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client = self._listener.accept()
            except (OSError, TTransportException):
                return
            if client is None:
                return
            self._clients.append(client)
            self._threads.spawn(self._serve, client)

    def _serve(self, client: TTransportBase) -> None:
        tf, pf = _server_factories(self.transport, self.protocol)
        iprot = pf.getProtocol(tf.getTransport(client))
        header = self.transport == "header"
        oprot = iprot if header else pf.getProtocol(tf.getTransport(client))
        with contextlib.suppress(TTransportException, OSError, EOFError):
            while not self._closed:
                self.processor.process(iprot, oprot)
                if header:
                    self.headers.append(dict(iprot.get_headers()))
        client.close()


@dataclass
class ApacheClient:
    """A connected Apache client of one generated service."""

    client: Any
    protocol: Any  # the client's own protocol (THeaderProtocol for header clients)
    transport: TTransportBase
    seqids_read: list[int]

    def close(self) -> None:
        self.transport.close()


@contextlib.contextmanager
def connect(
    service: types.ModuleType,
    transport: str,
    protocol: str,
    port: int,
    multiplexed_name: str | None = None,
    seqid: int = 0,
) -> Iterator[ApacheClient]:
    """An Apache client speaking ``transport`` x ``protocol``; records the seqids it reads."""
    sock = TSocket.TSocket("127.0.0.1", port)
    sock.setTimeout(10_000)
    proto: Any
    if transport == "header":
        sub = THeaderSubprotocolID.COMPACT if protocol == "compact" else THeaderSubprotocolID.BINARY
        trans: TTransportBase = sock
        proto = THeaderProtocol(sock, (THeaderClientType.HEADERS,), sub)
    else:
        trans = TFramedTransport(sock) if transport == "framed" else TBufferedTransport(sock)
        if protocol == "compact":
            proto = TCompactProtocolAccelerated(trans)
        elif protocol == "binary-nonstrict":
            proto = TBinaryProtocol(trans, strictRead=False, strictWrite=False)
        else:
            proto = TBinaryProtocolAccelerated(trans)
    trans.open()
    wire_proto = (
        proto if multiplexed_name is None else TMultiplexedProtocol(proto, multiplexed_name)
    )
    client = service.Client(wire_proto)
    client._seqid = seqid
    seqids: list[int] = []
    read_begin = wire_proto.readMessageBegin

    def recording_read_begin() -> tuple[str, int, int]:
        name, mtype, rseqid = read_begin()
        seqids.append(rseqid)
        return name, mtype, rseqid

    wire_proto.readMessageBegin = recording_read_begin
    peer = ApacheClient(client, proto, trans, seqids)
    try:
        yield peer
    finally:
        peer.close()
