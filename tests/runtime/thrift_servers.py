"""Real Apache Thrift servers for the proxy tests: named handlers and a THeader server.

Built on :mod:`tests.codecs.thrift.apache_peer` (IDL codegen, the stoppable
:class:`ApacheServer`, clients). Additions the proxy tests need:

* :class:`NamedCalc`: ``echo`` answers ``<name>:<s>`` so a client can tell which server
  answered; every call is recorded; ``echo`` can be held (a slow server) until released.
* :class:`AnyClientServer`: an Apache THeader server that accepts framed/unframed binary and
  compact clients as well as THeader ones (Apache's ``THeaderTransport`` detects the client
  type per frame) and records, per accepted connection, which client types it saw and the
  THeader headers of each request, so a test can prove a connection never mixed framings.
"""

from __future__ import annotations

import contextlib
import threading
import types
from typing import Any

from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.transport.THeaderTransport import THeaderClientType
from thrift.transport.TTransport import TTransportBase, TTransportException

from tests.codecs.thrift.apache_peer import ApacheServer, CalcHandler

ALL_CLIENT_TYPES = (
    THeaderClientType.HEADERS,
    THeaderClientType.FRAMED_BINARY,
    THeaderClientType.UNFRAMED_BINARY,
    THeaderClientType.FRAMED_COMPACT,
    THeaderClientType.UNFRAMED_COMPACT,
)


class NamedCalc(CalcHandler):
    def __init__(self, gen: types.ModuleType, name: str) -> None:
        super().__init__(gen)
        self.name = name
        self.calls: list[tuple[str, Any]] = []
        self.release = threading.Event()
        self.release.set()
        self._lock = threading.Lock()

    def _record(self, method: str, arg: Any) -> None:
        with self._lock:
            self.calls.append((method, arg))

    def add(self, a: int, b: int) -> int:
        self._record("add", (a, b))
        return a + b

    def echo(self, s: str) -> str:
        self._record("echo", s)
        self.release.wait(30)
        return f"{self.name}:{s}"

    def echoes(self) -> list[str]:
        with self._lock:
            return [arg for method, arg in self.calls if method == "echo"]


class AnyClientServer(ApacheServer):
    """An Apache THeader server accepting every client type; see the module docstring."""

    def __init__(self, processor: Any) -> None:
        super().__init__(processor, "header", "binary")
        #: one set of THeaderClientType values per accepted connection, in accept order
        self.client_types: list[set[int]] = []

    def _serve(self, client: TTransportBase) -> None:
        proto = THeaderProtocol(client, ALL_CLIENT_TYPES)
        seen: set[int] = set()
        self.client_types.append(seen)
        with contextlib.suppress(TTransportException, OSError, EOFError):
            while not self._closed:
                self.processor.process(proto, proto)
                seen.add(proto.trans._client_type)
                self.headers.append(dict(proto.get_headers()))
        client.close()
