"""The demo's sample servers: a Thrift and a Dubbo service, two versions each, on real libraries.

* Thrift: Apache ``thrift``'s server socket, ``TFramedTransport`` and ``TBinaryProtocol``. The
  ``Hello`` service (``hello.thrift``: ``sayHello(name)``, ``echo(text)``) is implemented by hand
  on Apache's ``TProcessor`` API (read the call, write the result struct), so the demo needs no
  code generator and generates nothing at run time.
* Dubbo: dubbo-py's provider (its ``ThreadingTCPServer`` and request handler, the code behind
  ``DubboService``), serving ``org.apache.dubbo.demo.DemoService`` with the same two methods.
  ``DubboService`` itself is not used because it binds 0.0.0.0 and probes a public address to
  learn its own; the demo builds the same server on a loopback address instead.

Every reply starts with ``<version>:`` so a client sees which version answered, and every
server counts the calls it handled per method (:class:`CallCounters`): the demo shows these next
to the proxy's ``istio_requests_total`` and they must agree. The live demo binds each server to a
127.0.20.x address on an ephemeral port; ``metamesh demo backends`` binds the endpoint addresses
and ports a config directory's ServiceEntries name (:mod:`metamesh.demo.backends`), and serves
the Dubbo interface the ServiceEntry names. ``stop()`` closes the listening socket and every
connection and joins the threads it started.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

import dubbo.server as dubbo_server
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.Thrift import TApplicationException, TMessageType, TProcessor, TType
from thrift.transport import TSocket
from thrift.transport.TTransport import TFramedTransport, TTransportException

DUBBO_INTERFACE = "org.apache.dubbo.demo.DemoService"
METHODS = ("sayHello", "echo")


class CallCounters:
    """Calls handled per method, safe to read from another thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(METHODS, 0)

    def count(self, method: str) -> None:
        with self._lock:
            self._counts[method] = self._counts.get(method, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def hello_methods(version: str, counters: CallCounters) -> dict[str, Callable[[str], str]]:
    """The two methods as both services implement them, counted."""

    def say_hello(name: str) -> str:
        counters.count("sayHello")
        return f"{version}:Hello {name}"

    def echo(text: str) -> str:
        counters.count("echo")
        return f"{version}:{text}"

    return {"sayHello": say_hello, "echo": echo}


# --- Thrift -----------------------------------------------------------------------------


def _read_first_string(iprot: Any) -> str:
    """Read an args struct; field 1 (a string) is the only argument of both methods."""
    value = ""
    iprot.readStructBegin()
    while True:
        _name, ftype, fid = iprot.readFieldBegin()
        if ftype == TType.STOP:
            break
        if fid == 1 and ftype == TType.STRING:
            value = iprot.readString()
        else:
            iprot.skip(ftype)
        iprot.readFieldEnd()
    iprot.readStructEnd()
    return value


class HelloProcessor(TProcessor):  # type: ignore[misc]
    """``Hello`` on Apache's TProcessor API: one call read, one reply written per ``process``."""

    def __init__(self, methods: dict[str, Callable[[str], str]]) -> None:
        self.methods = methods

    def process(self, iprot: Any, oprot: Any) -> None:
        name, _mtype, seqid = iprot.readMessageBegin()
        arg = _read_first_string(iprot)
        iprot.readMessageEnd()
        handler = self.methods.get(name)
        if handler is None:
            oprot.writeMessageBegin(name, TMessageType.EXCEPTION, seqid)
            error = TApplicationException(
                TApplicationException.UNKNOWN_METHOD, f"unknown method {name}"
            )
            error.write(oprot)
        else:
            result = handler(arg)
            oprot.writeMessageBegin(name, TMessageType.REPLY, seqid)
            oprot.writeStructBegin(f"{name}_result")
            oprot.writeFieldBegin("success", TType.STRING, 0)
            oprot.writeString(result)
            oprot.writeFieldEnd()
            oprot.writeFieldStop()
            oprot.writeStructEnd()
        oprot.writeMessageEnd()
        oprot.trans.flush()


class ThriftHelloServer:
    """An Apache Thrift server (framed, binary) for one version of ``Hello``."""

    protocol = "thrift"

    def __init__(self, version: str, host: str, port: int = 0) -> None:
        self.version = version
        self.host = host
        self.counters = CallCounters()
        self._processor = HelloProcessor(hello_methods(version, self.counters))
        self._listener = TSocket.TServerSocket(host=host, port=port)
        self._listener.listen()
        self._listener.handle.settimeout(0.2)  # so the accept loop sees stop()
        self.port: int = self._listener.handle.getsockname()[1]
        self._closed = False
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._spawn(self._accept_loop)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(
            target=target, args=args, name=f"thrift-{self.version}", daemon=True
        )
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client = self._listener.accept()
            except (TimeoutError, TTransportException):
                continue
            except OSError:
                return
            with self._lock:
                self._connections.append(client.handle)
            self._spawn(self._serve, client)

    def _serve(self, client: Any) -> None:
        transport = TFramedTransport(client)
        protocol = TBinaryProtocol(transport)
        with contextlib.suppress(TTransportException, OSError, EOFError):
            while not self._closed:
                self._processor.process(protocol, protocol)
        with contextlib.suppress(OSError):
            transport.close()

    def stop(self) -> None:
        self._closed = True
        with self._lock:
            connections, threads = list(self._connections), list(self._threads)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(2)
        self._listener.close()


# --- Dubbo ------------------------------------------------------------------------------


class DubboDemoProvider:
    """A dubbo-py provider for one version of ``interface`` (``DemoService`` unless told)."""

    protocol = "dubbo"

    def __init__(
        self, version: str, host: str, port: int = 0, interface: str = DUBBO_INTERFACE
    ) -> None:
        self.version = version
        self.host = host
        self.interface = interface
        self.counters = CallCounters()
        handlers = {interface: hello_methods(version, self.counters)}
        server = dubbo_server._DubboServer(
            (host, port), dubbo_server._get_dubbo_request_handler(handlers)
        )
        self.port: int = server.server_address[1]
        self._server = server
        self._thread = dubbo_server._ServerThread(server)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting; open connections end when their peer (the proxy) closes them."""
        if self._thread.is_alive():
            self._thread.stop()  # shutdown() waits for serve_forever, so only once started
        else:
            self._server.server_close()


SampleServer = ThriftHelloServer | DubboDemoProvider
